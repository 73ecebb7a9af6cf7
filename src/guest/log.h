/* Console logging for blink-guest.
 *
 * PID 1 logs before /dev exists, between fork and exec, and while the rest of
 * the program may be in any state, so every function here is async-signal-safe:
 * messages are formatted by a small formatter of our own (no stdio, no malloc,
 * no locale) and written with one write(2) per line. Lines look like
 * `blink-guest: warning: load module vsock.ko: No such file or directory`. */
#ifndef BLINK_GUEST_LOG_H
#define BLINK_GUEST_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum guest_log_level {
    GUEST_LOG_ERROR,
    GUEST_LOG_WARN,
    GUEST_LOG_INFO,
    GUEST_LOG_DEBUG,
} guest_log_level_t;

/* Makes `fd` the console. Until this is called messages are dropped, because
 * fds 0-2 may be closed or may belong to an unrelated file. */
void log_set_console(int fd);
int log_console(void);

/* Debug lines are written only when the kernel command line has blink.debug=1. */
void log_set_debug(bool enabled);
bool log_debug_enabled(void);

/* Writes one line at `level`. When `err` is non-zero its description is
 * appended after a colon. errno is preserved. */
void log_write(guest_log_level_t level, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The formatter behind log_write, shared with the Error messages sent to the
 * host. Understands %s %c %d %i %u %x %p and the l, ll and z modifiers. Always
 * NUL-terminates; returns the length written (truncated to fit). */
size_t format_text(char *buf, size_t size, const char *fmt, va_list ap);
size_t format_text_args(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Description of an errno value without touching locale data. */
const char *errno_text(int err);

#define log_error(...) log_write(GUEST_LOG_ERROR, 0, __VA_ARGS__)
#define log_error_errno(err, ...) log_write(GUEST_LOG_ERROR, (err), __VA_ARGS__)
#define log_warn(...) log_write(GUEST_LOG_WARN, 0, __VA_ARGS__)
#define log_warn_errno(err, ...) log_write(GUEST_LOG_WARN, (err), __VA_ARGS__)
#define log_info(...) log_write(GUEST_LOG_INFO, 0, __VA_ARGS__)

/* The level is checked before the arguments are evaluated. */
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_debug_enabled())                                                                   \
            log_write(GUEST_LOG_DEBUG, 0, __VA_ARGS__);                                            \
    } while (0)

#endif
