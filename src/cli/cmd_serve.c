/* blink-cli serve --socket PATH [--handler CMD] [--max-payload BYTES]
 *
 * The host side of the V-Hub (docs/vhub.md): a Unix socket server speaking
 * BLIN frames. It answers Handshake and Heartbeat, relays Stdout, Stderr and
 * StreamData as one JSON line per event on stdout, and answers RpcRequest
 * from built-in methods (ping, time) or from an operator's handler program,
 * which gets the request JSON on stdin and writes the response JSON on
 * stdout. A peer that breaks the framing gets an Error and is disconnected;
 * the others go on. SIGINT or SIGTERM stops it and removes the socket. */
#include "cli.h"

#include "blin.h"
#include "caps.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HUB_MAX_PEERS          256
#define HUB_HANDLER_OUTPUT_MAX (1u << 20)
#define HUB_HANDLER_TIMEOUT_MS 30000
/* Handlers one sandbox may keep busy at once, so that one cannot take all
 * HUB_MAX_PEERS slots from the others. */
#define HUB_HANDLERS_PER_OWNER 64
#define HUB_SEND_QUEUE_MAX     (4u << 20)

typedef struct peer {
    int fd;
    unsigned id;
    blin_decoder_t decoder;
    char *out; /* frames not yet written */
    size_t out_len, out_cap;
    char label[128]; /* session or run named in the handshake */
    const char *label_key; /* "session" or "run" */
    bool closing;    /* close once `out` is written */
} peer_t;

/* A handler program answering one RpcRequest. */
typedef struct pending_rpc {
    pid_t pid;
    int out_fd;
    unsigned peer_id;
    uint64_t request_id;
    char *output;
    size_t output_len;
    uint64_t deadline_ms;
    char owner[136]; /* "session NAME", "run ID" or "" (the peer's handshake) */
} pending_rpc_t;

static volatile sig_atomic_t stop_requested;

static void on_stop(int signo)
{
    (void)signo;
    stop_requested = 1;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void emit(const char *event, const peer_t *p, uint64_t request_id, json_t *extra)
{
    json_t *line = extra ? extra : json_object();
    json_object_set_new(line, "event", json_string(event));
    json_object_set_new(line, "connection", json_integer(p->id));
    json_object_set_new(line, "request_id", json_integer((json_int_t)request_id));
    if (p->label[0])
        json_object_set_new(line, p->label_key, json_string(p->label));
    cli_print_event(line);
}

static void queue_frame(peer_t *p, uint8_t type, uint64_t id, const void *payload, size_t len)
{
    if (p->closing && type != BLIN_ERROR)
        return;
    if (p->out_len + BLIN_HEADER_SIZE + len > HUB_SEND_QUEUE_MAX) {
        p->closing = true; /* a peer that reads nothing is dropped */
        p->out_len = 0;
        return;
    }
    if (p->out_len + BLIN_HEADER_SIZE + len > p->out_cap) {
        size_t cap = p->out_cap ? p->out_cap : 4096;
        while (cap < p->out_len + BLIN_HEADER_SIZE + len)
            cap *= 2;
        char *grown = realloc(p->out, cap);
        if (grown == NULL) {
            p->closing = true;
            return;
        }
        p->out = grown;
        p->out_cap = cap;
    }
    blin_header_t h = {.type = type, .length = (uint32_t)len, .request_id = id};
    blin_header_encode(&h, (uint8_t *)p->out + p->out_len);
    if (len)
        memcpy(p->out + p->out_len + BLIN_HEADER_SIZE, payload, len);
    p->out_len += BLIN_HEADER_SIZE + len;
}

static void queue_json(peer_t *p, uint8_t type, uint64_t id, json_t *value)
{
    char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    if (text)
        queue_frame(p, type, id, text, strlen(text));
    free(text);
    json_decref(value);
}

static void protocol_error(peer_t *p, uint64_t id, const char *message)
{
    queue_json(p, BLIN_ERROR, id, json_pack("{s:s}", "error", message));
    emit("protocol_error", p, id, json_pack("{s:s}", "error", message));
    p->closing = true;
}

/* ---- RPC ---- */

static json_t *builtin_method(const char *method, json_t *params)
{
    (void)params;
    if (strcmp(method, "ping") == 0)
        return json_string("pong");
    if (strcmp(method, "time") == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return json_pack("{s:I}", "unix_ms", (json_int_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    }
    return NULL;
}

/* Starts the handler with the request on stdin (a memfd, so a large request
 * never blocks us) and its stdout on a pipe we poll. */
/* BLINK_VHUB_HANDLER_TIMEOUT (seconds, 1-3600) overrides the default. */
static uint64_t handler_timeout_ms(void)
{
    const char *env = getenv("BLINK_VHUB_HANDLER_TIMEOUT");
    unsigned long long seconds;
    if (env && cli_parse_number(env, 1, 3600, &seconds))
        return seconds * 1000;
    return HUB_HANDLER_TIMEOUT_MS;
}

static int start_handler(const char *handler, const char *request, size_t len, pending_rpc_t *rpc)
{
    int in = memfd_create("blink-vhub-request", MFD_CLOEXEC);
    int out[2];
    if (in < 0)
        return -1;
    if (write(in, request, len) != (ssize_t)len || lseek(in, 0, SEEK_SET) != 0 ||
        pipe2(out, O_CLOEXEC) < 0) {
        close(in);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(in);
        close(out[0]);
        close(out[1]);
        return -1;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (dup2(in, 0) < 0 || dup2(out[1], 1) < 0 || (devnull >= 0 && dup2(devnull, 2) < 0))
            _exit(127);
        signal(SIGPIPE, SIG_DFL);
        setpgid(0, 0); /* a group of its own, so a timeout ends its children too */
        execl("/bin/sh", "sh", "-c", handler, (char *)NULL);
        _exit(127);
    }
    close(in);
    close(out[1]);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    rpc->pid = pid;
    rpc->out_fd = out[0];
    rpc->deadline_ms = now_ms() + handler_timeout_ms();
    return 0;
}

/* Whether the sandbox the peer belongs to has its share of handlers busy. */
static bool owner_busy(const peer_t *p, const pending_rpc_t *rpcs, size_t rpc_count)
{
    char owner[sizeof(rpcs->owner)];
    snprintf(owner, sizeof(owner), "%s %s", p->label[0] ? p->label_key : "", p->label);
    size_t busy = 0;
    for (size_t i = 0; i < rpc_count; i++)
        busy += strcmp(rpcs[i].owner, owner) == 0;
    return busy >= HUB_HANDLERS_PER_OWNER;
}

static void rpc_request(peer_t *p, uint64_t id, const uint8_t *payload, uint32_t len,
                        const char *handler, pending_rpc_t *rpcs, size_t *rpc_count)
{
    json_error_t jerr;
    json_t *request = json_loadb((const char *)payload, len, 0, &jerr);
    const char *method = json_string_value(json_object_get(request, "method"));
    if (method == NULL) {
        queue_json(p, BLIN_RPC_ERROR, id, json_pack("{s:s}", "error", "malformed request"));
        json_decref(request);
        return;
    }
    emit("rpc", p, id, json_pack("{s:s}", "method", method));

    json_t *result = builtin_method(method, json_object_get(request, "params"));
    if (result) {
        queue_json(p, BLIN_RPC_RESPONSE, id, json_pack("{s:o}", "result", result));
    } else if (handler == NULL) {
        queue_json(p, BLIN_RPC_ERROR, id,
                   json_pack("{s:s, s:s}", "error", "unknown method", "method", method));
    } else if (*rpc_count == HUB_MAX_PEERS || owner_busy(p, rpcs, *rpc_count) ||
               start_handler(handler, (const char *)payload, len, &rpcs[*rpc_count]) < 0) {
        queue_json(p, BLIN_RPC_ERROR, id, json_pack("{s:s}", "error", "handler unavailable"));
    } else {
        snprintf(rpcs[*rpc_count].owner, sizeof(rpcs[*rpc_count].owner), "%s %s",
                 p->label[0] ? p->label_key : "", p->label);
        rpcs[*rpc_count].peer_id = p->id;
        rpcs[*rpc_count].request_id = id;
        (*rpc_count)++;
    }
    json_decref(request);
}

/* ---- frames ---- */

static void on_frame(peer_t *p, const blin_header_t *h, const uint8_t *payload, const char *handler,
                     pending_rpc_t *rpcs, size_t *rpc_count)
{
    switch (h->type) {
    case BLIN_HANDSHAKE: {
        json_t *hello = json_loadb((const char *)payload, h->length, 0, NULL);
        const char *who = json_string_value(json_object_get(hello, "session"));
        p->label_key = "session";
        if (who == NULL) {
            who = json_string_value(json_object_get(hello, "run"));
            p->label_key = "run";
        }
        if (who)
            snprintf(p->label, sizeof(p->label), "%s", who);
        json_decref(hello);
        json_t *reply = json_pack("{s:s}", "status", "blink-vhub-ready");
        if (p->label[0])
            json_object_set_new(reply, p->label_key, json_string(p->label));
        queue_json(p, BLIN_HANDSHAKE, h->request_id, reply);
        emit("handshake", p, h->request_id, NULL);
        break;
    }
    case BLIN_HEARTBEAT:
        queue_frame(p, BLIN_HEARTBEAT, h->request_id, payload, h->length);
        break;
    case BLIN_STDOUT:
    case BLIN_STDERR:
    case BLIN_STREAM_DATA: {
        const char *event = h->type == BLIN_STDOUT   ? "stdout"
                            : h->type == BLIN_STDERR ? "stderr"
                                                     : "stream_data";
        size_t clean_len = 0;
        char *clean = blink_utf8_sanitize((const char *)payload, h->length, &clean_len);
        emit(event, p, h->request_id,
             json_pack("{s:s%}", "data", clean ? clean : "", clean ? clean_len : 0));
        free(clean);
        break;
    }
    case BLIN_RPC_REQUEST:
        rpc_request(p, h->request_id, payload, h->length, handler, rpcs, rpc_count);
        break;
    default:
        protocol_error(p, h->request_id, "message type not accepted by the hub");
    }
}

/* ---- connections ---- */

static void close_peer(peer_t **slot)
{
    peer_t *p = *slot;
    emit("disconnected", p, 0, NULL);
    close(p->fd);
    blin_decoder_free(&p->decoder);
    free(p->out);
    free(p);
    *slot = NULL;
}

static void read_peer(peer_t *p, const char *handler, pending_rpc_t *rpcs, size_t *rpc_count)
{
    uint8_t chunk[65536];
    ssize_t n = recv(p->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        p->closing = true;
        p->out_len = 0;
        return;
    }
    for (size_t off = 0; off < (size_t)n && !p->closing;) {
        bool ready = false;
        long used = blin_decoder_feed(&p->decoder, chunk + off, (size_t)n - off, &ready);
        if (used < 0) {
            protocol_error(p, 0, blin_decode_strerror((blin_decode_status_t)used));
            return;
        }
        off += (size_t)used;
        if (ready)
            on_frame(p, &p->decoder.header, p->decoder.payload, handler, rpcs, rpc_count);
    }
}

static bool write_peer(peer_t *p)
{
    while (p->out_len > 0) {
        ssize_t n = send(p->fd, p->out, p->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return true;
        if (n < 0)
            return false;
        memmove(p->out, p->out + n, p->out_len - (size_t)n);
        p->out_len -= (size_t)n;
    }
    return !p->closing;
}

/* Collects a handler's output; answers its peer when the handler is done. */
static bool finish_rpc(pending_rpc_t *rpc, peer_t **peers, bool timed_out)
{
    char chunk[8192];
    ssize_t n;
    while (!timed_out && (n = read(rpc->out_fd, chunk, sizeof(chunk))) > 0) {
        if (rpc->output_len + (size_t)n > HUB_HANDLER_OUTPUT_MAX) {
            timed_out = true;
            break;
        }
        char *grown = realloc(rpc->output, rpc->output_len + (size_t)n + 1);
        if (grown == NULL)
            break;
        rpc->output = grown;
        memcpy(rpc->output + rpc->output_len, chunk, (size_t)n);
        rpc->output_len += (size_t)n;
    }
    if (!timed_out && n < 0 && errno == EAGAIN)
        return false; /* more to come */

    int status = 0;
    if (timed_out)
        kill(-rpc->pid, SIGKILL);
    waitpid(rpc->pid, &status, 0);
    close(rpc->out_fd);

    peer_t *p = NULL;
    for (int i = 0; i < HUB_MAX_PEERS; i++)
        if (peers[i] && peers[i]->id == rpc->peer_id)
            p = peers[i];
    json_t *response =
        rpc->output && !timed_out ? json_loadb(rpc->output, rpc->output_len, 0, NULL) : NULL;
    if (p && response && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        queue_json(p, BLIN_RPC_RESPONSE, rpc->request_id, response);
    else if (p) {
        json_decref(response);
        queue_json(p, BLIN_RPC_ERROR, rpc->request_id,
                   json_pack("{s:s}", "error",
                             timed_out ? "handler timed out or wrote too much"
                                       : "handler failed or wrote no JSON"));
    } else {
        json_decref(response);
    }
    free(rpc->output);
    return true;
}

static int listen_socket(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "blink-cli serve: socket path `%s` is too long\n", path);
        return -1;
    }
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path); /* a previous hub's socket; anything else is not ours */
    mode_t old = umask(0177);
    int rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    umask(old);
    if (rc < 0 || listen(fd, 128) < 0) {
        fprintf(stderr, "blink-cli serve: listen on `%s`: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void serve_loop(int listen_fd, const char *handler, uint32_t max_payload)
{
    static peer_t *peers[HUB_MAX_PEERS];
    static pending_rpc_t rpcs[HUB_MAX_PEERS];
    size_t rpc_count = 0;
    unsigned next_id = 1;
    struct pollfd pfds[1 + 2 * HUB_MAX_PEERS];

    while (!stop_requested) {
        int n = 0;
        pfds[n++] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
        for (int i = 0; i < HUB_MAX_PEERS; i++)
            pfds[n++] = (struct pollfd){
                .fd = peers[i] ? peers[i]->fd : -1,
                .events = (short)(peers[i] ? POLLIN | (peers[i]->out_len ? POLLOUT : 0) : 0)};
        for (size_t i = 0; i < rpc_count; i++)
            pfds[n++] = (struct pollfd){.fd = rpcs[i].out_fd, .events = POLLIN};

        if (poll(pfds, (nfds_t)n, 500) < 0 && errno != EINTR)
            break;

        if (pfds[0].revents & POLLIN) {
            int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            int slot = -1;
            for (int i = 0; i < HUB_MAX_PEERS && fd >= 0 && slot < 0; i++)
                if (peers[i] == NULL)
                    slot = i;
            peer_t *p = slot >= 0 ? calloc(1, sizeof(*p)) : NULL;
            if (p == NULL) {
                if (fd >= 0)
                    close(fd);
            } else {
                p->fd = fd;
                p->id = next_id++;
                blin_decoder_init(&p->decoder, max_payload);
                peers[slot] = p;
                emit("connected", p, 0, NULL);
            }
        }
        for (int i = 0; i < HUB_MAX_PEERS; i++) {
            peer_t *p = peers[i];
            short revents = pfds[1 + i].revents;
            if (p == NULL || p->fd != pfds[1 + i].fd)
                continue;
            if (revents & (POLLIN | POLLHUP | POLLERR))
                read_peer(p, handler, rpcs, &rpc_count);
            if (!write_peer(p) || (p->closing && p->out_len == 0))
                close_peer(&peers[i]);
        }
        uint64_t now = now_ms();
        for (size_t i = 0; i < rpc_count;) {
            bool done = finish_rpc(&rpcs[i], peers, now >= rpcs[i].deadline_ms);
            if (done) {
                rpcs[i] = rpcs[--rpc_count];
                memset(&rpcs[rpc_count], 0, sizeof(rpcs[rpc_count]));
            } else {
                i++;
            }
        }
        /* Answers queued by finished handlers go out on the next round. */
        for (int i = 0; i < HUB_MAX_PEERS; i++)
            if (peers[i] && peers[i]->out_len && !write_peer(peers[i]))
                close_peer(&peers[i]);
    }

    for (size_t i = 0; i < rpc_count; i++)
        finish_rpc(&rpcs[i], peers, true);
    for (int i = 0; i < HUB_MAX_PEERS; i++)
        if (peers[i])
            close_peer(&peers[i]);
}

int cmd_serve(int argc, char **argv)
{
    static const struct option options[] = {
        {"socket", required_argument, NULL, 's'},
        {"handler", required_argument, NULL, 'h'},
        {"max-payload", required_argument, NULL, 'm'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL, *handler = NULL;
    uint32_t max_payload = BLINK_CAP_BLIN_PAYLOAD;
    unsigned long long n;
    int opt;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == 's') {
            path = optarg;
        } else if (opt == 'h') {
            handler = optarg;
        } else if (opt == 'm' && cli_parse_number(optarg, 64, BLINK_CAP_BLIN_PAYLOAD, &n)) {
            max_payload = (uint32_t)n;
        } else {
            return cli_usage_error("serve", "unknown or bad option `%s`", argv[optind - 1]);
        }
    }
    if (path == NULL || optind != argc)
        return cli_usage_error("serve", "use: serve --socket PATH [--handler CMD]");

    int fd = listen_socket(path);
    if (fd < 0) {
        blink_error_t err = {.code = BLINK_E_IO};
        snprintf(err.message, sizeof(err.message), "listen on `%s`", path);
        return cli_fail(&err);
    }
    struct sigaction stop = {.sa_handler = on_stop};
    sigaction(SIGINT, &stop, NULL);
    sigaction(SIGTERM, &stop, NULL);
    cli_print_event(json_pack("{s:s, s:s, s:i}", "event", "vhub_listening", "socket", path,
                              "max_payload", (int)max_payload));

    serve_loop(fd, handler, max_payload);
    close(fd);
    unlink(path);
    cli_print_event(json_pack("{s:s, s:s}", "event", "vhub_stopped", "socket", path));
    return 0;
}
