/* WebSocket (RFC 6455) over libmicrohttpd's upgrade API: the opening
 * handshake is answered here, the framing (masking, fragments, control
 * frames, the closing handshake) is wslay's. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* RFC 6455 §1.3: the GUID appended to the client's key. */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* True when the comma-separated header `value` holds `token` (any case). */
static bool header_has_token(const char *value, const char *token)
{
    size_t len = strlen(token);
    for (const char *p = value; p && *p;) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, ",");
        size_t trimmed = n;
        while (trimmed > 0 && (p[trimmed - 1] == ' ' || p[trimmed - 1] == '\t'))
            trimmed--;
        if (trimmed == len && strncasecmp(p, token, len) == 0)
            return true;
        p += n;
    }
    return false;
}

/* Sec-WebSocket-Accept: base64(SHA-1(key + GUID)), RFC 6455 §4.2.2. */
static int accept_key(const char *key, char out[32])
{
    char joined[128];
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    int n = snprintf(joined, sizeof(joined), "%s" WS_GUID, key);
    if (n < 0 || (size_t)n >= sizeof(joined) ||
        EVP_Digest(joined, (size_t)n, digest, &digest_len, EVP_sha1(), NULL) != 1 ||
        digest_len != 20)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, digest, (int)digest_len); /* 28 chars + NUL */
    return 0;
}

static const char *header(request_t *req, const char *name)
{
    return MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND, name);
}

enum MHD_Result ws_accept(request_t *req, MHD_UpgradeHandler handler, void *cls)
{
    const char *upgrade = header(req, MHD_HTTP_HEADER_UPGRADE);
    const char *connection = header(req, MHD_HTTP_HEADER_CONNECTION);
    const char *version = header(req, "Sec-WebSocket-Version");
    const char *key = header(req, "Sec-WebSocket-Key");

    /* RFC 6455 §4.2.1: a request without the upgrade is answered 426. */
    if (upgrade == NULL || !header_has_token(upgrade, "websocket") || connection == NULL ||
        !header_has_token(connection, "upgrade") || version == NULL ||
        strcmp(version, "13") != 0) {
        static const char body[] = "{\"error\":\"this route speaks WebSocket (RFC 6455, "
                                   "version 13) only\"}";
        struct MHD_Response *response =
            MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
        if (response == NULL)
            return MHD_NO;
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        MHD_add_response_header(response, MHD_HTTP_HEADER_UPGRADE, "websocket");
        MHD_add_response_header(response, "Sec-WebSocket-Version", "13");
        return http_queue(req, MHD_HTTP_UPGRADE_REQUIRED, response);
    }
    /* §4.2.1 item 5: the key is 16 random bytes in base64, 24 characters. */
    char accept[32];
    if (key == NULL || strlen(key) != 24 || key[22] != '=' || key[23] != '=' ||
        accept_key(key, accept) < 0)
        return http_error(req, MHD_HTTP_BAD_REQUEST, "bad Sec-WebSocket-Key");

    struct MHD_Response *response = MHD_create_response_for_upgrade(handler, cls);
    if (response == NULL)
        return MHD_NO;
    /* MHD adds "Connection: Upgrade" itself. */
    MHD_add_response_header(response, MHD_HTTP_HEADER_UPGRADE, "websocket");
    MHD_add_response_header(response, "Sec-WebSocket-Accept", accept);
    return http_queue(req, MHD_HTTP_SWITCHING_PROTOCOLS, response);
}

/* ---- the connection, driven by its owner's poll loop ---- */

static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user)
{
    (void)flags;
    ws_conn_t *ws = user;
    /* Bytes MHD read past the request's headers come first. */
    if (ws->extra_off < ws->extra_len) {
        size_t n = ws->extra_len - ws->extra_off;
        n = n < len ? n : len;
        memcpy(buf, ws->extra + ws->extra_off, n);
        ws->extra_off += n;
        return (ssize_t)n;
    }
    ssize_t n;
    do
        n = recv(ws->fd, buf, len, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (n <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return n;
}

static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user)
{
    ws_conn_t *ws = user;
    int more = (flags & WSLAY_MSG_MORE) ? MSG_MORE : 0;
    ssize_t n;
    do
        n = send(ws->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL | more);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (n < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return n;
}

static void on_message(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                       void *user)
{
    (void)ctx;
    ws_conn_t *ws = user;
    /* Pings, pongs and the close reply are wslay's business. */
    if (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME)
        ws->on_message(ws, arg->opcode == WSLAY_TEXT_FRAME, arg->msg, arg->msg_length,
                       ws->user);
}

int ws_conn_init(ws_conn_t *ws, int fd, const char *extra, size_t extra_len,
                 ws_message_fn on_msg, void *user, blink_error_t *err)
{
    static const struct wslay_event_callbacks callbacks = {
        .recv_callback = on_recv,
        .send_callback = on_send,
        .on_msg_recv_callback = on_message,
    };
    memset(ws, 0, sizeof(*ws));
    ws->fd = fd;
    ws->on_message = on_msg;
    ws->user = user;
    if (extra_len > 0) {
        ws->extra = malloc(extra_len);
        if (ws->extra == NULL)
            return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[ws] start");
        memcpy(ws->extra, extra, extra_len);
        ws->extra_len = extra_len;
    }
    if (wslay_event_context_server_init(&ws->ctx, &callbacks, ws) != 0) {
        free(ws->extra);
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[ws] start");
    }
    wslay_event_config_set_max_recv_msg_length(ws->ctx, SERVER_CAP_WS_MESSAGE);
    return 0;
}

void ws_conn_free(ws_conn_t *ws)
{
    if (ws->ctx)
        wslay_event_context_free(ws->ctx);
    free(ws->extra);
    memset(ws, 0, sizeof(*ws));
}

int ws_send(ws_conn_t *ws, bool text, const void *data, size_t len)
{
    struct wslay_event_msg msg = {
        .opcode = text ? WSLAY_TEXT_FRAME : WSLAY_BINARY_FRAME,
        .msg = data,
        .msg_length = len,
    };
    return wslay_event_queue_msg(ws->ctx, &msg) == 0 ? 0 : -1; /* wslay copies it */
}

int ws_send_json(ws_conn_t *ws, json_t *object)
{
    char *text = object ? json_dumps(object, JSON_COMPACT) : NULL;
    json_decref(object);
    int rc = text ? ws_send(ws, true, text, strlen(text)) : -1;
    free(text);
    return rc;
}

/* wslay sends control frames ahead of queued messages, and nothing after
 * a close: the close waits until what was queued before it is out. */
static void close_when_flushed(ws_conn_t *ws)
{
    if (ws->close_code && wslay_event_get_queued_msg_count(ws->ctx) == 0 &&
        !wslay_event_get_close_sent(ws->ctx)) {
        wslay_event_queue_close(ws->ctx, ws->close_code, (const uint8_t *)ws->close_reason,
                                strlen(ws->close_reason));
        ws->close_code = 0;
    }
}

void ws_close(ws_conn_t *ws, uint16_t code, const char *reason)
{
    if (ws->close_code || wslay_event_get_close_sent(ws->ctx))
        return;
    ws->close_code = code;
    snprintf(ws->close_reason, sizeof(ws->close_reason), "%s", reason);
    close_when_flushed(ws);
}

short ws_poll_events(ws_conn_t *ws)
{
    short events = 0;
    if (wslay_event_want_read(ws->ctx))
        events |= POLLIN;
    if (wslay_event_want_write(ws->ctx))
        events |= POLLOUT;
    return events;
}

int ws_io(ws_conn_t *ws, short revents)
{
    /* Bytes MHD handed over are read before the socket has anything new. */
    if (ws->extra_off < ws->extra_len)
        revents |= POLLIN;
    if ((revents & (POLLIN | POLLHUP | POLLERR)) && wslay_event_want_read(ws->ctx) &&
        wslay_event_recv(ws->ctx) != 0)
        return -1;
    if (wslay_event_want_write(ws->ctx) && wslay_event_send(ws->ctx) != 0)
        return -1;
    close_when_flushed(ws);
    if (wslay_event_want_write(ws->ctx) && wslay_event_send(ws->ctx) != 0)
        return -1;
    return 0;
}

bool ws_done(ws_conn_t *ws)
{
    return !ws->close_code && !wslay_event_want_read(ws->ctx) &&
           !wslay_event_want_write(ws->ctx);
}

size_t ws_queued(ws_conn_t *ws)
{
    return wslay_event_get_queued_msg_length(ws->ctx);
}
