/* The host end of the V-Hub port (vhub_carrier) between a guest that
 * speaks the carrier and a hub on a Unix socket, all in this process.
 *
 * Everything here is a socket pair or a Unix connection, so bytes written
 * are readable at once and a poll with no timeout says exactly what can
 * move: "nothing can" is a fact, not a guess, and a relay that stops is
 * caught without a clock. */
#include "unit.h"

#include "blin.h"
#include "vhub_carrier.h"
#include "vhub_filter.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define RELAY_BYTES   (8u << 20)
#define FRAME_PAYLOAD (32u << 10)
#define CONN_ID       7u

/* The guest's end of the port: its BLIN stream, sent under the carrier's
 * credit, and the frames the host sends back. */
typedef struct guest {
    int fd;
    blin_decoder_t decoder;
    blink_buf_t out; /* carrier frames not yet written */
    size_t out_off;
    size_t stream_sent; /* bytes of the BLIN stream put into Data frames */
    uint32_t credit;
    bool sent_close, got_close;
} guest_t;

/* The program's BLIN stream: StreamData frames, payload bytes numbered. */
static uint8_t stream_byte(size_t at)
{
    size_t frame = BLIN_HEADER_SIZE + FRAME_PAYLOAD;
    size_t in = at % frame;
    if (in >= BLIN_HEADER_SIZE)
        return (uint8_t)(at * 31u + 7u);
    blin_header_t h = {.type = BLIN_STREAM_DATA, .length = FRAME_PAYLOAD, .request_id = 2};
    uint8_t head[BLIN_HEADER_SIZE];
    blin_header_encode(&h, head);
    return head[in];
}

static size_t stream_total(void)
{
    return RELAY_BYTES / FRAME_PAYLOAD * (BLIN_HEADER_SIZE + FRAME_PAYLOAD);
}

static void guest_queue(guest_t *g, uint8_t type, const void *payload, size_t len)
{
    CHECK(vhub_put_frame(&g->out, type, CONN_ID, payload, len) == 0);
}

/* Queues Data within the credit, then writes what the socket takes.
 * Returns whether anything moved. */
static bool guest_send(guest_t *g)
{
    uint8_t chunk[VHUB_DATA_MAX];
    bool moved = false;

    while (g->credit > 0 && g->stream_sent < stream_total() && g->out.len - g->out_off < 1 << 20) {
        size_t n = stream_total() - g->stream_sent;
        n = n < g->credit ? n : g->credit;
        n = n < sizeof(chunk) ? n : sizeof(chunk);
        for (size_t i = 0; i < n; i++)
            chunk[i] = stream_byte(g->stream_sent + i);
        guest_queue(g, BLIN_VHUB_DATA, chunk, n);
        g->stream_sent += n;
        g->credit -= (uint32_t)n;
    }
    if (g->stream_sent == stream_total() && !g->sent_close) {
        guest_queue(g, BLIN_VHUB_CLOSE, NULL, 0);
        g->sent_close = true;
    }
    while (g->out_off < g->out.len) {
        ssize_t w = send(g->fd, g->out.data + g->out_off, g->out.len - g->out_off,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w <= 0)
            break;
        g->out_off += (size_t)w;
        moved = true;
    }
    if (g->out_off == g->out.len)
        g->out.len = g->out_off = 0;
    return moved;
}

/* Reads the host's frames: Acks give credit, Close ends the connection. */
static bool guest_receive(guest_t *g)
{
    uint8_t chunk[4096];
    bool moved = false;
    ssize_t n;

    while ((n = recv(g->fd, chunk, sizeof(chunk), MSG_DONTWAIT)) > 0) {
        moved = true;
        for (size_t used = 0; used < (size_t)n;) {
            bool ready = false;
            long taken = blin_decoder_feed(&g->decoder, chunk + used, (size_t)n - used, &ready);
            CHECK(taken > 0);
            if (taken <= 0)
                return false;
            used += (size_t)taken;
            if (!ready)
                continue;
            const blin_header_t *h = &g->decoder.header;
            CHECK(h->request_id == CONN_ID);
            if (h->type == BLIN_VHUB_ACK) {
                blin_cursor_t cur;
                blin_cursor_init(&cur, g->decoder.payload, h->length);
                g->credit += blin_get_u32(&cur);
                CHECK(!cur.failed && g->credit <= VHUB_WINDOW);
            } else {
                CHECK(h->type == BLIN_VHUB_CLOSE);
                g->got_close = true;
            }
        }
    }
    return moved;
}

static int listen_hub(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    memcpy(addr.sun_path, path, strlen(path) + 1);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 4) < 0)
        return -1;
    return fd;
}

/* One round of the owner's loop, as blink_vm_pump runs it but without
 * waiting. Returns whether any of the carrier's fds was ready. */
static bool pump(blink_vhub_t *v)
{
    struct pollfd pfds[BLINK_VHUB_POLLFDS];
    int n = blink_vhub_fill_pollfds(v, pfds);

    int rc = poll(pfds, (nfds_t)n, 0);
    if (rc > 0)
        blink_vhub_dispatch(v, pfds, n);
    return rc > 0;
}

/* A hub that reads only when nothing else can move, and then everything
 * its socket holds: the carrier's queue towards it fills, then empties at
 * once, over and over. A carrier that forgets the guest bytes it held back
 * meanwhile, with no fd left to wake it, stops the relay here. */
static void test_relay_through_a_hub_that_reads_in_bursts(void)
{
    char dir[] = "/tmp/blink-unit-XXXXXX";
    char path[64];
    blink_vhub_t *v = NULL;
    blink_error_t err;
    unsigned cid;
    guest_t g = {.fd = -1, .credit = VHUB_WINDOW};
    uint8_t *got = malloc(stream_total());
    size_t got_len = 0, bursts = 0;
    bool hub_eof = false, stalled = false;
    int hub = -1;

    CHECK(got != NULL && mkdtemp(dir) != NULL);
    snprintf(path, sizeof(path), "%s/hub.sock", dir);
    int listener = listen_hub(path);
    CHECK(listener >= 0);
    blink_vhub_config_t config = {.hub_path = path, .kind = "run", .name = "r1"};
    CHECK(blink_vhub_new(&config, &v, &g.fd, &cid, &err) == 0);
    blin_decoder_init(&g.decoder, VHUB_DATA_MAX);

    /* Open: the carrier dials the hub at once. */
    guest_queue(&g, BLIN_VHUB_OPEN, NULL, 0);
    guest_send(&g);
    pump(v);
    hub = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    CHECK(hub >= 0 && blink_vhub_connections(v) == 1);

    while (got != NULL && !(hub_eof && g.got_close)) {
        bool moved = guest_send(&g);
        moved |= pump(v);
        moved |= guest_receive(&g);
        if (moved)
            continue;
        ssize_t n = 0;
        uint8_t extra;
        size_t before = got_len;
        while (hub >= 0 && got_len < stream_total() &&
               (n = recv(hub, got + got_len, stream_total() - got_len, MSG_DONTWAIT)) > 0)
            got_len += (size_t)n;
        if (hub >= 0 && got_len == stream_total() && recv(hub, &extra, 1, MSG_DONTWAIT) == 0) {
            hub_eof = true; /* the guest's Close reached the hub: it hangs up */
            close(hub);
            hub = -1;
            continue;
        }
        if (got_len == before) {
            stalled = true; /* nothing can move: the relay stopped */
            break;
        }
        bursts++;
    }
    CHECK(!stalled);
    CHECK(got_len == stream_total() && hub_eof && g.got_close);
    CHECK(bursts > 1); /* the hub's side did fill up and hold the guest back */
    bool same = got != NULL;
    for (size_t i = 0; same && i < got_len; i++)
        same = got[i] == stream_byte(i);
    CHECK(same);
    CHECK(blink_vhub_connections(v) == 0);
    if (stalled)
        fprintf(stderr, "relay stopped after %zu of %zu bytes\n", got_len, stream_total());

    blink_vhub_free(v);
    blin_decoder_free(&g.decoder);
    blink_buf_free(&g.out);
    free(got);
    if (hub >= 0)
        close(hub);
    close(listener);
    close(g.fd);
    unlink(path);
    rmdir(dir);
}

void unit_run(void)
{
    test_relay_through_a_hub_that_reads_in_bursts();
}
