/* blink-shim: one per running session VM. It is QEMU's parent, owns the
 * control port, and serves local clients over a Unix socket in the session's
 * folder, relaying their files and executions to the guest under its own
 * request ids (docs/shim.md). */
#ifndef BLINK_SHIM_H
#define BLINK_SHIM_H

#include "catalog.h"
#include "internal.h"
#include "vm.h"

typedef struct shim_client {
    int fd;
    blin_decoder_t decoder;
    blink_buf_t out;
    size_t out_offset;
    uint64_t pending_timeout_id; /* request id the next Exec options apply to */
    unsigned pending_timeout_sec;
} shim_client_t;

typedef struct shim_chunk {
    uint64_t seq;
    uint8_t type; /* BLIN_STDOUT or BLIN_STDERR */
    size_t len;
    struct shim_chunk *next;
    uint8_t data[];
} shim_chunk_t;

typedef struct shim_execution {
    bool used;
    uint64_t guest_id;
    shim_client_t *owner; /* NULL once the client went away */
    uint64_t client_id;
    uint64_t deadline_ms; /* 0: none */
    bool timed_out;
    int64_t catalog_id;
    shim_chunk_t *first, *last; /* bounded output history */
    size_t buffered;
    uint64_t next_seq;
} shim_execution_t;

typedef struct shim_transfer {
    bool used;
    uint64_t guest_id;
    shim_client_t *owner;
    uint64_t client_id;
} shim_transfer_t;

typedef struct shim {
    const char *name;
    const char *disk_path;
    const char *socket_path;
    blink_catalog_t *catalog;
    blink_vm_t *vm;
    int listen_fd;
    bool ready;
    bool stopping;
    bool cold;       /* the VM lives for its clients: stop once they are gone */
    bool had_client;
    uint64_t stop_deadline_ms;
    char boot_id[64];
    int freeze_reply; /* -1 waiting; 0 done; errno on failure */
    uint64_t next_guest_id;
    shim_client_t *clients[SHIM_MAX_CLIENTS];
    shim_execution_t executions[SHIM_MAX_EXECUTIONS];
    shim_transfer_t transfers[SHIM_MAX_TRANSFERS];
} shim_t;

/* clients.c */
void shim_accept(shim_t *shim);
/* Handles a readable or writable client; closes it on error or hang-up. */
void shim_client_io(shim_t *shim, shim_client_t *client, short revents);
void shim_client_close(shim_t *shim, shim_client_t *client);
/* Routes one guest frame to whoever asked for it. */
int shim_on_guest_frame(blink_vm_t *vm, const blin_header_t *h, const uint8_t *payload, void *data,
                        blink_error_t *err);
/* Ends executions whose deadline passed. */
void shim_enforce_timeouts(shim_t *shim);
/* Tells every client with a pending request that the VM is gone. */
void shim_fail_all(shim_t *shim, const char *why);
/* Starts a clean stop: Shutdown to the guest, bounded wait. */
void shim_begin_stop(shim_t *shim);
/* Sends Init (clock, host name): after Ready, and after a restore. */
int shim_send_init(shim_t *shim, blink_error_t *err);

/* checkpoint.c: snapshots of the running VM (docs/shim.md). */
int shim_checkpoint(shim_t *shim, const char *name, bool memory, blink_error_t *err);
int shim_restore(shim_t *shim, const char *name, blink_error_t *err);
int shim_delete_checkpoint(shim_t *shim, const char *name, blink_error_t *err);
int shim_copy_disk(shim_t *shim, const char *disk, const char *target, blink_error_t *err);

#endif
