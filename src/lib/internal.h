/* Declarations shared inside libblink: errors, logging, cleanup helpers and
 * small utilities. Nothing here is part of the public API. */
#ifndef BLINK_INTERNAL_H
#define BLINK_INTERNAL_H

#include <blink/blink.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

#define BLINK_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

/* ---- errors (one convention for the whole library) ---- */

/* Fills `err` (when not NULL) and returns -1, so a failure reads
 * `return blink_fail(err, BLINK_E_IO, errno, "open disk `%s`", path);`. */
int blink_fail(blink_error_t *err, blink_status_t code, int sys_errno, const char *fmt, ...)
    BLINK_PRINTF(4, 5);

/* Prefixes the message already in `err` with context ("boot vm: ..."). Returns -1. */
int blink_wrap(blink_error_t *err, const char *fmt, ...) BLINK_PRINTF(2, 3);

/* Same as blink_fail for functions that return pointers. */
#define blink_fail_null(err, ...) (blink_fail((err), __VA_ARGS__), NULL)

/* ---- logging ---- */

typedef enum blink_log_level {
    BLINK_LOG_ERROR = 0,
    BLINK_LOG_WARN = 1,
    BLINK_LOG_INFO = 2,
    BLINK_LOG_DEBUG = 3,
} blink_log_level_t;

/* The level comes from $BLINK_LOG (error|warn|info|debug, default warn) and
 * the format from $BLINK_LOG_FORMAT (text|json). Lines go to stderr. */
extern int blink_log_threshold;
void blink_log_init(void);
void blink_log_write(blink_log_level_t level, const char *component, const char *fmt, ...)
    BLINK_PRINTF(3, 4);

/* The level is checked before any argument is evaluated. */
#define blink_log(level, component, ...)                                                        \
    do {                                                                                       \
        if ((int)(level) <= blink_log_threshold)                                               \
            blink_log_write((level), (component), __VA_ARGS__);                                \
    } while (0)
#define log_error(comp, ...) blink_log(BLINK_LOG_ERROR, comp, __VA_ARGS__)
#define log_warn(comp, ...) blink_log(BLINK_LOG_WARN, comp, __VA_ARGS__)
#define log_info(comp, ...) blink_log(BLINK_LOG_INFO, comp, __VA_ARGS__)
#define log_debug(comp, ...) blink_log(BLINK_LOG_DEBUG, comp, __VA_ARGS__)

/* ---- cleanup idiom for locals ---- */

static inline void blink_freep(void *p)
{
    free(*(void **)p);
}

static inline void blink_closep(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}

#define cleanup_free __attribute__((cleanup(blink_freep)))
#define cleanup_close __attribute__((cleanup(blink_closep)))

/* Hands ownership of a local to the caller: returns it and clears the local. */
#define steal_pointer(pp) blink_steal_pointer((void **)(pp))
static inline void *blink_steal_pointer(void **pp)
{
    void *p = *pp;
    *pp = NULL;
    return p;
}
static inline int steal_fd(int *fd)
{
    int v = *fd;
    *fd = -1;
    return v;
}

/* ---- utilities (util.c) ---- */

uint64_t blink_now_ms(void);  /* monotonic */
uint64_t blink_wall_ns(void); /* realtime */
char *blink_strdup_printf(const char *fmt, ...) BLINK_PRINTF(1, 2);
int blink_mkdir_p(const char *path, mode_t mode, blink_error_t *err);
int blink_remove_tree(const char *path);
/* Reads a whole small file (at most `max` bytes) into a NUL-terminated buffer. */
char *blink_read_file(const char *path, size_t max, size_t *len, blink_error_t *err);
/* Writes a file atomically (temp file, fsync, rename). */
int blink_write_file_atomic(const char *path, const void *data, size_t len, blink_error_t *err);
/* Removes the entries of `dir` that a killed Blink process left: names with
 * `marker` followed by a pid (at the start of the name when `prefix_only`)
 * whose process no longer exists. */
void blink_reap_orphans(const char *dir, const char *marker, bool prefix_only);
/* Copies a file's bytes to a new file `target` (mode 0600), fsynced. */
int blink_copy_file(const char *source, const char *target, blink_error_t *err);
/* Finds an executable in $PATH; returns a new string or NULL. */
char *blink_find_program(const char *name);
int blink_set_nonblocking(int fd);
/* Copies `len` bytes as valid UTF-8, replacing each invalid byte with U+FFFD. */
char *blink_utf8_sanitize(const char *data, size_t len, size_t *out_len);

/* Keeps the last `cap` bytes written: appends and drops from the front. */
void blink_tail_append(char *tail, size_t *tail_len, size_t cap, const char *data, size_t len);

/* Runs a helper program (absolute argv[0]) to completion with stdin and
 * stdout on /dev/null; a non-zero exit becomes an error carrying its stderr. */
int blink_run_program(char *const argv[], blink_error_t *err);
/* The same, keeping up to `max` bytes of its stdout in *out (caller frees). */
int blink_run_program_output(char *const argv[], char **out, size_t max, blink_error_t *err);

/* Appends to a growing buffer; fails only on allocation failure. */
typedef struct blink_buf {
    char *data;
    size_t len;
    size_t capacity;
} blink_buf_t;
int blink_buf_append(blink_buf_t *b, const void *data, size_t len);
void blink_buf_free(blink_buf_t *b);

#endif
