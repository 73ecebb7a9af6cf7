/* Async-signal-safe console logging. See log.h. */
#include "log.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* One console line; longer messages are cut, never split over two writes. */
#define LOG_LINE_MAX 512

static int console_fd = -1;
static bool debug_enabled;

void log_set_console(int fd)
{
    console_fd = fd;
}

int log_console(void)
{
    return console_fd;
}

void log_set_debug(bool enabled)
{
    debug_enabled = enabled;
}

bool log_debug_enabled(void)
{
    return debug_enabled;
}

const char *errno_text(int err)
{
    /* strerrordesc_np reads a constant table; strerror may consult locale data
     * and is not async-signal-safe. */
    const char *text = strerrordesc_np(err);
    return text ? text : "unknown error";
}

typedef struct text_sink {
    char *data;
    size_t size; /* including room for the terminator */
    size_t len;
} text_sink_t;

static void sink_char(text_sink_t *s, char c)
{
    if (s->len + 1 < s->size)
        s->data[s->len++] = c;
}

static void sink_string(text_sink_t *s, const char *str)
{
    if (str == NULL)
        str = "(null)";
    while (*str)
        sink_char(s, *str++);
}

static void sink_unsigned(text_sink_t *s, unsigned long long value, unsigned base)
{
    char digits[24];
    size_t n = 0;

    do {
        digits[n++] = "0123456789abcdef"[value % base];
        value /= base;
    } while (value != 0);
    while (n > 0)
        sink_char(s, digits[--n]);
}

static void sink_signed(text_sink_t *s, long long value)
{
    if (value < 0) {
        sink_char(s, '-');
        /* Negate in unsigned arithmetic so LLONG_MIN does not overflow. */
        sink_unsigned(s, 0ull - (unsigned long long)value, 10);
        return;
    }
    sink_unsigned(s, (unsigned long long)value, 10);
}

/* Length modifiers the formatter understands. */
enum { LEN_INT, LEN_LONG, LEN_LONG_LONG, LEN_SIZE };

static const char *parse_length(const char *p, int *length)
{
    *length = LEN_INT;
    if (p[0] == 'l' && p[1] == 'l') {
        *length = LEN_LONG_LONG;
        return p + 2;
    }
    if (p[0] == 'l') {
        *length = LEN_LONG;
        return p + 1;
    }
    if (p[0] == 'z') {
        *length = LEN_SIZE;
        return p + 1;
    }
    return p;
}

static long long take_signed(va_list *ap, int length)
{
    switch (length) {
    case LEN_LONG:
        return va_arg(*ap, long);
    case LEN_LONG_LONG:
        return va_arg(*ap, long long);
    case LEN_SIZE:
        return va_arg(*ap, ssize_t);
    }
    return va_arg(*ap, int);
}

static unsigned long long take_unsigned(va_list *ap, int length)
{
    switch (length) {
    case LEN_LONG:
        return va_arg(*ap, unsigned long);
    case LEN_LONG_LONG:
        return va_arg(*ap, unsigned long long);
    case LEN_SIZE:
        return va_arg(*ap, size_t);
    }
    return va_arg(*ap, unsigned int);
}

size_t format_text(char *buf, size_t size, const char *fmt, va_list ap)
{
    text_sink_t s = {.data = buf, .size = size, .len = 0};
    va_list args;
    int length;

    if (size == 0)
        return 0;
    va_copy(args, ap);
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            sink_char(&s, *p);
            continue;
        }
        p = parse_length(p + 1, &length);
        switch (*p) {
        case 'd':
        case 'i':
            sink_signed(&s, take_signed(&args, length));
            break;
        case 'u':
            sink_unsigned(&s, take_unsigned(&args, length), 10);
            break;
        case 'x':
            sink_unsigned(&s, take_unsigned(&args, length), 16);
            break;
        case 'p':
            sink_string(&s, "0x");
            sink_unsigned(&s, (uintptr_t)va_arg(args, void *), 16);
            break;
        case 's':
            sink_string(&s, va_arg(args, const char *));
            break;
        case 'c':
            sink_char(&s, (char)va_arg(args, int));
            break;
        case '%':
            sink_char(&s, '%');
            break;
        case '\0':
            p--; /* a lone '%' at the end: stop at the terminator */
            break;
        default:
            sink_char(&s, '%');
            sink_char(&s, *p);
            break;
        }
    }
    va_end(args);
    s.data[s.len] = '\0';
    return s.len;
}

size_t format_text_args(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    size_t len = format_text(buf, size, fmt, ap);
    va_end(ap);
    return len;
}

static const char *level_tag(guest_log_level_t level)
{
    switch (level) {
    case GUEST_LOG_ERROR:
        return "error: ";
    case GUEST_LOG_WARN:
        return "warning: ";
    case GUEST_LOG_INFO:
        return "";
    case GUEST_LOG_DEBUG:
        return "debug: ";
    }
    return "";
}

void log_write(guest_log_level_t level, int err, const char *fmt, ...)
{
    char line[LOG_LINE_MAX];
    int saved_errno = errno;
    va_list ap;

    if (console_fd < 0 || (level == GUEST_LOG_DEBUG && !debug_enabled))
        return;

    size_t len = format_text_args(line, sizeof(line), "blink-guest: %s", level_tag(level));
    va_start(ap, fmt);
    len += format_text(line + len, sizeof(line) - len, fmt, ap);
    va_end(ap);
    if (err != 0)
        len += format_text_args(line + len, sizeof(line) - len, ": %s", errno_text(err));

    /* Keep room for the newline even when the message was cut. */
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';

    /* A console write fails only when the console is gone; nothing to do then. */
    ssize_t written;
    do {
        written = write(console_fd, line, len);
    } while (written < 0 && errno == EINTR);
    errno = saved_errno;
}
