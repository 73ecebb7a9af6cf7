/* QMP client. The protocol (docs/interop/qmp-spec in QEMU) is line-oriented
 * JSON: a greeting, then capability negotiation, then commands answered by
 * {"return": …} or {"error": {"class", "desc"}}, with asynchronous
 * {"event": …} objects interleaved. QEMU ends each message with CRLF. */
#include "qmp.h"

#include "caps.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

static void record_event(blink_qmp_t *qmp, json_t *message)
{
    const char *event = json_string_value(json_object_get(message, "event"));
    if (event == NULL)
        return;

    log_debug("qmp", "event %s", event);
    if (strcmp(event, "SHUTDOWN") == 0) {
        const char *reason =
            json_string_value(json_object_get(json_object_get(message, "data"), "reason"));
        qmp->shutdown_seen = true;
        snprintf(qmp->shutdown_reason, sizeof(qmp->shutdown_reason), "%s",
                 reason ? reason : "unknown");
    } else if (strcmp(event, "GUEST_PANICKED") == 0) {
        qmp->guest_panicked = true;
    }
}

/* Takes one complete line out of the input buffer, parsed. Returns 1 with
 * *message set, 0 when no full line is buffered, -1 on a malformed line. */
static int next_message(blink_qmp_t *qmp, json_t **message, blink_error_t *err)
{
    char *newline = qmp->in.data ? memchr(qmp->in.data, '\n', qmp->in.len) : NULL;
    if (newline == NULL) {
        if (qmp->in.len > BLINK_CAP_QMP_LINE)
            return blink_fail(err, BLINK_E_PROTOCOL, 0, "[qmp] line longer than %u bytes",
                              BLINK_CAP_QMP_LINE);
        return 0;
    }

    size_t line_len = (size_t)(newline - qmp->in.data) + 1;
    json_error_t jerr;
    *message = json_loadb(qmp->in.data, line_len, 0, &jerr);
    memmove(qmp->in.data, qmp->in.data + line_len, qmp->in.len - line_len);
    qmp->in.len -= line_len;
    if (*message == NULL || !json_is_object(*message)) {
        json_decref(*message);
        return blink_fail(err, BLINK_E_PROTOCOL, 0, "[qmp] malformed message: %s", jerr.text);
    }
    return 1;
}

/* Reads once (after waiting until `deadline_ms` when `wait` is set). Returns
 * bytes read, 0 when nothing was ready, -1 on EOF or error. */
static int read_some(blink_qmp_t *qmp, bool wait, uint64_t deadline_ms, blink_error_t *err)
{
    if (wait) {
        uint64_t now = blink_now_ms();
        if (now >= deadline_ms)
            return blink_fail(err, BLINK_E_TIMEOUT, 0, "[qmp] no answer from qemu in time");
        struct pollfd pfd = {.fd = qmp->fd, .events = POLLIN};
        int rc = poll(&pfd, 1, (int)(deadline_ms - now));
        if (rc < 0 && errno != EINTR)
            return blink_fail(err, BLINK_E_IO, errno, "[qmp] poll");
        if (rc <= 0)
            return 0;
    }

    char chunk[8192];
    ssize_t n = recv(qmp->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n < 0)
        return blink_fail(err, BLINK_E_VM, errno, "[qmp] read from qemu");
    if (n == 0)
        return blink_fail(err, BLINK_E_VM, 0, "[qmp] qemu closed the monitor");
    if (blink_buf_append(&qmp->in, chunk, (size_t)n) < 0)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[qmp] buffer");
    return (int)n;
}

/* Waits for the next non-event message, recording events on the way. */
static json_t *wait_reply(blink_qmp_t *qmp, uint64_t deadline_ms, blink_error_t *err)
{
    for (;;) {
        json_t *message = NULL;
        int got = next_message(qmp, &message, err);
        if (got < 0)
            return NULL;
        if (got > 0) {
            if (json_object_get(message, "event") == NULL)
                return message;
            record_event(qmp, message);
            json_decref(message);
            continue;
        }
        if (read_some(qmp, true, deadline_ms, err) < 0)
            return NULL;
    }
}

static int send_command(blink_qmp_t *qmp, const char *command, json_t *arguments,
                        blink_error_t *err)
{
    json_t *request = json_pack("{s:s}", "execute", command);
    if (request == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[qmp] build `%s`", command);
    if (arguments)
        json_object_set(request, "arguments", arguments);
    char *text = json_dumps(request, JSON_COMPACT);
    json_decref(request);
    if (text == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[qmp] encode `%s`", command);

    log_debug("qmp", "-> %s", text);
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the terminator; the buffer is not a string anymore */
    size_t off = 0;
    int rc = 0;
    while (off < len + 1) {
        ssize_t n = send(qmp->fd, text + off, len + 1 - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = blink_fail(err, BLINK_E_VM, errno, "[qmp] send `%s`", command);
            break;
        }
        off += (size_t)n;
    }
    free(text);
    return rc;
}

int blink_qmp_execute(blink_qmp_t *qmp, const char *command, json_t *arguments, json_t **reply,
                      uint64_t deadline_ms, blink_error_t *err)
{
    if (send_command(qmp, command, arguments, err) < 0)
        return -1;

    json_t *message = wait_reply(qmp, deadline_ms, err);
    if (message == NULL)
        return blink_wrap(err, "[qmp] `%s`", command);

    json_t *error = json_object_get(message, "error");
    if (error) {
        const char *desc = json_string_value(json_object_get(error, "desc"));
        blink_fail(err, BLINK_E_VM, 0, "[qmp] `%s` failed: %s", command,
                   desc ? desc : "no description");
        json_decref(message);
        return -1;
    }
    if (reply)
        *reply = json_incref(json_object_get(message, "return"));
    json_decref(message);
    return 0;
}

int blink_qmp_connect(blink_qmp_t *qmp, int fd, uint64_t deadline_ms, blink_error_t *err)
{
    memset(qmp, 0, sizeof(*qmp));
    qmp->fd = fd;

    /* 1. The greeting: {"QMP": {"version": …, "capabilities": […]}}. */
    json_t *greeting = wait_reply(qmp, deadline_ms, err);
    if (greeting == NULL)
        return blink_wrap(err, "[qmp] greeting");
    bool is_qmp = json_object_get(greeting, "QMP") != NULL;
    json_decref(greeting);
    if (!is_qmp)
        return blink_fail(err, BLINK_E_PROTOCOL, 0, "[qmp] greeting is not a QMP greeting");

    /* 2. Leave capability negotiation mode; only then are commands accepted. */
    return blink_qmp_execute(qmp, "qmp_capabilities", NULL, NULL, deadline_ms, err);
}

int blink_qmp_pump(blink_qmp_t *qmp, blink_error_t *err)
{
    for (;;) {
        int n = read_some(qmp, false, 0, err);
        if (n < 0)
            return -1;
        json_t *message = NULL;
        int got;
        while ((got = next_message(qmp, &message, err)) > 0) {
            record_event(qmp, message);
            json_decref(message);
        }
        if (got < 0)
            return -1;
        if (n == 0)
            return 0;
    }
}

void blink_qmp_close(blink_qmp_t *qmp)
{
    if (qmp->fd >= 0)
        close(qmp->fd);
    qmp->fd = -1;
    blink_buf_free(&qmp->in);
}
