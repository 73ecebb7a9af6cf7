/* The host end of the V-Hub port; see vhub_carrier.h and docs/vhub.md.
 *
 * Memory per connection is bounded by the credit scheme: the guest sends at
 * most VHUB_WINDOW bytes we have not acknowledged, and we acknowledge bytes
 * only once the filter took them, which it does only while the queue to the
 * hub is under a window. Towards the guest we send only within the credit
 * the guest gave us, and read the hub only then, so a hub that talks faster
 * than a guest program listens is held back by its own socket. */
#include "vhub_carrier.h"

#include "blin.h"
#include "vhub_filter.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

/* A byte queue: appended at the end, consumed from `off`. */
typedef struct queue {
    blink_buf_t buf;
    size_t off;
} queue_t;

static size_t queue_len(const queue_t *q)
{
    return q->buf.len - q->off;
}

static const uint8_t *queue_data(const queue_t *q)
{
    return (const uint8_t *)q->buf.data + q->off;
}

static void queue_consume(queue_t *q, size_t n)
{
    q->off += n;
    if (q->off == q->buf.len)
        q->buf.len = q->off = 0;
}

/* Moves the unconsumed bytes to the front so the buffer never grows past
 * what is really queued. */
static void queue_compact(queue_t *q)
{
    if (q->off == 0)
        return;
    memmove(q->buf.data, q->buf.data + q->off, queue_len(q));
    q->buf.len -= q->off;
    q->off = 0;
}

static void queue_free(queue_t *q)
{
    blink_buf_free(&q->buf);
    q->off = 0;
}

typedef struct vhub_conn {
    bool used;
    uint64_t id;      /* the carrier's request id; vsock connections get our own */
    int guest_fd;     /* a vsock connection's socket; -1 on the carrier */
    int hub_fd;       /* -1 without a hub or once it is gone */
    vhub_filter_t filter;
    queue_t from_guest; /* guest bytes the filter has not taken yet */
    queue_t to_hub;
    queue_t to_guest;   /* answers made here: errors, and everything without a hub */
    uint32_t credit;    /* bytes we may still send the guest */
    uint32_t unacked;   /* guest bytes taken since our last Ack */
    bool guest_done;    /* the guest sent Close (its program closed) */
    bool hub_done;      /* the hub closed its end */
    bool hub_write_shut;
    bool host_done;     /* we sent Close: nothing more from us */
} vhub_conn_t;

struct blink_vhub {
    int port_fd;
    blin_decoder_t decoder;
    queue_t port_out;
    char *hub_path;
    char *kind;
    char *name;
    int vsock_fd;
    unsigned vsock_cid;
    uint64_t next_vsock_id;
    vhub_conn_t conns[VHUB_MAX_CONNECTIONS];
    /* What each pollfd entry of the last fill was for: a connection index,
     * or PORT_SLOT / VSOCK_SLOT; `hub` says which of a connection's fds. */
    struct {
        int conn;
        bool hub;
    } slots[BLINK_VHUB_POLLFDS];
};

enum { PORT_SLOT = -1, VSOCK_SLOT = -2 };

/* ---- the port ---- */

static void port_send(blink_vhub_t *v, uint8_t type, uint64_t id, const void *payload, size_t len)
{
    if (v->port_fd < 0)
        return;
    queue_compact(&v->port_out);
    if (vhub_put_frame(&v->port_out.buf, type, id, payload, len) < 0)
        log_error("vhub", "queue %s for the guest: out of memory", blin_type_name(type));
}

static void port_close(blink_vhub_t *v, const char *why);

static void flush_port(blink_vhub_t *v)
{
    while (v->port_fd >= 0 && queue_len(&v->port_out) > 0) {
        ssize_t n = send(v->port_fd, queue_data(&v->port_out), queue_len(&v->port_out),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n < 0) {
            port_close(v, "write failed");
            return;
        }
        queue_consume(&v->port_out, (size_t)n);
    }
}

/* ---- connections ---- */

static vhub_conn_t *find_conn(blink_vhub_t *v, uint64_t id, bool vsock)
{
    for (int i = 0; i < VHUB_MAX_CONNECTIONS; i++) {
        vhub_conn_t *c = &v->conns[i];
        if (c->used && c->id == id && (c->guest_fd >= 0) == vsock)
            return c;
    }
    return NULL;
}

static vhub_conn_t *free_slot(blink_vhub_t *v)
{
    for (int i = 0; i < VHUB_MAX_CONNECTIONS; i++)
        if (!v->conns[i].used)
            return &v->conns[i];
    return NULL;
}

static int connect_hub(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path))
        return -1;
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    /* A Unix connect completes at once or fails (EAGAIN: backlog full). */
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static void release(vhub_conn_t *c)
{
    if (c->guest_fd >= 0)
        close(c->guest_fd);
    if (c->hub_fd >= 0)
        close(c->hub_fd);
    vhub_filter_free(&c->filter);
    queue_free(&c->from_guest);
    queue_free(&c->to_hub);
    queue_free(&c->to_guest);
    memset(c, 0, sizeof(*c));
    c->guest_fd = c->hub_fd = -1;
}

static int open_conn(blink_vhub_t *v, vhub_conn_t *c, uint64_t id, int guest_fd)
{
    const char *why_local = "no hub";
    int hub_fd = -1;
    if (v->hub_path) {
        hub_fd = connect_hub(v->hub_path);
        if (hub_fd < 0) {
            log_warn("vhub", "connect to hub `%s`: %s", v->hub_path, strerror(errno));
            why_local = "hub unreachable";
        }
    }
    memset(c, 0, sizeof(*c));
    c->guest_fd = guest_fd;
    c->hub_fd = hub_fd;
    if (vhub_filter_init(&c->filter, hub_fd < 0, why_local, v->kind, v->name) < 0) {
        release(c);
        return -1;
    }
    c->used = true;
    c->id = id;
    c->credit = VHUB_WINDOW;
    log_debug("vhub", "guest connection %llu open (%s)", (unsigned long long)id,
              hub_fd >= 0 ? "to the hub" : why_local);
    return 0;
}

/* We are done with the connection: the guest is told (Close), the hub's
 * connection closed. The slot stays until the guest's own Close. */
static void host_close(blink_vhub_t *v, vhub_conn_t *c)
{
    if (c->host_done)
        return;
    c->host_done = true;
    if (c->hub_fd >= 0)
        close(c->hub_fd);
    c->hub_fd = -1;
    queue_free(&c->from_guest);
    queue_free(&c->to_hub);
    queue_free(&c->to_guest);
    if (c->guest_fd < 0)
        port_send(v, BLIN_VHUB_CLOSE, c->id, NULL, 0);
    if (c->guest_fd >= 0 || c->guest_done)
        release(c);
}

/* Sends answers made here to the guest, within the credit it gave us. */
static void flush_to_guest(blink_vhub_t *v, vhub_conn_t *c)
{
    while (queue_len(&c->to_guest) > 0) {
        size_t n = queue_len(&c->to_guest);
        if (c->guest_fd >= 0) {
            ssize_t w = send(c->guest_fd, queue_data(&c->to_guest), n,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && errno == EAGAIN)
                return;
            if (w < 0) {
                c->guest_done = true;
                queue_free(&c->to_guest);
                return;
            }
            queue_consume(&c->to_guest, (size_t)w);
            continue;
        }
        if (c->credit == 0 || queue_len(&v->port_out) >= VHUB_PORT_QUEUE)
            return;
        if (n > c->credit)
            n = c->credit;
        if (n > VHUB_DATA_MAX)
            n = VHUB_DATA_MAX;
        port_send(v, BLIN_VHUB_DATA, c->id, queue_data(&c->to_guest), n);
        queue_consume(&c->to_guest, n);
        c->credit -= (uint32_t)n;
    }
}

static void flush_to_hub(vhub_conn_t *c)
{
    while (c->hub_fd >= 0 && queue_len(&c->to_hub) > 0) {
        ssize_t n = send(c->hub_fd, queue_data(&c->to_hub), queue_len(&c->to_hub),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n < 0) {
            c->hub_done = true; /* the hub dropped us */
            queue_free(&c->to_hub);
            return;
        }
        queue_consume(&c->to_hub, (size_t)n);
    }
}

/* Runs the guest's bytes through the filter while the hub keeps up. */
static void filter_input(vhub_conn_t *c)
{
    while (queue_len(&c->from_guest) > 0 && !c->filter.failed &&
           queue_len(&c->to_hub) < VHUB_WINDOW && queue_len(&c->to_guest) < VHUB_LOCAL_QUEUE) {
        size_t n = queue_len(&c->from_guest);
        if (n > VHUB_WINDOW - queue_len(&c->to_hub))
            n = VHUB_WINDOW - queue_len(&c->to_hub);
        queue_compact(&c->to_hub);
        queue_compact(&c->to_guest);
        long used = vhub_filter_feed(&c->filter, queue_data(&c->from_guest), n, &c->to_hub.buf,
                                     &c->to_guest.buf);
        if (used < 0) {
            log_error("vhub", "guest connection %llu: out of memory", (unsigned long long)c->id);
            c->filter.failed = true;
            break;
        }
        queue_consume(&c->from_guest, (size_t)used);
        c->unacked += (uint32_t)used;
    }
    if (c->filter.failed) {
        /* Nothing more goes to the hub; the Error in to_guest goes out. */
        queue_free(&c->from_guest);
        queue_free(&c->to_hub);
        if (c->hub_fd >= 0)
            close(c->hub_fd);
        c->hub_fd = -1;
    }
}

/* Everything a connection can do without waiting, then whether it ends. */
static void step(blink_vhub_t *v, vhub_conn_t *c)
{
    if (c->host_done)
        return;
    /* Guest bytes held back while to_hub was full wait on no fd of ours:
     * the guest, out of credit, sends nothing until we Ack them, and the
     * hub's socket is polled for POLLOUT only while to_hub holds bytes. So
     * whatever the hub's socket takes, the filter runs again at once, until
     * either from_guest is empty or to_hub is left waiting on that socket. */
    for (;;) {
        filter_input(c);
        size_t queued = queue_len(&c->to_hub);
        flush_to_hub(c);
        if (queue_len(&c->to_hub) == queued || queue_len(&c->from_guest) == 0 ||
            c->filter.failed || c->hub_done)
            break;
    }
    if (c->guest_done && queue_len(&c->from_guest) == 0 && !c->filter.failed)
        vhub_filter_end(&c->filter, &c->to_guest.buf);
    if (c->guest_done && c->hub_fd >= 0 && !c->hub_write_shut && queue_len(&c->to_hub) == 0 &&
        queue_len(&c->from_guest) == 0) {
        shutdown(c->hub_fd, SHUT_WR); /* the hub sees the end and closes */
        c->hub_write_shut = true;
    }
    if (c->guest_fd < 0 && c->unacked >= VHUB_ACK_BATCH) {
        uint8_t n[4] = {(uint8_t)c->unacked, (uint8_t)(c->unacked >> 8),
                        (uint8_t)(c->unacked >> 16), (uint8_t)(c->unacked >> 24)};
        port_send(v, BLIN_VHUB_ACK, c->id, n, sizeof(n));
        c->unacked = 0;
    }
    flush_to_guest(v, c);

    bool answered = queue_len(&c->to_guest) == 0;
    bool local = c->filter.local && !c->filter.failed;
    if (queue_len(&c->to_guest) >= VHUB_LOCAL_QUEUE) {
        log_info("vhub", "guest connection %llu leaves its answers unread; closing it",
                 (unsigned long long)c->id);
        host_close(v, c);
    } else if (answered && (c->filter.failed || c->hub_done ||
                            (local && c->guest_done && queue_len(&c->from_guest) == 0))) {
        host_close(v, c);
    } else if (c->guest_fd >= 0 && c->guest_done && c->hub_done) {
        host_close(v, c);
    }
}

/* Hub bytes go straight into Data frames, as much as the guest's credit
 * allows; the rest waits in the hub's socket. */
static void read_hub(blink_vhub_t *v, vhub_conn_t *c)
{
    uint8_t chunk[VHUB_DATA_MAX];
    size_t room = c->guest_fd >= 0 ? sizeof(chunk) : c->credit;
    if (room > sizeof(chunk))
        room = sizeof(chunk);
    if (room == 0 || queue_len(&c->to_guest) > 0)
        return;
    ssize_t n = recv(c->hub_fd, chunk, room, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        c->hub_done = true;
        return;
    }
    if (c->guest_fd >= 0) {
        if (blink_buf_append(&c->to_guest.buf, chunk, (size_t)n) < 0)
            c->hub_done = true;
        return;
    }
    port_send(v, BLIN_VHUB_DATA, c->id, chunk, (size_t)n);
    c->credit -= (uint32_t)n;
}

static bool hub_readable_now(const blink_vhub_t *v, const vhub_conn_t *c)
{
    if (c->hub_fd < 0 || c->hub_done || queue_len(&c->to_guest) > 0)
        return false;
    if (c->guest_fd >= 0)
        return true;
    return c->credit > 0 && v->port_fd >= 0 && queue_len(&v->port_out) < VHUB_PORT_QUEUE / 2;
}

/* ---- frames from the guest's side of the carrier ---- */

/* blink-guest speaks the carrier; a guest that breaks it loses the V-Hub
 * (every connection ends) but nothing else: the control port is another.
 * `why` NULL: the port closed in the normal course (the VM stops). */
static void port_close(blink_vhub_t *v, const char *why)
{
    if (v->port_fd < 0)
        return;
    if (why)
        log_warn("vhub", "[guest] carrier: %s; closing the v-hub port", why);
    close(v->port_fd);
    v->port_fd = -1;
    queue_free(&v->port_out);
    for (int i = 0; i < VHUB_MAX_CONNECTIONS; i++)
        if (v->conns[i].used && v->conns[i].guest_fd < 0)
            release(&v->conns[i]);
}

static void on_port_frame(blink_vhub_t *v, const blin_header_t *h, const uint8_t *payload)
{
    uint64_t id = h->request_id;
    vhub_conn_t *c = find_conn(v, id, false);

    switch (h->type) {
    case BLIN_VHUB_OPEN:
        if (id == 0 || h->length != 0 || c) {
            port_close(v, "bad open");
        } else if ((c = free_slot(v)) == NULL || open_conn(v, c, id, -1) < 0) {
            log_warn("vhub", "refusing a guest connection: %d open", VHUB_MAX_CONNECTIONS);
            port_send(v, BLIN_VHUB_CLOSE, id, NULL, 0);
        }
        break;
    case BLIN_VHUB_DATA:
        if (c == NULL) {
            port_send(v, BLIN_VHUB_CLOSE, id, NULL, 0); /* stale: from before a restore */
        } else if (c->host_done) {
            break; /* we closed it; the guest has not seen our Close yet */
        } else if (c->guest_done || h->length == 0 ||
                   h->length > VHUB_WINDOW - queue_len(&c->from_guest) - c->unacked) {
            port_close(v, "data beyond the window or after close");
        } else {
            queue_compact(&c->from_guest);
            if (blink_buf_append(&c->from_guest.buf, payload, h->length) < 0)
                host_close(v, c);
        }
        break;
    case BLIN_VHUB_CLOSE:
        if (c == NULL)
            break;
        c->guest_done = true;
        if (c->host_done)
            release(c);
        break;
    case BLIN_VHUB_ACK: {
        blin_cursor_t cur;
        blin_cursor_init(&cur, payload, h->length);
        uint32_t n = blin_get_u32(&cur);
        if (cur.failed || cur.pos != cur.len)
            port_close(v, "bad ack");
        else if (c)
            c->credit = n > VHUB_WINDOW - c->credit ? VHUB_WINDOW : c->credit + n;
        break;
    }
    default:
        port_close(v, "unexpected message type");
    }
}

static void read_port(blink_vhub_t *v)
{
    uint8_t chunk[65536];
    ssize_t n = recv(v->port_fd, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        port_close(v, n == 0 ? NULL : "read failed"); /* 0: the vm is going away */
        return;
    }
    for (size_t off = 0; off < (size_t)n && v->port_fd >= 0;) {
        bool ready = false;
        long used = blin_decoder_feed(&v->decoder, chunk + off, (size_t)n - off, &ready);
        if (used < 0) {
            port_close(v, blin_decode_strerror((blin_decode_status_t)used));
            return;
        }
        off += (size_t)used;
        if (ready)
            on_port_frame(v, &v->decoder.header, v->decoder.payload);
    }
}

/* ---- vsock ---- */

/* The vhost-vsock device needs /dev/vhost-vsock, and the host side needs
 * port 10000, which only one process on the host can listen on: a VM gets
 * a vsock device only when this process holds that port, so every guest
 * that has vsock is served. */
static int listen_vsock(blink_vhub_t *v)
{
    int dev = open("/dev/vhost-vsock", O_RDWR | O_CLOEXEC);
    if (dev < 0)
        return -1;
    close(dev);

    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK,
                               .svm_cid = VMADDR_CID_ANY,
                               .svm_port = BLINK_VHUB_VSOCK_PORT};
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 64) < 0) {
        log_info("vhub", "vsock port %u unavailable (%s); guests use the local socket",
                 BLINK_VHUB_VSOCK_PORT, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    v->vsock_fd = fd;
    /* CIDs 0-2 are reserved; the pid keeps ours apart from other VMs. */
    v->vsock_cid = 3 + ((unsigned)getpid() & 0x3fffffff);
    return 0;
}

static void accept_vsock(blink_vhub_t *v)
{
    struct sockaddr_vm peer;
    socklen_t len = sizeof(peer);
    int fd = accept4(v->vsock_fd, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0)
        return;
    vhub_conn_t *c = free_slot(v);
    if (peer.svm_cid != v->vsock_cid || c == NULL ||
        open_conn(v, c, ++v->next_vsock_id, fd) < 0) {
        close(fd); /* another VM's guest, or too many connections */
        return;
    }
}

static void read_vsock_guest(vhub_conn_t *c)
{
    uint8_t chunk[VHUB_DATA_MAX];
    size_t room = VHUB_WINDOW - queue_len(&c->from_guest);
    if (room > sizeof(chunk))
        room = sizeof(chunk);
    ssize_t n = recv(c->guest_fd, chunk, room, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        c->guest_done = true;
        return;
    }
    queue_compact(&c->from_guest);
    if (blink_buf_append(&c->from_guest.buf, chunk, (size_t)n) < 0)
        c->filter.failed = true;
}

/* ---- the owner's loop ---- */

int blink_vhub_fill_pollfds(blink_vhub_t *v, struct pollfd *pfds)
{
    int n = 0;

    if (v->port_fd >= 0) {
        short events = (short)((queue_len(&v->port_out) < VHUB_PORT_QUEUE ? POLLIN : 0) |
                               (queue_len(&v->port_out) ? POLLOUT : 0));
        v->slots[n].conn = PORT_SLOT;
        pfds[n++] = (struct pollfd){.fd = v->port_fd, .events = events};
    }
    if (v->vsock_fd >= 0 && free_slot(v)) {
        v->slots[n].conn = VSOCK_SLOT;
        pfds[n++] = (struct pollfd){.fd = v->vsock_fd, .events = POLLIN};
    }
    for (int i = 0; i < VHUB_MAX_CONNECTIONS; i++) {
        vhub_conn_t *c = &v->conns[i];
        if (!c->used || c->host_done)
            continue;
        /* An fd is only polled with events to wait for: a closed peer's
         * POLLHUP would otherwise wake the loop until we read. */
        short hub = (short)((hub_readable_now(v, c) ? POLLIN : 0) |
                            (queue_len(&c->to_hub) ? POLLOUT : 0));
        if (hub) {
            v->slots[n].conn = i;
            v->slots[n].hub = true;
            pfds[n++] = (struct pollfd){.fd = c->hub_fd, .events = hub};
        }
        if (c->guest_fd >= 0) {
            short guest = (short)((!c->guest_done && queue_len(&c->from_guest) < VHUB_WINDOW
                                       ? POLLIN
                                       : 0) |
                                  (queue_len(&c->to_guest) ? POLLOUT : 0));
            if (guest) {
                v->slots[n].conn = i;
                v->slots[n].hub = false;
                pfds[n++] = (struct pollfd){.fd = c->guest_fd, .events = guest};
            }
        }
    }
    return n;
}

void blink_vhub_dispatch(blink_vhub_t *v, const struct pollfd *pfds, int count)
{
    for (int i = 0; i < count; i++) {
        short revents = pfds[i].revents;
        if (revents == 0)
            continue;
        if (v->slots[i].conn == PORT_SLOT) {
            if (pfds[i].fd != v->port_fd)
                continue;
            if (revents & POLLOUT)
                flush_port(v);
            if (v->port_fd >= 0 && (revents & (POLLIN | POLLHUP | POLLERR)))
                read_port(v);
            continue;
        }
        if (v->slots[i].conn == VSOCK_SLOT) {
            accept_vsock(v);
            continue;
        }
        vhub_conn_t *c = &v->conns[v->slots[i].conn];
        bool hub = v->slots[i].hub;
        if (!c->used || c->host_done || pfds[i].fd != (hub ? c->hub_fd : c->guest_fd))
            continue; /* closed during this round */
        if (hub && (revents & (POLLIN | POLLHUP | POLLERR)) && hub_readable_now(v, c))
            read_hub(v, c);
        if (!hub && (revents & (POLLIN | POLLHUP | POLLERR)) && !c->guest_done)
            read_vsock_guest(c);
    }
    for (int i = 0; i < VHUB_MAX_CONNECTIONS; i++)
        if (v->conns[i].used)
            step(v, &v->conns[i]);
    flush_port(v);
}

int blink_vhub_new(const blink_vhub_config_t *config, blink_vhub_t **out, int *qemu_fd,
                   unsigned *vsock_cid, blink_error_t *err)
{
    int pair[2];
    blink_vhub_t *v = calloc(1, sizeof(*v));

    *out = NULL;
    *qemu_fd = -1;
    *vsock_cid = 0;
    if (v == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "allocate v-hub carrier");
    v->port_fd = v->vsock_fd = -1;
    for (int i = 0; i < VHUB_MAX_CONNECTIONS; i++)
        v->conns[i].guest_fd = v->conns[i].hub_fd = -1;
    blin_decoder_init(&v->decoder, VHUB_DATA_MAX);
    v->kind = strdup(config->kind ? config->kind : "run");
    v->name = strdup(config->name ? config->name : "");
    v->hub_path = config->hub_path ? strdup(config->hub_path) : NULL;
    if (v->kind == NULL || v->name == NULL || (config->hub_path && v->hub_path == NULL)) {
        blink_vhub_free(v);
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "allocate v-hub carrier");
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
        blink_vhub_free(v);
        return blink_fail(err, BLINK_E_IO, errno, "create v-hub port socket");
    }
    v->port_fd = pair[0];
    blink_set_nonblocking(v->port_fd);
    if (config->vsock && listen_vsock(v) == 0)
        *vsock_cid = v->vsock_cid;
    *qemu_fd = pair[1];
    *out = v;
    return 0;
}

void blink_vhub_reset(blink_vhub_t *v)
{
    for (int i = 0; i < VHUB_MAX_CONNECTIONS; i++)
        if (v->conns[i].used)
            release(&v->conns[i]);
}

int blink_vhub_connections(const blink_vhub_t *v)
{
    int n = 0;
    for (int i = 0; i < VHUB_MAX_CONNECTIONS; i++)
        n += v->conns[i].used && !v->conns[i].host_done;
    return n;
}

void blink_vhub_free(blink_vhub_t *v)
{
    if (v == NULL)
        return;
    blink_vhub_reset(v);
    if (v->port_fd >= 0)
        close(v->port_fd);
    if (v->vsock_fd >= 0)
        close(v->vsock_fd);
    queue_free(&v->port_out);
    blin_decoder_free(&v->decoder);
    free(v->hub_path);
    free(v->kind);
    free(v->name);
    free(v);
}
