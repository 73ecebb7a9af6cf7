/* The host's check of one guest connection's BLIN stream on its way to the
 * hub (docs/vhub.md "What the host checks"). Every byte is the guest's, so
 * the filter keeps 20 header bytes of state and nothing that grows with
 * what the guest claims: payloads pass through, or are skipped, as they come.
 *
 * With a hub, frames go to `to_hub` unchanged, except that a Handshake's
 * payload is replaced by the host's own word of which session or run this
 * is. Without one, the filter answers as the hub would, with RpcError
 * "no hub". A bad frame appends an Error for the guest and fails the
 * filter for good: the connection is to be closed. */
#ifndef BLINK_VHUB_FILTER_H
#define BLINK_VHUB_FILTER_H

#include "internal.h"

#include "blin.h"

/* Heartbeat payloads the host echoes itself (no hub); as the control port. */
#define VHUB_HEARTBEAT_MAX 64u

typedef struct vhub_filter {
    bool local;            /* no hub: answer here */
    char *identity;        /* JSON object text: {"session":"N"} or {"run":"R"} */
    const char *why_local; /* RpcError text without a hub: "no hub", "hub unreachable" */
    uint8_t header_bytes[BLIN_HEADER_SIZE];
    size_t header_have;
    blin_header_t header;
    uint32_t payload_left; /* bytes of the current frame's payload still to come */
    bool skipping;         /* the current payload is dropped, not passed on */
    uint8_t echo[VHUB_HEARTBEAT_MAX];
    size_t echo_len;
    bool failed;
} vhub_filter_t;

/* `kind` is "session" or "run", `name` its name; copied. -1 on no memory. */
int vhub_filter_init(vhub_filter_t *f, bool local, const char *why_local, const char *kind,
                     const char *name);
void vhub_filter_free(vhub_filter_t *f);

/* Takes up to `len` guest bytes. Returns how many were taken: all of them,
 * or fewer once the filter failed (an Error is then in `to_guest`); -1 when
 * host memory ran out. */
long vhub_filter_feed(vhub_filter_t *f, const uint8_t *data, size_t len, blink_buf_t *to_hub,
                      blink_buf_t *to_guest);

/* The guest sent its last byte. False when that was inside a frame: an
 * Error is then in `to_guest`. */
bool vhub_filter_end(vhub_filter_t *f, blink_buf_t *to_guest);

/* Appends one BLIN frame to `out`; -1 on no memory. */
int vhub_put_frame(blink_buf_t *out, uint8_t type, uint64_t id, const void *payload, size_t len);

#endif
