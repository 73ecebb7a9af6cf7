/* The catalog: Blink's SQLite database at BLINK_HOME/blink.db (WAL mode).
 * It records sessions and executions so that any process (CLI, server, SDK)
 * can tell what exists and what runs. Every function is safe to call from
 * several processes at once (SQLite locking with a busy timeout); a handle is
 * used by one thread at a time. The schema is versioned (PRAGMA user_version)
 * and migrated forward on open. */
#ifndef BLINK_CATALOG_H
#define BLINK_CATALOG_H

#include "internal.h"

typedef struct blink_catalog blink_catalog_t;

/* Session states as stored. "running" means a shim owns a VM for it. */
#define BLINK_STATE_STOPPED  "stopped"
#define BLINK_STATE_STARTING "starting"
#define BLINK_STATE_RUNNING  "running"
#define BLINK_STATE_CRASHED  "crashed"

typedef struct blink_session_row {
    char name[33];
    char image[65];
    char state[16];
    bool warm;
    unsigned memory_mib;
    unsigned cpus;
    unsigned disk_size_gib;
    int64_t shim_pid;   /* 0 when no shim */
    int64_t qemu_pid;   /* 0 when no VM */
    char last_end[256];  /* how the VM last ended: "", "clean stop", "crash: …", "oom" */
    char boot_id[64];   /* guest boot id of the running VM, "" when none */
    int64_t created_at; /* ms since the epoch */
    int64_t updated_at;
    int64_t started_at; /* when the running VM started; 0 when none */
} blink_session_row_t;

/* Opens (creating if needed) the database at `path` and migrates it. */
int blink_catalog_open(const char *path, blink_catalog_t **out, blink_error_t *err);
void blink_catalog_close(blink_catalog_t *catalog);

/* Inserts a new session; BLINK_E_EXISTS if the name is taken. */
int blink_catalog_session_insert(blink_catalog_t *catalog, const blink_session_row_t *row,
                                 blink_error_t *err);

/* Reads one session; BLINK_E_NOT_FOUND if there is none of that name. */
int blink_catalog_session_get(blink_catalog_t *catalog, const char *name, blink_session_row_t *row,
                              blink_error_t *err);

/* Writes the run-time fields of a session (state, pids, last_end, boot_id,
 * started_at) and bumps updated_at. BLINK_E_NOT_FOUND if it does not exist. */
int blink_catalog_session_set_state(blink_catalog_t *catalog, const blink_session_row_t *row,
                                    blink_error_t *err);

/* Deletes a session and its executions; BLINK_E_NOT_FOUND if absent. */
int blink_catalog_session_delete(blink_catalog_t *catalog, const char *name, blink_error_t *err);

/* All sessions ordered by name; *rows is malloc'ed (free it), *count set. */
int blink_catalog_session_list(blink_catalog_t *catalog, blink_session_row_t **rows, size_t *count,
                               blink_error_t *err);

/* Records the start of an execution in a session; returns its row id (> 0)
 * or -1. `command` is a short description (the agent path or argv[0]). */
int64_t blink_catalog_execution_start(blink_catalog_t *catalog, const char *session,
                                      const char *command, blink_error_t *err);

/* Records an execution's end. */
int blink_catalog_execution_finish(blink_catalog_t *catalog, int64_t id, int exit_code, int signal,
                                   bool timed_out, blink_error_t *err);

/* Number of executions of `session` that started and have not finished. */
/* How an execution ended, as recorded. */
typedef struct blink_execution_row {
    bool finished;   /* it ended (or its VM did) */
    bool has_status; /* its exit was seen: exit_code, signal and timed_out hold */
    int exit_code;
    int signal;
    bool timed_out;
} blink_execution_row_t;

int blink_catalog_execution_get(blink_catalog_t *catalog, const char *session, int64_t id,
                                blink_execution_row_t *row, blink_error_t *err);
int blink_catalog_execution_active(blink_catalog_t *catalog, const char *session, int64_t *count,
                                   blink_error_t *err);

/* Marks every unfinished execution of a session as ended by SIGKILL: used
 * when a new VM starts, since nothing of the old one runs anymore. */
int blink_catalog_execution_abandon(blink_catalog_t *catalog, const char *session,
                                    blink_error_t *err);

/* Checkpoint metadata; the checkpoints themselves are qcow2 internal
 * snapshots. Those of the session's active disk (layer "") are listed from
 * the disk itself, the truth of what exists; those in another layer (after
 * a fork, docs/fork.md) are known from their row. */
typedef struct blink_checkpoint_row {
    char session[33];
    char name[33];
    int64_t created_at; /* ms since the epoch */
    int64_t size_bytes;
    bool memory;
    char layer[256]; /* "" or the file holding it, relative to BLINK_HOME */
} blink_checkpoint_row_t;

int blink_catalog_checkpoint_put(blink_catalog_t *catalog, const blink_checkpoint_row_t *row,
                                 blink_error_t *err);
int blink_catalog_checkpoint_delete(blink_catalog_t *catalog, const char *session,
                                    const char *name, blink_error_t *err);
/* Moves the session's checkpoints recorded in layer `from` to layer `to`
 * (NULL: the active disk). */
int blink_catalog_checkpoint_move(blink_catalog_t *catalog, const char *session, const char *from,
                                  const char *to, blink_error_t *err);
/* The checkpoints held by layers, of one session or (NULL) of all. */
int blink_catalog_checkpoint_layered(blink_catalog_t *catalog, const char *session,
                                     blink_checkpoint_row_t **rows, size_t *count,
                                     blink_error_t *err);
int blink_catalog_checkpoint_get(blink_catalog_t *catalog, const char *session,
                                 const char *name, blink_checkpoint_row_t *row,
                                 blink_error_t *err);

/* Jobs of the REST server's queue (POST /api/runs). A job is queued, then
 * claimed by one worker (running), then succeeded (it ran to its end; the
 * agent's exit code is in the result) or failed (Blink could not run it). */
#define BLINK_RUN_QUEUED    "queued"
#define BLINK_RUN_RUNNING   "running"
#define BLINK_RUN_SUCCEEDED "succeeded"
#define BLINK_RUN_FAILED    "failed"

typedef struct blink_run_row {
    int64_t id;
    char status[16];
    char *request;       /* the job's JSON text; never NULL in a row read back */
    char *result;        /* execution_result JSON text, or NULL */
    char *error;         /* why it failed, or NULL */
    int64_t created_at;  /* ms since the epoch */
    int64_t started_at;  /* 0 until claimed */
    int64_t finished_at; /* 0 until finished */
} blink_run_row_t;

/* Frees the strings of a row read back (not the row itself). */
void blink_catalog_run_row_clear(blink_run_row_t *row);

/* Queues a job; returns its id (> 0) or -1. */
int64_t blink_catalog_run_insert(blink_catalog_t *catalog, const char *request,
                                 blink_error_t *err);

/* Claims the oldest queued job, marking it running, in one transaction, so
 * that of several workers (or processes) exactly one gets each job. Returns
 * 1 with *row filled (clear it), 0 when nothing is queued, -1 on failure. */
int blink_catalog_run_claim(blink_catalog_t *catalog, blink_run_row_t *row, blink_error_t *err);

/* Ends a running job: succeeded with `result` when it is not NULL, else
 * failed with `error`. BLINK_E_NOT_FOUND if no running job has that id. */
int blink_catalog_run_finish(blink_catalog_t *catalog, int64_t id, const char *result,
                             const char *error, blink_error_t *err);

/* Reads one job; BLINK_E_NOT_FOUND if there is none. Clear *row after. */
int blink_catalog_run_get(blink_catalog_t *catalog, int64_t id, blink_run_row_t *row,
                          blink_error_t *err);

/* Marks every running job failed with `reason`: on a server's start, jobs
 * that were running when the last one ended can no longer finish. *count
 * (may be NULL) receives how many there were. */
int blink_catalog_run_fail_running(blink_catalog_t *catalog, const char *reason, int64_t *count,
                                   blink_error_t *err);

/* The newest `limit` jobs, newest first. Clear each row and free *rows. */
int blink_catalog_run_recent(blink_catalog_t *catalog, unsigned limit, blink_run_row_t **rows,
                             size_t *count, blink_error_t *err);

/* Job counts by status and the durations of succeeded jobs as cumulative
 * histogram buckets (Prometheus style: bucket i counts durations up to
 * blink_run_duration_bounds_ms[i]). */
#define BLINK_RUN_DURATION_BUCKETS 8
extern const int64_t blink_run_duration_bounds_ms[BLINK_RUN_DURATION_BUCKETS];
typedef struct blink_run_stats {
    int64_t count_by_status[4]; /* queued, running, succeeded, failed */
    int64_t duration_buckets[BLINK_RUN_DURATION_BUCKETS];
    int64_t duration_count;
    int64_t duration_sum_ms;
} blink_run_stats_t;
int blink_catalog_run_stats(blink_catalog_t *catalog, blink_run_stats_t *stats,
                            blink_error_t *err);

#endif
