/* The guest-local V-Hub endpoint: guest programs connect to a Unix socket
 * (VHUB_SOCKET_PATH, $BLINK_VHUB_SOCKET in agents' environment) and speak
 * BLIN as they would to the hub; each connection travels to the host over
 * the org.blink.vhub port under an id of its own (docs/vhub.md, "The
 * carrier"). The bytes are not looked at here: the host checks them.
 *
 * Credit flow control both ways: we send the host at most VHUB_WINDOW bytes
 * of a connection it has not acknowledged, and it sends us no more than we
 * can hold for a program that reads slowly. */
#include "guest.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define VHUB_PORT_NAME   "org.blink.vhub"
#define VHUB_RUN_DIR     "/run/blink"
#define VHUB_SOCKET_PATH VHUB_RUN_DIR "/vhub.sock"
#define VHUB_TOOL_SOURCE "/blink-vhub"
#define VHUB_TOOL_DIR    VHUB_RUN_DIR "/bin"
#define VHUB_TOOL_PATH   VHUB_TOOL_DIR "/blink-vhub"

/* The port appears with the control port; this only covers the moment
 * between the two being probed. */
#define VHUB_PORT_WAIT_MS 2000u

/* Past this much unsent, the host has stopped reading the port. */
#define VHUB_OUT_LIMIT (2 * VHUB_PORT_QUEUE)

typedef struct guest_conn {
    bool used;
    uint64_t id;
    int fd;              /* the program's socket; -1 once closed */
    uint8_t *to_client;  /* host bytes the program has not read, VHUB_WINDOW bytes */
    size_t pending_off;
    size_t pending_len;
    uint32_t credit;     /* bytes we may still send the host */
    uint32_t unacked;    /* host bytes the program read since our last Ack */
    bool sent_close;     /* the program's end: Close sent */
    bool got_close;      /* the host's Close */
} guest_conn_t;

static guest_conn_t conns[VHUB_MAX_CONNECTIONS];
static int port_fd = -1;
static int listen_fd = -1;
static int tool_fd = -1;
static blin_decoder_t decoder;
static uint8_t *out;
static size_t out_len, out_off, out_cap;
static uint64_t next_id = 1;

/* What each pollfd entry of the last prepare was: a connection, or one of: */
enum { SLOT_PORT = -1, SLOT_LISTEN = -2 };
static int slots[VHUB_POLLFDS];

/* ---- the port ---- */

static void port_fail(const char *why);

static void port_queue(uint8_t type, uint64_t id, const void *payload, size_t len)
{
    if (port_fd < 0)
        return;
    if (out_off > 0) {
        memmove(out, out + out_off, out_len - out_off);
        out_len -= out_off;
        out_off = 0;
    }
    if (out_len + BLIN_HEADER_SIZE + len > VHUB_OUT_LIMIT) {
        port_fail("the host stopped reading the v-hub port");
        return;
    }
    if (out_len + BLIN_HEADER_SIZE + len > out_cap) {
        size_t cap = out_cap ? out_cap : 64u << 10;
        while (cap < out_len + BLIN_HEADER_SIZE + len)
            cap *= 2;
        uint8_t *grown = realloc(out, cap);
        if (grown == NULL) {
            port_fail("out of memory");
            return;
        }
        out = grown;
        out_cap = cap;
    }
    blin_header_t h = {.type = type, .length = (uint32_t)len, .request_id = id};
    blin_header_encode(&h, out + out_len);
    if (len)
        memcpy(out + out_len + BLIN_HEADER_SIZE, payload, len);
    out_len += BLIN_HEADER_SIZE + len;
}

static void port_flush(void)
{
    while (port_fd >= 0 && out_off < out_len) {
        ssize_t n = write(port_fd, out + out_off, out_len - out_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n < 0) {
            port_fail("write failed");
            return;
        }
        out_off += (size_t)n;
    }
    out_len = out_off = 0;
}

static size_t port_queued(void)
{
    return out_len - out_off;
}

/* ---- connections ---- */

static void release(guest_conn_t *c)
{
    close_fd(&c->fd);
    free(c->to_client);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

/* The program's side is over (EOF, or it went away): tell the host once. */
static void client_ended(guest_conn_t *c)
{
    if (!c->sent_close) {
        c->sent_close = true;
        port_queue(BLIN_VHUB_CLOSE, c->id, NULL, 0);
    }
    if (c->got_close)
        release(c);
}

static guest_conn_t *find_conn(uint64_t id)
{
    for (size_t i = 0; i < VHUB_MAX_CONNECTIONS; i++)
        if (conns[i].used && conns[i].id == id)
            return &conns[i];
    return NULL;
}

static guest_conn_t *free_slot(void)
{
    for (size_t i = 0; i < VHUB_MAX_CONNECTIONS; i++)
        if (!conns[i].used)
            return &conns[i];
    return NULL;
}

static void accept_client(void)
{
    guest_conn_t *c = free_slot();
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0)
        return;
    uint8_t *buffer = malloc(VHUB_WINDOW);
    if (c == NULL || buffer == NULL) {
        free(buffer);
        close(fd);
        return;
    }
    while (next_id == 0 || find_conn(next_id))
        next_id++;
    *c = (guest_conn_t){.used = true, .id = next_id++, .fd = fd, .to_client = buffer,
                        .credit = VHUB_WINDOW};
    port_queue(BLIN_VHUB_OPEN, c->id, NULL, 0);
}

static void read_client(guest_conn_t *c)
{
    static uint8_t chunk[VHUB_DATA_MAX];
    size_t room = c->credit < sizeof(chunk) ? c->credit : sizeof(chunk);

    ssize_t n = read(c->fd, chunk, room);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        /* The program's end of input; it may still read what the host
         * answers (an Error, say) until the host's Close. */
        client_ended(c);
        return;
    }
    c->credit -= (uint32_t)n;
    port_queue(BLIN_VHUB_DATA, c->id, chunk, (size_t)n);
}

static void write_client(guest_conn_t *c)
{
    while (c->fd >= 0 && c->pending_len > 0) {
        ssize_t n = send(c->fd, c->to_client + c->pending_off, c->pending_len,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n < 0) {
            c->pending_len = 0;
            close_fd(&c->fd);
            client_ended(c);
            return;
        }
        c->pending_off += (size_t)n;
        c->pending_len -= (size_t)n;
        c->unacked += (uint32_t)n;
    }
    if (c->pending_len == 0)
        c->pending_off = 0;
    if (c->unacked >= VHUB_ACK_BATCH && !c->got_close) {
        uint8_t n[4] = {(uint8_t)c->unacked, (uint8_t)(c->unacked >> 8),
                        (uint8_t)(c->unacked >> 16), (uint8_t)(c->unacked >> 24)};
        port_queue(BLIN_VHUB_ACK, c->id, n, sizeof(n));
        c->unacked = 0;
    }
    /* The host closed: once its last bytes are out, so is the program's
     * connection. */
    if (c->got_close && (c->pending_len == 0 || c->fd < 0)) {
        close_fd(&c->fd);
        client_ended(c);
    }
}

/* ---- frames from the host ---- */

static void on_data(guest_conn_t *c, uint64_t id, const uint8_t *payload, size_t len)
{
    if (c == NULL) {
        /* A connection this guest does not know, e.g. one from before a
         * restore: the host is to forget it too. */
        port_queue(BLIN_VHUB_CLOSE, id, NULL, 0);
        return;
    }
    if (c->got_close || c->fd < 0)
        return;
    if (len > VHUB_WINDOW - c->pending_off - c->pending_len) {
        memmove(c->to_client, c->to_client + c->pending_off, c->pending_len);
        c->pending_off = 0;
    }
    if (len > VHUB_WINDOW - c->pending_len) {
        log_warn("v-hub: host sent connection %llu more than its window; closing it",
                 (unsigned long long)id);
        close_fd(&c->fd);
        client_ended(c);
        return;
    }
    memcpy(c->to_client + c->pending_off + c->pending_len, payload, len);
    c->pending_len += len;
    write_client(c);
}

static void on_port_frame(const blin_header_t *h, const uint8_t *payload)
{
    guest_conn_t *c = find_conn(h->request_id);

    switch (h->type) {
    case BLIN_VHUB_DATA:
        on_data(c, h->request_id, payload, h->length);
        break;
    case BLIN_VHUB_CLOSE:
        if (c == NULL || c->got_close)
            break;
        c->got_close = true;
        /* A program still sending learns at once (EPIPE) that nobody
         * listens; it can still read what the host sent before. */
        if (c->fd >= 0)
            shutdown(c->fd, SHUT_RD);
        write_client(c);
        break;
    case BLIN_VHUB_ACK: {
        blin_cursor_t cur;
        blin_cursor_init(&cur, payload, h->length);
        uint32_t n = blin_get_u32(&cur);
        if (c && !cur.failed)
            c->credit = n > VHUB_WINDOW - c->credit ? VHUB_WINDOW : c->credit + n;
        break;
    }
    default:
        log_warn("v-hub: ignoring %s from the host", blin_type_name(h->type));
    }
}

static void read_port(void)
{
    static uint8_t input[64u << 10];

    ssize_t n = read(port_fd, input, sizeof(input));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        port_fail(n == 0 ? "the host closed the v-hub port" : "read failed");
        return;
    }
    for (size_t used = 0; used < (size_t)n && port_fd >= 0;) {
        bool ready;
        long taken = blin_decoder_feed(&decoder, input + used, (size_t)n - used, &ready);
        if (taken < 0) {
            port_fail(blin_decode_strerror((blin_decode_status_t)taken));
            return;
        }
        used += (size_t)taken;
        if (ready)
            on_port_frame(&decoder.header, decoder.payload);
    }
}

/* Without the port there is no hub to reach: every connection ends and the
 * socket goes, so programs see at once that there is none. Executions and
 * the control port are not affected. */
static void port_fail(const char *why)
{
    if (port_fd < 0)
        return;
    log_warn("v-hub: %s; guest programs lose the hub", why);
    close_fd(&port_fd);
    for (size_t i = 0; i < VHUB_MAX_CONNECTIONS; i++)
        if (conns[i].used)
            release(&conns[i]);
    if (listen_fd >= 0)
        unlink(VHUB_SOCKET_PATH);
    close_fd(&listen_fd);
    free(out);
    out = NULL;
    out_len = out_off = out_cap = 0;
}

/* ---- setup ---- */

void vhub_keep_tool(void)
{
    tool_fd = open(VHUB_TOOL_SOURCE, O_RDONLY | O_CLOEXEC);
    if (tool_fd < 0)
        log_warn_errno(errno, "open %s; guest programs go without it", VHUB_TOOL_SOURCE);
}

/* The tool lives in the initramfs, which is out of sight after the switch
 * to the root disk: a copy on /run puts it on every agent's PATH without
 * touching the image. */
static void install_tool(void)
{
    static uint8_t chunk[64u << 10];
    int rc = 0;

    if (tool_fd < 0)
        return;
    int target = open(VHUB_TOOL_PATH, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    if (target < 0)
        rc = -errno;
    for (ssize_t n; rc == 0 && (n = read(tool_fd, chunk, sizeof(chunk))) != 0;) {
        if (n < 0 && errno == EINTR)
            continue;
        rc = n < 0 ? -errno : write_all(target, chunk, (size_t)n);
    }
    if (target >= 0 && close(target) < 0 && rc == 0)
        rc = -errno;
    if (rc < 0)
        log_warn_errno(-rc, "install %s", VHUB_TOOL_PATH);
    close_fd(&tool_fd);
}

static int listen_local(void)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path, VHUB_SOCKET_PATH, sizeof(VHUB_SOCKET_PATH));

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    unlink(VHUB_SOCKET_PATH);
    /* Every program in the VM may use the hub, whatever its user. */
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        chmod(VHUB_SOCKET_PATH, 0666) < 0 || listen(fd, 128) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

void vhub_init(void)
{
    char port_path[64];
    uint64_t deadline = monotonic_ms() + VHUB_PORT_WAIT_MS;
    int rc;

    if ((rc = ensure_directory(VHUB_RUN_DIR, 0755)) < 0 ||
        (rc = ensure_directory(VHUB_TOOL_DIR, 0755)) < 0)
        log_warn_errno(-rc, "create %s", VHUB_TOOL_DIR);
    install_tool();

    while ((rc = find_virtio_port(VHUB_PORT_NAME, port_path, sizeof(port_path))) < 0 ||
           access(port_path, F_OK) < 0) {
        if (monotonic_ms() > deadline) {
            log_warn("no %s port; guest programs have no hub", VHUB_PORT_NAME);
            return;
        }
        sleep_ms(5);
    }
    port_fd = open(port_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (port_fd < 0) {
        log_warn_errno(errno, "open v-hub port %s", port_path);
        return;
    }
    blin_decoder_init(&decoder, VHUB_DATA_MAX);
    for (size_t i = 0; i < VHUB_MAX_CONNECTIONS; i++)
        conns[i].fd = -1;

    listen_fd = listen_local();
    if (listen_fd < 0) {
        log_warn_errno(-listen_fd, "listen on %s", VHUB_SOCKET_PATH);
        close_fd(&port_fd);
        return;
    }
    log_debug("v-hub endpoint on %s", VHUB_SOCKET_PATH);
}

/* ---- the event loop ---- */

/* Every wait is on an fd, with no timer: the port turns writable on the
 * out-queue interrupt (virtio_console also reclaims what the host consumed
 * whenever it is polled), and credit comes back as Acks on the port. A
 * relay once seen to stop here was the host's carrier sitting on guest
 * bytes with nothing to wake it (vhub_carrier.c, step), not the port. */
size_t vhub_poll_prepare(struct pollfd *fds, size_t max)
{
    size_t n = 0;

    if (port_fd < 0 || max < VHUB_POLLFDS)
        return 0;
    slots[n] = SLOT_PORT;
    fds[n++] = (struct pollfd){.fd = port_fd, .events = (short)(POLLIN |
                                                                (port_queued() ? POLLOUT : 0))};
    if (listen_fd >= 0 && free_slot()) {
        slots[n] = SLOT_LISTEN;
        fds[n++] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
    }
    bool room = port_queued() < VHUB_PORT_QUEUE / 2;
    for (size_t i = 0; i < VHUB_MAX_CONNECTIONS; i++) {
        guest_conn_t *c = &conns[i];
        if (!c->used || c->fd < 0)
            continue;
        /* Only fds with events to wait for: a closed program's POLLHUP
         * would otherwise spin the loop while we wait for credit. */
        bool readable = room && c->credit > 0 && !c->got_close && !c->sent_close;
        short events = (short)((readable ? POLLIN : 0) |
                               (c->pending_len ? POLLOUT : 0));
        if (events == 0)
            continue;
        slots[n] = (int)i;
        fds[n++] = (struct pollfd){.fd = c->fd, .events = events};
    }
    return n;
}

void vhub_poll_handle(const struct pollfd *fds, size_t count)
{
    for (size_t i = 0; i < count && port_fd >= 0; i++) {
        short revents = fds[i].revents;
        if (revents == 0)
            continue;
        if (slots[i] == SLOT_PORT) {
            if (revents & POLLOUT)
                port_flush();
            if (port_fd >= 0 && (revents & (POLLIN | POLLHUP | POLLERR)))
                read_port();
        } else if (slots[i] == SLOT_LISTEN) {
            if (listen_fd >= 0)
                accept_client();
        } else {
            guest_conn_t *c = &conns[slots[i]];
            if (!c->used || c->fd != fds[i].fd)
                continue; /* closed earlier in this pass */
            if (revents & POLLOUT)
                write_client(c);
            if (c->used && c->fd >= 0 && (revents & (POLLIN | POLLHUP | POLLERR)) &&
                !c->got_close && !c->sent_close && c->credit > 0)
                read_client(c);
        }
    }
    port_flush();
}
