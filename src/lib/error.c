/* The library's one error convention: see blink.h and docs/errors.md. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

static const char *const status_names[] = {
    [BLINK_OK] = "ok",
    [BLINK_E_INVALID] = "invalid argument",
    [BLINK_E_NOT_FOUND] = "not found",
    [BLINK_E_EXISTS] = "already exists",
    [BLINK_E_BUSY] = "busy",
    [BLINK_E_IO] = "input/output error",
    [BLINK_E_NO_MEMORY] = "out of memory",
    [BLINK_E_PROTOCOL] = "protocol error",
    [BLINK_E_VM] = "virtual machine failure",
    [BLINK_E_TIMEOUT] = "timed out",
    [BLINK_E_MISSING_DEP] = "missing dependency",
    [BLINK_E_PERMISSION] = "permission denied",
    [BLINK_E_NOT_SETUP] = "not set up",
    [BLINK_E_INTERNAL] = "internal error",
};

const char *blink_strerror(blink_status_t code)
{
    if ((size_t)code < sizeof(status_names) / sizeof(status_names[0]) && status_names[code])
        return status_names[code];
    return "unknown error";
}

int blink_fail(blink_error_t *err, blink_status_t code, int sys_errno, const char *fmt, ...)
{
    if (err == NULL)
        return -1;

    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    err->code = code;
    err->sys_errno = sys_errno;
    return -1;
}

int blink_wrap(blink_error_t *err, const char *fmt, ...)
{
    if (err == NULL)
        return -1;

    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);

    char joined[sizeof(prefix) + 2 + sizeof(err->message)];
    snprintf(joined, sizeof(joined), "%s: %s", prefix, err->message);
    snprintf(err->message, sizeof(err->message), "%.*s", (int)sizeof(err->message) - 1, joined);
    return -1;
}

const char *blink_error_format(const blink_error_t *err, char *buf, size_t size)
{
    if (err->sys_errno != 0)
        snprintf(buf, size, "%s: %s", err->message, strerror(err->sys_errno));
    else
        snprintf(buf, size, "%s", err->message);
    return buf;
}
