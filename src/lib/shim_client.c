/* Talking to a session's shim over its Unix socket (BLIN frames). */
#include "shim_client.h"

#include "caps.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

int blink_unix_address(const char *path, struct sockaddr_un *addr, int *dir_fd, blink_error_t *err)
{
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    *dir_fd = -1;
    size_t len = strlen(path);
    if (len < sizeof(addr->sun_path)) {
        memcpy(addr->sun_path, path, len + 1);
        return 0;
    }

    /* sun_path holds 107 bytes; a deep BLINK_HOME needs more. The folder is
     * opened and named through its descriptor's /proc link instead. */
    const char *slash = strrchr(path, '/');
    if (slash == NULL || strlen(slash) > 64)
        return blink_fail(err, BLINK_E_INVALID, 0, "socket path `%s` is too long", path);
    cleanup_free char *dir = strndup(path, (size_t)(slash - path));
    if (dir == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "socket path");
    *dir_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (*dir_fd < 0)
        return blink_fail(err, BLINK_E_NOT_FOUND, errno, "open `%s`", dir);
    snprintf(addr->sun_path, sizeof(addr->sun_path), "/proc/self/fd/%d%s", *dir_fd, slash);
    return 0;
}

int blink_shim_connect(const char *path, blink_shim_conn_t *conn, blink_error_t *err)
{
    struct sockaddr_un addr;
    int dir_fd;
    memset(conn, 0, sizeof(*conn));
    conn->fd = -1;
    if (blink_unix_address(path, &addr, &dir_fd, err) < 0)
        return -1;

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        if (dir_fd >= 0)
            close(dir_fd);
        return blink_fail(err, BLINK_E_IO, e, "create socket");
    }
    int rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
    int e = errno;
    if (dir_fd >= 0)
        close(dir_fd);
    if (rc < 0) {
        close(fd);
        return blink_fail(err, BLINK_E_NOT_FOUND, e, "connect to shim `%s`", path);
    }
    conn->fd = fd;
    blin_decoder_init(&conn->decoder, BLINK_CAP_BLIN_PAYLOAD);
    return 0;
}

void blink_shim_disconnect(blink_shim_conn_t *conn)
{
    if (conn->fd >= 0)
        close(conn->fd);
    conn->fd = -1;
    blin_decoder_free(&conn->decoder);
}

static int send_all(int fd, const void *data, size_t len, blink_error_t *err)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return blink_fail(err, BLINK_E_VM, errno, "send to shim");
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int blink_shim_send(blink_shim_conn_t *conn, uint8_t type, uint64_t id, const void *payload,
                    size_t len, blink_error_t *err)
{
    uint8_t header[BLIN_HEADER_SIZE];
    blin_header_t h = {.type = type, .length = (uint32_t)len, .request_id = id};
    blin_header_encode(&h, header);
    if (send_all(conn->fd, header, sizeof(header), err) < 0)
        return -1;
    return len ? send_all(conn->fd, payload, len, err) : 0;
}

int blink_shim_recv(blink_shim_conn_t *conn, int timeout_ms, blin_header_t *h,
                    const uint8_t **payload, blink_error_t *err)
{
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : blink_now_ms() + (uint64_t)timeout_ms;

    for (;;) {
        /* One byte at a time would be slow; the decoder takes what it needs
         * from a peeked buffer and we consume exactly that. */
        uint8_t chunk[65536];
        ssize_t n = recv(conn->fd, chunk, sizeof(chunk), MSG_PEEK | MSG_DONTWAIT);
        if (n > 0) {
            bool ready = false;
            long used = blin_decoder_feed(&conn->decoder, chunk, (size_t)n, &ready);
            if (used < 0)
                return blink_fail(err, BLINK_E_PROTOCOL, 0, "[shim] bad frame: %s",
                                  blin_decode_strerror((blin_decode_status_t)used));
            if (recv(conn->fd, chunk, (size_t)used, MSG_DONTWAIT) != used)
                return blink_fail(err, BLINK_E_IO, errno, "read from shim");
            if (ready) {
                *h = conn->decoder.header;
                *payload = conn->decoder.payload;
                return 1;
            }
            continue;
        }
        if (n == 0)
            return blink_fail(err, BLINK_E_VM, 0, "the session's vm went away");
        if (errno != EAGAIN && errno != EINTR)
            return blink_fail(err, BLINK_E_VM, errno, "read from shim");

        uint64_t now = blink_now_ms();
        if (now >= deadline)
            return 0;
        uint64_t wait = deadline - now;
        struct pollfd pfd = {.fd = conn->fd, .events = POLLIN};
        poll(&pfd, 1, wait > 1000 ? 1000 : (int)wait);
    }
}

int blink_exit_frame_parse(const uint8_t *payload, uint32_t len, int *exit_code, int *signal,
                           uint32_t *flags, blink_error_t *err)
{
    blin_cursor_t c;
    blin_cursor_init(&c, payload, len);
    int32_t code = (int32_t)blin_get_u32(&c);
    uint32_t signo = blin_get_u32(&c);
    *flags = blin_get_u32(&c);
    if (c.failed || signo > 64)
        return blink_fail(err, BLINK_E_PROTOCOL, 0, "malformed exit message");
    *exit_code = signo ? -1 : code;
    *signal = (int)signo;
    return 0;
}

void blink_error_frame_text(const uint8_t *payload, uint32_t len, char *buf, size_t size)
{
    blin_cursor_t c;
    blin_cursor_init(&c, payload, len);
    uint32_t code = blin_get_u32(&c);
    char *message = blin_get_string(&c, 400);
    snprintf(buf, size, "%s (errno %u)", message ? message : "malformed error", code);
    free(message);
}

#define SHIM_REQUEST_TIMEOUT_MS 600000

/* Sends one request to the shim and waits for its reply of the same type. */
int blink_shim_request(const char *socket, uint8_t type, const char *arg, bool with_flags,
                       uint32_t flags, blink_error_t *err)
{
    blink_shim_conn_t conn;
    if (blink_shim_connect(socket, &conn, err) < 0)
        return -1;

    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_string(&w, arg);
    if (with_flags)
        blin_put_u32(&w, flags);
    int rc = w.failed ? blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "encode request")
                      : blink_shim_send(&conn, type, BLINK_SHIM_REQUEST_ID, w.data, w.len, err);
    blin_writer_free(&w);

    while (rc == 0) {
        blin_header_t h;
        const uint8_t *payload;
        int got = blink_shim_recv(&conn, SHIM_REQUEST_TIMEOUT_MS, &h, &payload, err);
        if (got <= 0) {
            rc = got < 0 ? -1 : blink_fail(err, BLINK_E_TIMEOUT, 0, "no answer from the shim");
            break;
        }
        if (h.request_id != BLINK_SHIM_REQUEST_ID)
            continue;
        if (h.type == BLIN_ERROR) {
            char text[512];
            blink_error_frame_text(payload, h.length, text, sizeof(text));
            rc = blink_fail(err, BLINK_E_VM, 0, "%s", text);
        }
        break;
    }
    blink_shim_disconnect(&conn);
    return rc;
}
