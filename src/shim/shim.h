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
    bool exited;          /* ended; kept for late attaches (attach.c) */
    uint64_t guest_id;
    shim_client_t *owner; /* NULL once the client went away */
    uint64_t client_id;
    uint64_t deadline_ms; /* 0: none */
    bool timed_out;
    int64_t catalog_id;   /* also the execution's id for Attach; <= 0: not recorded */
    uint64_t exited_ms;
    uint8_t exit_payload[12]; /* the Exit frame's payload, once exited */
    shim_chunk_t *first, *last; /* bounded output history */
    size_t buffered;
    uint64_t next_seq;
} shim_execution_t;

/* A client following an execution it did not start (Attach), under a
 * request id of its choosing. */
typedef struct shim_subscriber {
    shim_client_t *client; /* NULL: a free slot */
    uint64_t client_id;
    shim_execution_t *execution;
} shim_subscriber_t;

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
    unsigned layers;  /* overlays the VM moved onto (fork); names its top node */
    const char *vm_dir; /* sessions/NAME/vm: the names QEMU knows its disks by */
    uint64_t next_guest_id;
    shim_client_t *clients[SHIM_MAX_CLIENTS];
    shim_execution_t executions[SHIM_MAX_EXECUTIONS];
    shim_transfer_t transfers[SHIM_MAX_TRANSFERS];
    shim_subscriber_t subscribers[SHIM_MAX_SUBSCRIBERS];
    size_t exec_buffer;      /* output kept per execution (BLINK_EXEC_HISTORY) */
    size_t client_queue_cap; /* room for a full replay on top of SHIM_CLIENT_QUEUE_CAP */
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

/* Queues a frame for a client (NULL: nobody); closes a client that fell
 * too far behind. */
void shim_send(shim_t *shim, shim_client_t *c, uint8_t type, uint64_t id, const void *payload,
               size_t len);
void shim_send_error(shim_t *shim, shim_client_t *c, uint64_t id, int code, const char *what);

/* attach.c: output history, attachments and ended executions. */
/* The per-execution history size from BLINK_EXEC_HISTORY, or the default. */
size_t shim_exec_buffer_from_env(void);
/* Keeps a chunk in the history and sends it to the owner and attachments. */
void shim_execution_output(shim_t *shim, shim_execution_t *e, uint8_t type, const uint8_t *data,
                           size_t len);
/* Sends Exit to the owner and attachments and keeps the execution, ended,
 * for late attaches. */
void shim_execution_ended(shim_t *shim, shim_execution_t *e, const uint8_t payload[12]);
/* Frees an execution's slot, its history and its attachments. */
void shim_execution_release(shim_t *shim, shim_execution_t *e);
/* A free execution slot, making room by dropping the oldest ended one. */
shim_execution_t *shim_execution_slot(shim_t *shim);
/* The running execution a client drives under `client_id`: one it started
 * or one it attached to. */
shim_execution_t *shim_execution_of(shim_t *shim, shim_client_t *c, uint64_t client_id);
/* Executions still running. */
int shim_executions_running(const shim_t *shim);
/* Attach (0x57): replays the history after a sequence number, then
 * follows the execution. */
void shim_client_attach(shim_t *shim, shim_client_t *c, const blin_header_t *h,
                        const uint8_t *payload);
/* Drops every attachment of a client that is going away. */
void shim_detach_client(shim_t *shim, shim_client_t *c);

/* checkpoint.c: snapshots of the running VM (docs/shim.md). */
int shim_checkpoint(shim_t *shim, const char *name, bool memory, blink_error_t *err);
int shim_restore(shim_t *shim, const char *name, blink_error_t *err);
int shim_delete_checkpoint(shim_t *shim, const char *name, blink_error_t *err);
int shim_copy_disk(shim_t *shim, const char *disk, const char *target, blink_error_t *err);
int shim_add_layer(shim_t *shim, const char *overlay, blink_error_t *err);
/* The name QEMU knows disk file `index` by (0: the boot disk, which also
 * clears the names of an earlier VM). */
char *shim_vm_disk_name(const shim_t *shim, unsigned index, blink_error_t *err);

#endif
