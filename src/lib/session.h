/* Session internals shared by session.c (lifecycle, runs) and execution.c
 * (interactive executions). */
#ifndef BLINK_SESSION_H
#define BLINK_SESSION_H

#include "catalog.h"
#include "context.h"

/* Request id a client uses for its one execution on a connection. */
#define EXEC_ID 1

typedef struct session_ctx {
    blink_t *blink;
    const char *name;
    blink_catalog_t *catalog;
    char *dir;
    char *disk;
    char *socket;
    int lock_fd;        /* -1 when the lock is not held */
    const char *loadvm; /* start the VM from this memory checkpoint */
} session_ctx_t;

/* Validates the name, opens the catalog and computes the paths. */
int session_ctx_open(blink_t *blink, const char *name, session_ctx_t *s, blink_error_t *err);
/* Releases the lock if held, closes the catalog, frees the paths. */
void session_ctx_close(session_ctx_t *s);
/* Takes the session's lock, waiting while another process holds it. */
int session_ctx_lock(session_ctx_t *s, blink_error_t *err);
/* Reconciles the row with the living processes; true if the VM runs. */
bool session_is_running(session_ctx_t *s, blink_session_row_t *row);
/* Boots the VM unless it runs; `row` is refreshed. Lock held. */
int session_ensure_running(session_ctx_t *s, blink_session_row_t *row, blink_error_t *err);
/* Stops the VM cleanly (forcefully after a grace period). Lock held. */
int session_stop_vm(session_ctx_t *s, blink_session_row_t *row, blink_error_t *err);

/* Finds a checkpoint of the session; `layer` gets the layer holding it
 * ("" for the active disk). Lock held. */
int checkpoint_find(session_ctx_t *s, const char *snapshot, blink_checkpoint_info_t *found,
                    char layer[256], blink_error_t *err);

#endif
