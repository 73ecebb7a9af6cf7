/* An execution's outcome: exit status and the kept part of each stream. */
#ifndef BLINK_RESULT_H
#define BLINK_RESULT_H

#include "internal.h"

#include "caps.h"

typedef struct blink_output {
    blink_buf_t kept;   /* the first `cap` bytes */
    size_t cap;
    uint64_t total;     /* bytes the agent wrote */
    char *tail;         /* the last BLINK_CAP_LAST_LINE bytes, for the result line */
    size_t tail_len;
} blink_output_t;

struct blink_result {
    int exit_code;
    int signal;
    bool timed_out;
    bool oom_killed;
    uint64_t duration_ms;
    uint64_t boot_ms; /* VM boot to the guest's Ready; 0 if the VM already ran */
    blink_output_t out[2]; /* [0] stdout, [1] stderr */
};

blink_result_t *blink_result_new(size_t output_cap);

/* Records output; fails only when memory runs out. */
int blink_result_append(blink_result_t *result, blink_stream_t stream, const char *data,
                        size_t len);

#endif
