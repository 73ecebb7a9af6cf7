/* A small QMP client: QEMU's JSON monitor protocol over a socket we hand to
 * QEMU as a chardev. Lines are parsed with jansson; each is capped at
 * BLINK_CAP_QMP_LINE. Commands are synchronous with a deadline; events that
 * arrive meanwhile are recorded (only the ones Blink acts on). */
#ifndef BLINK_QMP_H
#define BLINK_QMP_H

#include "internal.h"

#include <jansson.h>

typedef struct blink_qmp {
    int fd;
    blink_buf_t in;
    bool shutdown_seen;      /* a SHUTDOWN event arrived */
    char shutdown_reason[64]; /* its data.reason, e.g. "guest-shutdown" */
    bool guest_panicked;     /* a GUEST_PANICKED event arrived */
} blink_qmp_t;

/* Takes ownership of `fd`. Reads the greeting and negotiates capabilities
 * ("qmp_capabilities", QMP spec §4) before `deadline_ms` (monotonic). */
int blink_qmp_connect(blink_qmp_t *qmp, int fd, uint64_t deadline_ms, blink_error_t *err);
void blink_qmp_close(blink_qmp_t *qmp);

/* Runs `command` with `arguments` (may be NULL; reference is not stolen).
 * On success, *reply (if not NULL) receives the "return" value (new ref). A
 * QMP "error" reply becomes a BLINK_E_VM error with QEMU's description. */
int blink_qmp_execute(blink_qmp_t *qmp, const char *command, json_t *arguments, json_t **reply,
                      uint64_t deadline_ms, blink_error_t *err);

/* Reads what is available without blocking and records events. Returns 0, or
 * -1 when the monitor closed or sent garbage (err says which). */
int blink_qmp_pump(blink_qmp_t *qmp, blink_error_t *err);

#endif
