/* GET /api/sessions/{name}/executions/{id}/attach[?after=SEQ]: a WebSocket
 * onto an execution held by the session's shim, in the BoxLite frames of
 * DESIGN §1. Each attach is one shim connection (blink_session_attach), so
 * any number of clients follow one execution, before or after a restart
 * of this server.
 *
 * Server -> client: text {"type":"attached", "execution_id", "next_seq",
 * "dropped"} first; binary [0x01|0x02, bytes...] per output chunk, the
 * n-th numbered next_seq + n - 1; text {"type":"exit", ...} and a close
 * when the process ends; text {"type":"error","message"} on failures.
 * Client -> server: binary = stdin; text {"type":"resize","rows","cols"},
 * {"type":"signal","signal"}, {"type":"stdin_eof"}. */
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

/* How long a close we started may wait for the client's close reply. */
#define CLOSE_WAIT_MS 5000

typedef struct attach {
    server_t *server;
    blink_execution_t *x;
    ws_conn_t ws;
    uint64_t id;
    bool exited;
} attach_t;

static void attach_free(void *p)
{
    attach_t *a = p;
    if (a == NULL)
        return;
    blink_execution_free(a->x);
    free(a);
}

static void send_error(attach_t *a, const char *message)
{
    ws_send_json(&a->ws, json_pack("{s:s, s:s}", "type", "error", "message", message));
}

/* Output of the execution (replayed, then live) -> one binary message. */
static void on_output(blink_stream_t stream, const char *data, size_t len, void *user)
{
    attach_t *a = user;
    cleanup_free uint8_t *frame = malloc(len + 1);
    if (frame == NULL) {
        send_error(a, "out of memory: output lost; reattach with ?after=");
        return;
    }
    frame[0] = stream == BLINK_STDOUT ? 0x01 : 0x02;
    memcpy(frame + 1, data, len);
    ws_send(&a->ws, false, frame, len + 1);
}

static const struct {
    const char *name;
    int number;
} signal_names[] = {
    {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM}, {"CONT", SIGCONT},
    {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}, {"WINCH", SIGWINCH},
};

/* A signal as a number or a name ("TERM", "SIGTERM"); 0 if neither. */
static int signal_number(json_t *value)
{
    if (json_is_integer(value)) {
        json_int_t n = json_integer_value(value);
        return n > 0 && n <= 64 ? (int)n : 0;
    }
    const char *name = json_string_value(value);
    if (name == NULL)
        return 0;
    if (strncmp(name, "SIG", 3) == 0)
        name += 3;
    for (size_t i = 0; i < sizeof(signal_names) / sizeof(signal_names[0]); i++)
        if (strcmp(signal_names[i].name, name) == 0)
            return signal_names[i].number;
    return 0;
}

static int control_message(attach_t *a, const uint8_t *data, size_t len, blink_error_t *err)
{
    json_t *m = json_loadb((const char *)data, len, 0, NULL);
    const char *type = json_string_value(json_object_get(m, "type"));
    int rc;
    if (type == NULL) {
        rc = blink_fail(err, BLINK_E_INVALID, 0, "a text message is a JSON object with `type`");
    } else if (strcmp(type, "resize") == 0) {
        json_t *rows = json_object_get(m, "rows"), *cols = json_object_get(m, "cols");
        rc = json_is_integer(rows) && json_is_integer(cols) &&
                     json_integer_value(rows) > 0 && json_integer_value(cols) > 0
                 ? blink_execution_resize(a->x, (unsigned)json_integer_value(rows),
                                          (unsigned)json_integer_value(cols), err)
                 : blink_fail(err, BLINK_E_INVALID, 0, "resize: give `rows` and `cols`");
    } else if (strcmp(type, "signal") == 0) {
        int signo = signal_number(json_object_get(m, "signal"));
        rc = signo ? blink_execution_kill(a->x, signo, err)
                   : blink_fail(err, BLINK_E_INVALID, 0, "signal: unknown `signal`");
    } else if (strcmp(type, "stdin_eof") == 0) {
        rc = blink_execution_write(a->x, NULL, 0, err);
    } else {
        rc = blink_fail(err, BLINK_E_INVALID, 0, "unknown message type `%.40s`", type);
    }
    json_decref(m);
    return rc;
}

static void on_client_message(ws_conn_t *ws, bool text, const uint8_t *data, size_t len,
                              void *user)
{
    (void)ws;
    attach_t *a = user;
    blink_error_t err = {0};
    if (a->exited)
        return; /* nothing left to feed or signal */
    int rc = text ? control_message(a, data, len, &err)
                  : len > 0 ? blink_execution_write(a->x, data, len, &err) : 0;
    if (rc < 0) {
        char message[1400];
        blink_error_format(&err, message, sizeof(message));
        send_error(a, message);
    }
}

static void send_exit(attach_t *a)
{
    json_t *exit = json_pack("{s:s, s:i}", "type", "exit", "exit_code",
                             blink_execution_exit_code(a->x));
    int signo = blink_execution_exit_signal(a->x);
    if (signo)
        json_object_set_new(exit, "signal", json_integer(signo));
    if (blink_execution_timed_out(a->x))
        json_object_set_new(exit, "timed_out", json_true());
    ws_send_json(&a->ws, exit);
}

/* Relays until the process ended and the client has its exit, the client
 * closed, or the server stops. */
static void attach_loop(attach_t *a)
{
    server_t *server = a->server;
    ws_send_json(&a->ws, json_pack("{s:s, s:I, s:I, s:I}", "type", "attached", "execution_id",
                                   (json_int_t)a->id, "next_seq",
                                   (json_int_t)blink_execution_next_seq(a->x), "dropped",
                                   (json_int_t)blink_execution_dropped(a->x)));
    bool closing = false, stopping = false;
    uint64_t close_deadline = 0;
    if (ws_io(&a->ws, 0) < 0)
        return;

    for (;;) {
        if (!closing && (a->exited || stopping)) {
            if (a->exited)
                send_exit(a);
            ws_close(&a->ws, a->exited ? 1000 : 1001,
                     a->exited ? "exited" : "server stopping; reattach with ?after=");
            closing = true;
            close_deadline = blink_now_ms() + CLOSE_WAIT_MS;
        }
        if (ws_done(&a->ws) || (closing && blink_now_ms() >= close_deadline))
            return;

        bool read_shim = !closing && ws_queued(&a->ws) < SERVER_CAP_WS_QUEUE;
        struct pollfd pfds[3] = {
            {.fd = a->ws.fd, .events = ws_poll_events(&a->ws)},
            {.fd = read_shim ? blink_execution_fd(a->x) : -1, .events = POLLIN},
            {.fd = server->stop_fd, .events = POLLIN},
        };
        if (poll(pfds, 3, closing ? 200 : 1000) < 0 && errno != EINTR)
            return;
        if (pfds[2].revents & POLLIN)
            stopping = true;

        if (pfds[1].revents) {
            blink_error_t err = {0};
            int rc = blink_execution_pump(a->x, 0, &err);
            if (rc == 1) {
                a->exited = true;
            } else if (rc < 0) {
                char message[1400];
                blink_error_format(&err, message, sizeof(message));
                send_error(a, message);
                ws_close(&a->ws, 1011, "lost the execution");
                closing = true;
                close_deadline = blink_now_ms() + CLOSE_WAIT_MS;
            }
        }
        if (ws_io(&a->ws, pfds[0].revents) < 0)
            return;
    }
}

/* MHD calls this on the connection's own thread (thread per connection),
 * after the 101 went out; blocking here is allowed in that mode. */
static void attach_upgraded(void *cls, struct MHD_Connection *connection, void *con_cls,
                            const char *extra_in, size_t extra_in_size, MHD_socket sock,
                            struct MHD_UpgradeResponseHandle *urh)
{
    (void)connection;
    attach_t *a = cls;
    request_t *req = con_cls;
    req->upgrade = NULL; /* ours from here */

    blink_error_t err = {0};
    if (ws_conn_init(&a->ws, sock, extra_in, extra_in_size, on_client_message, a, &err) == 0) {
        log_info("attach", "execution %llu: client attached", (unsigned long long)a->id);
        attach_loop(a);
        log_info("attach", "execution %llu: client detached", (unsigned long long)a->id);
    } else {
        log_error("attach", "%s", err.message);
    }
    ws_conn_free(&a->ws);
    attach_free(a);
    MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
}

static bool parse_u64(const char *text, uint64_t *out)
{
    size_t len = text ? strlen(text) : 0;
    if (len == 0 || len > 18 || strspn(text, "0123456789") != len)
        return false;
    *out = strtoull(text, NULL, 10);
    return true;
}

enum MHD_Result route_execution_attach(request_t *req, char **params)
{
    blink_error_t err = {0};
    uint64_t id = 0, after = 0;
    if (check_name("session", params[0], &err) < 0)
        return http_fail(req, &err);
    if (!parse_u64(params[1], &id) || id == 0)
        return http_error(req, MHD_HTTP_NOT_FOUND, "no execution `%s`", params[1]);
    const char *after_arg = http_query(req, "after");
    if (after_arg && !parse_u64(after_arg, &after))
        return http_error(req, MHD_HTTP_BAD_REQUEST, "`after` must be a sequence number");

    attach_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return MHD_NO;
    a->server = req->server;
    a->id = id;
    a->ws.fd = -1;
    blink_attach_options_t options = {
        .struct_size = sizeof(options),
        .after_seq = after,
        .on_output = on_output,
        .userdata = a,
    };
    if (blink_session_attach(req->server->blink, params[0], id, &options, &a->x, &err) < 0) {
        free(a);
        return http_fail(req, &err);
    }
    /* Already ended (its VM let it go): the client gets the exit frame. */
    a->exited = blink_execution_exited(a->x);
    req->upgrade = a;
    req->upgrade_free = attach_free;
    return ws_accept(req, attach_upgraded, a);
}
