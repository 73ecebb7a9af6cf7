/* libblink: run agents in hardware-isolated VM sandboxes.
 *
 * Conventions (docs/errors.md has the long form):
 * - Fallible functions return 0 (or a pointer) on success and a negative value
 *   (or NULL) on failure, filling the caller's blink_error_t when it is not
 *   NULL. The error holds a stable code, the errno if one applies, and a
 *   lowercase message naming the operation and the object.
 * - Handles are opaque. Whatever a function returns through an out-pointer
 *   belongs to the caller, who frees it with the matching *_free call.
 * - Option structs begin with `struct_size`; set it to sizeof the struct so
 *   that newer libraries can tell which fields the caller knows.
 * - Thread safety: a blink_t may be used from several threads at once; runs in
 *   different threads are independent. Callbacks run on the thread that called
 *   the function that takes them.
 */
#ifndef BLINK_BLINK_H
#define BLINK_BLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(BLINK_BUILDING_LIBRARY)
#define BLINK_API __attribute__((visibility("default")))
#else
#define BLINK_API
#endif

#define BLINK_VERSION_STRING "0.1.0"

/* Status codes. Append-only: a code's number never changes meaning. */
typedef enum blink_status {
    BLINK_OK = 0,
    BLINK_E_INVALID = 1,      /* a bad argument, option or name */
    BLINK_E_NOT_FOUND = 2,    /* a file, image or session that does not exist */
    BLINK_E_EXISTS = 3,       /* the thing to create is already there */
    BLINK_E_BUSY = 4,         /* someone else holds it now; try again later */
    BLINK_E_IO = 5,           /* reading or writing host files failed */
    BLINK_E_NO_MEMORY = 6,    /* host memory allocation failed */
    BLINK_E_PROTOCOL = 7,     /* the guest or QEMU broke the protocol */
    BLINK_E_VM = 8,           /* the VM failed to start, crashed or panicked */
    BLINK_E_TIMEOUT = 9,      /* a bound passed (boot, shutdown) */
    BLINK_E_MISSING_DEP = 10, /* a host program is not installed */
    BLINK_E_PERMISSION = 11,  /* the host refused access */
    BLINK_E_NOT_SETUP = 12,   /* kernel or image missing: run the setup */
    BLINK_E_INTERNAL = 13,    /* a bug in Blink */
} blink_status_t;

typedef struct blink_error {
    blink_status_t code;
    int sys_errno;      /* errno of the failing call, or 0 */
    char message[1024]; /* lowercase, without the errno text */
} blink_error_t;

/* The name of a status code ("invalid", "not found", ...). Never NULL. */
BLINK_API const char *blink_strerror(blink_status_t code);

/* Formats `err` as "message: strerror(errno)" into buf. Returns buf. */
BLINK_API const char *blink_error_format(const blink_error_t *err, char *buf, size_t size);

/* ---- context ---- */

typedef struct blink blink_t;

/* Opens Blink's state directory. `home` NULL means $BLINK_HOME, else
 * $XDG_DATA_HOME/blink, else ~/.local/share/blink. The directory is created
 * when missing and must be writable. */
BLINK_API blink_t *blink_open(const char *home, blink_error_t *err);
BLINK_API void blink_close(blink_t *blink);
BLINK_API const char *blink_home(const blink_t *blink);

/* ---- runs ---- */

typedef enum blink_stream { BLINK_STDOUT = 1, BLINK_STDERR = 2 } blink_stream_t;

/* Called with output as it arrives, before any truncation. */
typedef void (*blink_output_fn)(blink_stream_t stream, const char *data, size_t len,
                                void *userdata);

typedef struct blink_run_options {
    size_t struct_size;        /* sizeof(blink_run_options_t) */
    const char *image;         /* local image name; NULL for the default */
    unsigned timeout_sec;      /* 0: no timeout */
    unsigned memory_mib;       /* 0: 512 */
    unsigned cpus;             /* 0: 1 */
    const char *const *args;   /* arguments after the agent path */
    size_t arg_count;
    const char *const *env;    /* "KEY=VALUE" entries added to the agent's env */
    size_t env_count;
    size_t output_cap;         /* bytes kept per stream; 0: 16 MiB */
    unsigned boot_timeout_sec; /* 0: $BLINK_BOOT_TIMEOUT or 60 */
    blink_output_fn on_output; /* may be NULL */
    void *userdata;
    /* The V-Hub socket guest programs reach (docs/vhub.md); NULL:
     * $BLINK_VHUB_SOCKET, else none (their RPCs get RpcError "no hub").
     * Session runs use the session's hub instead. */
    const char *vhub_socket;
} blink_run_options_t;

typedef struct blink_result blink_result_t;

/* Runs the agent at host path `agent_path` in a fresh VM that is discarded
 * afterwards. On success *result holds the outcome (whatever the agent's exit
 * code); free it with blink_result_free. Fails for Blink's own failures: a
 * bad path, a VM that does not boot, a crash. Thread-safe. */
BLINK_API int blink_run(blink_t *blink, const char *agent_path, const blink_run_options_t *options,
                        blink_result_t **result, blink_error_t *err);

/* The seed's run_agent_script_default: default context, default options. */
BLINK_API int blink_run_agent_script_default(const char *agent_path, blink_result_t **result,
                                             blink_error_t *err);

BLINK_API void blink_result_free(blink_result_t *result);

/* Exit status of the agent, or -1 when it was killed by a signal or timed out. */
BLINK_API int blink_result_exit_code(const blink_result_t *result);
/* Signal that ended the agent, 0 if none. */
BLINK_API int blink_result_signal(const blink_result_t *result);
BLINK_API bool blink_result_timed_out(const blink_result_t *result);
BLINK_API bool blink_result_oom_killed(const blink_result_t *result);
BLINK_API uint64_t blink_result_duration_ms(const blink_result_t *result);
/* How long the VM took to boot for this run (QEMU start to the guest's
 * Ready), 0 when the run used a VM that was already running. */
BLINK_API uint64_t blink_result_boot_ms(const blink_result_t *result);
/* Kept output of a stream (up to the cap). Valid until the result is freed;
 * not NUL-terminated in general, may contain any bytes. */
BLINK_API const char *blink_result_output(const blink_result_t *result, blink_stream_t stream,
                                          size_t *len);
/* Total bytes the agent wrote to a stream, and whether the kept part is short. */
BLINK_API uint64_t blink_result_output_total(const blink_result_t *result,
                                             blink_stream_t stream);
BLINK_API bool blink_result_truncated(const blink_result_t *result, blink_stream_t stream);
/* The execution_result JSON object as one line (no newline), with the fields
 * of the agent's own execution_result line merged in. Caller frees. */
BLINK_API char *blink_result_to_json(const blink_result_t *result);

/* ---- sessions: a named VM with a persistent disk ---- */

typedef struct blink_session_options {
    size_t struct_size;     /* sizeof(blink_session_options_t) */
    const char *image;      /* NULL for the default image */
    bool warm;              /* keep the VM running between commands */
    unsigned memory_mib;    /* 0: 512 */
    unsigned cpus;          /* 0: 1 */
    unsigned disk_size_gib; /* 0: the image's size; larger grows the guest's root */
    /* The session's V-Hub socket, kept with the session and used from its
     * VM's next start; NULL: $BLINK_VHUB_SOCKET when the session is created,
     * and no change when it exists. */
    const char *vhub_socket;
} blink_session_options_t;

typedef struct blink_session_info {
    char name[33];
    char image[65];
    char state[16];         /* "stopped", "starting", "running" or "crashed" */
    bool warm;
    unsigned memory_mib;
    unsigned cpus;
    unsigned disk_size_gib; /* 0: the image's size */
    int64_t shim_pid;       /* 0 unless running */
    int64_t qemu_pid;       /* 0 unless running */
    char boot_id[64];       /* the running guest's boot id, "" otherwise */
    char last_end[256];      /* how the VM last ended */
    int64_t created_at;     /* ms since the epoch */
    int64_t started_at;     /* 0 unless running */
} blink_session_info_t;

/* True if `name` is 3-32 characters of [A-Za-z0-9_-] (sessions, snapshots). */
BLINK_API bool blink_name_valid(const char *name);

/* Creates the session (a copy-on-write disk over the image; nothing is
 * copied) or finds it. *created (may be NULL) tells which; an existing
 * session is left as it is. A warm session's VM is started and keeps
 * running after this returns. Serialized per session across processes. */
BLINK_API int blink_session_open(blink_t *blink, const char *name,
                                 const blink_session_options_t *options, bool *created,
                                 blink_error_t *err);

/* Runs an agent in the session: in its running VM when warm (runs proceed
 * concurrently), otherwise boots the VM, runs, and shuts it down (runs on a
 * cold session are serialized). Options as for blink_run; image, memory and
 * cpus come from the session. */
BLINK_API int blink_session_run(blink_t *blink, const char *name, const char *agent_path,
                                const blink_run_options_t *options, blink_result_t **result,
                                blink_error_t *err);

/* Stops the VM: the guest syncs and powers off, or is killed after a grace
 * period. Stopping a stopped session succeeds. */
BLINK_API int blink_session_stop(blink_t *blink, const char *name, blink_error_t *err);

/* Removes the session's VM, disk and catalog rows. Refuses with
 * BLINK_E_BUSY while an execution runs, unless `force`. */
BLINK_API int blink_session_remove(blink_t *blink, const char *name, bool force,
                                   blink_error_t *err);

/* One session's record, with a dead VM reported as "crashed". */
BLINK_API int blink_session_info(blink_t *blink, const char *name, blink_session_info_t *info,
                                 blink_error_t *err);

/* All sessions, by name. Free *list with free(). */
BLINK_API int blink_session_list(blink_t *blink, blink_session_info_t **list, size_t *count,
                                 blink_error_t *err);

/* ---- interactive executions in a session ---- */

typedef struct blink_spawn_options {
    size_t struct_size;       /* sizeof(blink_spawn_options_t) */
    const char *const *argv;  /* the command; argv[0] is searched in PATH */
    size_t argc;
    const char *const *env;   /* "KEY=VALUE" entries added to the default environment */
    size_t env_count;
    const char *workdir;      /* NULL: /root */
    bool tty;                 /* run on a pseudo-terminal */
    unsigned rows, cols;      /* terminal size; 0: 24 x 80 */
    unsigned timeout_sec;     /* 0: none */
    blink_output_fn on_output; /* output as it arrives (a PTY's is all BLINK_STDOUT) */
    void *userdata;
} blink_spawn_options_t;

typedef struct blink_execution blink_execution_t;

/* Starts a process in the session (booting a cold session's VM, which then
 * stays up until the execution is freed). Stdin is a pipe fed by
 * blink_execution_write. Drive it with blink_execution_pump. */
BLINK_API int blink_session_spawn(blink_t *blink, const char *name,
                                  const blink_spawn_options_t *options,
                                  blink_execution_t **execution, blink_error_t *err);

/* A descriptor that becomes readable when the execution has something to
 * deliver: for callers with their own poll loop. */
BLINK_API int blink_execution_fd(const blink_execution_t *execution);

/* Delivers what arrived to on_output, waiting up to `timeout_ms` (-1: until
 * something arrives). Returns 1 once the process has exited, 0 while it runs,
 * -1 on failure. */
BLINK_API int blink_execution_pump(blink_execution_t *execution, int timeout_ms,
                                   blink_error_t *err);

/* Writes to the process's stdin; len 0 closes it (EOF). */
BLINK_API int blink_execution_write(blink_execution_t *execution, const void *data, size_t len,
                                    blink_error_t *err);
BLINK_API int blink_execution_resize(blink_execution_t *execution, unsigned rows, unsigned cols,
                                     blink_error_t *err);
/* Sends a signal (Linux numbering) to the process group. */
BLINK_API int blink_execution_kill(blink_execution_t *execution, int signo, blink_error_t *err);

/* After pump returned 1: the exit code (-1 if a signal ended it), the signal,
 * and whether the timeout ended it. */
/* Whether the process ended (its exit status below is then final). An
 * attach to an execution whose VM no longer runs gives an exited handle
 * carrying the recorded status and no output. */
BLINK_API bool blink_execution_exited(const blink_execution_t *execution);
BLINK_API int blink_execution_exit_code(const blink_execution_t *execution);
BLINK_API int blink_execution_exit_signal(const blink_execution_t *execution);
BLINK_API bool blink_execution_timed_out(const blink_execution_t *execution);

/* Disconnects (a running process goes on in a warm session) and frees. */
BLINK_API void blink_execution_free(blink_execution_t *execution);

/* The execution's id in its session, for blink_session_attach (0 when the
 * session's catalog could not record it: such an execution cannot be
 * attached to). */
BLINK_API uint64_t blink_execution_id(const blink_execution_t *execution);

typedef struct blink_attach_options {
    size_t struct_size;        /* sizeof(blink_attach_options_t) */
    uint64_t after_seq;        /* replay the output chunks numbered after this; 0: all kept */
    blink_output_fn on_output; /* replayed, then live output */
    void *userdata;
} blink_attach_options_t;

/* Follows execution `execution_id` of the running VM of session `name`
 * (any number of times, by any number of clients at once): the output
 * chunks the VM's shim still keeps after `after_seq` are delivered first,
 * then live output; an ended execution still kept delivers its exit. The
 * handle drives it like a spawned one (write, resize, kill, pump). Fails
 * with BLINK_E_NOT_FOUND when the VM does not run or no longer keeps the
 * execution. Output chunks are numbered from 1 per execution. */
BLINK_API int blink_session_attach(blink_t *blink, const char *name, uint64_t execution_id,
                                   const blink_attach_options_t *options,
                                   blink_execution_t **execution, blink_error_t *err);

/* The number of the next output chunk on_output will receive. */
BLINK_API uint64_t blink_execution_next_seq(const blink_execution_t *execution);

/* After an attach: how many chunks after `after_seq` were no longer kept
 * (the shim keeps the newest BLINK_EXEC_HISTORY bytes per execution). */
BLINK_API uint64_t blink_execution_dropped(const blink_execution_t *execution);

/* ---- checkpoints: qcow2 internal snapshots of the session disk ---- */

typedef enum blink_checkpoint_kind {
    BLINK_CHECKPOINT_AUTO = 0,   /* memory when the VM runs, disk when it is stopped */
    BLINK_CHECKPOINT_DISK = 1,   /* the disk only (the guest syncs and freezes first) */
    BLINK_CHECKPOINT_MEMORY = 2, /* disk, memory and devices of the running VM */
} blink_checkpoint_kind_t;

typedef struct blink_checkpoint_info {
    char name[33];
    char id[16];        /* qcow2 snapshot id */
    int64_t created_at; /* ms since the epoch */
    uint64_t size_bytes; /* memory state, or the disk's allocated size when taken */
    bool memory;        /* restoring resumes the processes that ran */
} blink_checkpoint_info_t;

/* Takes checkpoint `snapshot` (3-32 of [A-Za-z0-9_-], unique in the session). */
BLINK_API int blink_session_checkpoint(blink_t *blink, const char *name, const char *snapshot,
                                       blink_checkpoint_kind_t kind,
                                       blink_checkpoint_info_t *info, blink_error_t *err);

/* The session's checkpoints, oldest first. Free *list with free(). */
BLINK_API int blink_session_checkpoints(blink_t *blink, const char *name,
                                        blink_checkpoint_info_t **list, size_t *count,
                                        blink_error_t *err);

/* Rolls the session back to `snapshot`: files written since are gone, other
 * checkpoints stay. A memory checkpoint resumes its processes when the VM
 * runs (or when the session is warm); a disk checkpoint restored into a
 * running VM reboots it onto that disk. */
BLINK_API int blink_session_restore(blink_t *blink, const char *name, const char *snapshot,
                                    blink_error_t *err);

BLINK_API int blink_session_delete_checkpoint(blink_t *blink, const char *name,
                                              const char *snapshot, blink_error_t *err);

/* Creates session `target` from `source`'s current disk, or from its
 * checkpoint `snapshot` (NULL: the current disk), without copying disk data:
 * the source's disk becomes a read-only layer both stand on (a running
 * source VM moves onto a new overlay live, its guest filesystem frozen for
 * that instant). The fork starts stopped, with the source's settings and no
 * checkpoints; from then on the two are independent. */
BLINK_API int blink_session_fork(blink_t *blink, const char *source, const char *target,
                                 const char *snapshot, blink_error_t *err);

/* The seed's checkpoint_session and restore_session, on the default context. */
BLINK_API int blink_checkpoint_session(const char *name, const char *snapshot,
                                       blink_error_t *err);
BLINK_API int blink_restore_session(const char *name, const char *snapshot, blink_error_t *err);

/* ---- export and import: a session as one .boxlite archive ---- */

/* Progress of a long operation: `done` of `total` bytes. */
typedef void (*blink_progress_fn)(uint64_t done, uint64_t total, void *userdata);

typedef struct blink_transfer_options {
    size_t struct_size;         /* sizeof(blink_transfer_options_t) */
    const char *output;         /* export: the archive path; NULL for
                                   BLINK_HOME/exports/NAME-YYYYmmdd-HHMMSS.boxlite */
    const char *name;           /* import: the new session's name; NULL for the archive's */
    blink_progress_fn on_progress;
    void *userdata;
} blink_transfer_options_t;

/* Writes the session (disk, checkpoints, image, settings) as a zstd tar with
 * manifest.json first. A running VM is paused for the moment its disk is
 * copied; it is not stopped. *path (caller frees) and *size describe the
 * archive. */
BLINK_API int blink_session_export(blink_t *blink, const char *name,
                                   const blink_transfer_options_t *options, char **path,
                                   uint64_t *size, blink_error_t *err);

/* Imports an archive as a new session, after checking every member's path,
 * type, size and SHA-256; nothing lands in BLINK_HOME unless all is well.
 * *name (caller frees) is the new session's name. */
BLINK_API int blink_session_import(blink_t *blink, const char *archive,
                                   const blink_transfer_options_t *options, char **name,
                                   blink_error_t *err);

/* The seed's open_session(name, image) and run_in_session(name, path), on the
 * default context. */
BLINK_API int blink_open_session(const char *name, const char *image, bool *created,
                                 blink_error_t *err);
BLINK_API int blink_run_in_session(const char *name, const char *agent_path,
                                   blink_result_t **result, blink_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
