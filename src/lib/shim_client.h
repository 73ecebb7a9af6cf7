/* The client side of a shim's socket: blocking frame I/O with deadlines. */
#ifndef BLINK_SHIM_CLIENT_H
#define BLINK_SHIM_CLIENT_H

#include "internal.h"

#include "blin.h"

struct sockaddr_un;

/* Fills a Unix socket address for `path`, however long: a path too long for
 * sun_path is reached through an O_PATH descriptor of its folder, returned in
 * *dir_fd (-1 otherwise) for the caller to close after bind or connect. */
int blink_unix_address(const char *path, struct sockaddr_un *addr, int *dir_fd,
                       blink_error_t *err);

typedef struct blink_shim_conn {
    int fd;
    blin_decoder_t decoder;
} blink_shim_conn_t;

/* Connects to the shim socket at `path`. BLINK_E_NOT_FOUND when nobody
 * listens there (a stale or missing socket). */
int blink_shim_connect(const char *path, blink_shim_conn_t *conn, blink_error_t *err);
void blink_shim_disconnect(blink_shim_conn_t *conn);

int blink_shim_send(blink_shim_conn_t *conn, uint8_t type, uint64_t id, const void *payload,
                    size_t len, blink_error_t *err);

/* Waits up to `timeout_ms` (-1: forever) for one frame. Returns 1 with *h and
 * *payload set (valid until the next call), 0 on timeout, -1 when the shim
 * closed the connection or sent garbage. */
int blink_shim_recv(blink_shim_conn_t *conn, int timeout_ms, blin_header_t *h,
                    const uint8_t **payload, blink_error_t *err);

/* Decodes an Exit payload: exit code (-1 when a signal ended the process),
 * signal and flags. */
int blink_exit_frame_parse(const uint8_t *payload, uint32_t len, int *exit_code, int *signal,
                           uint32_t *flags, blink_error_t *err);

/* Formats an Error payload ("message (errno N)") into buf. */
void blink_error_frame_text(const uint8_t *payload, uint32_t len, char *buf, size_t size);

/* Request id of one-shot requests (checkpoint, restore, delete, export). */
#define BLINK_SHIM_REQUEST_ID 1

/* Connects, sends one request carrying the string `arg` (and `flags` when
 * asked), waits up to 10 minutes for the shim's reply of the same type, and
 * disconnects. An Error reply becomes a BLINK_E_VM error with its text. */
int blink_shim_request(const char *socket, uint8_t type, const char *arg, bool with_flags,
                       uint32_t flags, blink_error_t *err);

#endif
