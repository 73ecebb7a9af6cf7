/* Interactive executions in a session: a process with stdin, output
 * callbacks, terminal size and signals, driven by the caller's loop. */
#include "session.h"
#include "shim_client.h"

#include "caps.h"

#include <errno.h>
#include <poll.h>
#include <string.h>

struct blink_execution {
    session_ctx_t session;
    blink_session_row_t row;
    bool stop_when_done; /* a cold session booted for this execution */
    blink_shim_conn_t conn;
    blink_output_fn on_output;
    void *userdata;
    bool exited;
    int exit_code;
    int signal;
    bool timed_out;
    uint64_t id;       /* the shim's execution id (the catalog row), 0 if unknown */
    uint64_t next_seq; /* number of the next output chunk */
    uint64_t dropped;  /* chunks an attach asked for that were no longer kept */
};

static int check_spawn_options(const blink_spawn_options_t *o, blink_error_t *err)
{
    if (o == NULL || o->struct_size < sizeof(size_t) || o->struct_size > sizeof(*o))
        return blink_fail(err, BLINK_E_INVALID, 0, "spawn options: missing or bad struct_size");
    if (o->argc == 0 || o->argv == NULL || o->argv[0] == NULL || o->argv[0][0] == '\0')
        return blink_fail(err, BLINK_E_INVALID, 0, "spawn: no command");
    if (o->argc + o->env_count > BLINK_CAP_EXEC_STRINGS - 16)
        return blink_fail(err, BLINK_E_INVALID, 0, "spawn: too many arguments and variables");
    if (o->rows > 10000 || o->cols > 10000)
        return blink_fail(err, BLINK_E_INVALID, 0, "spawn: terminal size %ux%u", o->rows, o->cols);
    for (size_t i = 0; i < o->env_count; i++)
        if (o->env[i] == NULL || strchr(o->env[i], '=') == NULL || o->env[i][0] == '=')
            return blink_fail(err, BLINK_E_INVALID, 0, "environment entry %zu: use KEY=VALUE",
                              i + 1);
    return 0;
}

static int send_spawn(blink_execution_t *x, const blink_spawn_options_t *o, blink_error_t *err)
{
    static const char *const base_env[] = {
        /* /run/blink: blink-guest's V-Hub tool and socket (docs/vhub.md). */
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/blink/bin",
        "BLINK_VHUB_SOCKET=/run/blink/vhub.sock",
        "HOME=/root",
        "LANG=C.UTF-8",
        "BLINK=1",
    };
    const size_t base_count = sizeof(base_env) / sizeof(base_env[0]);
    bool has_term = false;
    for (size_t i = 0; i < o->env_count; i++)
        has_term |= strncmp(o->env[i], "TERM=", 5) == 0;
    bool add_term = o->tty && !has_term;

    uint8_t timeout[4] = {(uint8_t)o->timeout_sec, (uint8_t)(o->timeout_sec >> 8),
                          (uint8_t)(o->timeout_sec >> 16), (uint8_t)(o->timeout_sec >> 24)};
    if (blink_shim_send(&x->conn, BLIN_SHIM_EXEC_OPTIONS, EXEC_ID, timeout, 4, err) < 0)
        return -1;

    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_u32(&w, (o->tty ? 1u : 0u) | 2u); /* PTY if asked; stdin always a pipe */
    blin_put_u16(&w, (uint16_t)(o->rows ? o->rows : 24));
    blin_put_u16(&w, (uint16_t)(o->cols ? o->cols : 80));
    blin_put_string(&w, o->workdir ? o->workdir : "/root");
    blin_put_u32(&w, (uint32_t)o->argc);
    for (size_t i = 0; i < o->argc; i++)
        blin_put_string(&w, o->argv[i] ? o->argv[i] : "");
    blin_put_u32(&w, (uint32_t)(base_count + o->env_count + (add_term ? 1 : 0)));
    for (size_t i = 0; i < base_count; i++)
        blin_put_string(&w, base_env[i]);
    if (add_term)
        blin_put_string(&w, "TERM=xterm-256color");
    for (size_t i = 0; i < o->env_count; i++)
        blin_put_string(&w, o->env[i]);

    int rc = w.failed ? blink_fail(err, BLINK_E_INVALID, 0, "spawn: command too large")
                      : blink_shim_send(&x->conn, BLIN_CTL_EXEC, EXEC_ID, w.data, w.len, err);
    blin_writer_free(&w);
    return rc;
}

void blink_execution_free(blink_execution_t *x)
{
    if (x == NULL)
        return;
    blink_shim_disconnect(&x->conn);
    if (x->stop_when_done) {
        blink_error_t err;
        if (session_stop_vm(&x->session, &x->row, &err) < 0)
            log_warn("session", "stop session `%s`: %s", x->session.name, err.message);
    }
    session_ctx_close(&x->session);
    free(x);
}

int blink_session_spawn(blink_t *blink, const char *name, const blink_spawn_options_t *options,
                        blink_execution_t **execution, blink_error_t *err)
{
    *execution = NULL;
    if (check_spawn_options(options, err) < 0)
        return -1;

    blink_execution_t *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "spawn");
    x->conn.fd = -1;
    x->session.lock_fd = -1;
    x->on_output = options->on_output;
    x->userdata = options->userdata;

    if (session_ctx_open(blink, name, &x->session, err) < 0 ||
        session_ctx_lock(&x->session, err) < 0 ||
        blink_catalog_session_get(x->session.catalog, name, &x->row, err) < 0 ||
        session_ensure_running(&x->session, &x->row, err) < 0)
        goto fail;

    /* As for runs: a warm session lets others in; a cold one is ours until
     * the execution is freed, then its VM stops. */
    if (x->row.warm) {
        close(x->session.lock_fd);
        x->session.lock_fd = -1;
    } else {
        x->stop_when_done = true;
    }

    if (blink_shim_connect(x->session.socket, &x->conn, err) < 0 || send_spawn(x, options, err) < 0)
        goto fail;

    /* The shim answers Started, or Error when the guest could not start it. */
    for (;;) {
        blin_header_t h;
        const uint8_t *payload;
        if (blink_shim_recv(&x->conn, 30000, &h, &payload, err) <= 0) {
            blink_fail(err, BLINK_E_VM, 0, "spawn: no answer from the session's vm");
            goto fail;
        }
        if (h.request_id != EXEC_ID)
            continue;
        if (h.type == BLIN_CTL_STARTED) {
            /* u32 pid, then (from the shim) u64 execution id. */
            blin_cursor_t c;
            blin_cursor_init(&c, payload, h.length);
            blin_get_u32(&c);
            uint64_t id = blin_get_u64(&c);
            x->id = c.failed ? 0 : id;
            x->next_seq = 1;
            break;
        }
        if (h.type == BLIN_ERROR) {
            char text[512];
            blink_error_frame_text(payload, h.length, text, sizeof(text));
            blink_fail(err, BLINK_E_VM, 0, "spawn `%s`: %s", options->argv[0], text);
            goto fail;
        }
    }
    *execution = x;
    return 0;

fail:
    blink_execution_free(x);
    return -1;
}

int blink_execution_fd(const blink_execution_t *x)
{
    return x->conn.fd;
}

int blink_execution_pump(blink_execution_t *x, int timeout_ms, blink_error_t *err)
{
    int wait = timeout_ms;
    while (!x->exited) {
        blin_header_t h;
        const uint8_t *payload;
        int got = blink_shim_recv(&x->conn, wait, &h, &payload, err);
        if (got < 0)
            return -1;
        if (got == 0)
            return 0;
        wait = 0; /* drain what is there, then return */
        if (h.request_id != EXEC_ID)
            continue;

        if (h.type == BLIN_STDOUT || h.type == BLIN_STDERR)
            x->next_seq++;
        if ((h.type == BLIN_STDOUT || h.type == BLIN_STDERR) && x->on_output) {
            x->on_output(h.type == BLIN_STDOUT ? BLINK_STDOUT : BLINK_STDERR, (const char *)payload,
                         h.length, x->userdata);
        } else if (h.type == BLIN_CTL_EXIT) {
            uint32_t flags;
            if (blink_exit_frame_parse(payload, h.length, &x->exit_code, &x->signal, &flags, err) <
                0)
                return -1;
            x->timed_out = (flags & BLIN_EXIT_TIMED_OUT) != 0;
            x->exited = true;
        } else if (h.type == BLIN_ERROR) {
            char text[512];
            blink_error_frame_text(payload, h.length, text, sizeof(text));
            return blink_fail(err, BLINK_E_VM, 0, "execution: %s", text);
        }
    }
    return 1;
}

int blink_execution_write(blink_execution_t *x, const void *data, size_t len, blink_error_t *err)
{
    const char *p = data;
    do {
        size_t n = len > BLINK_CAP_OUTPUT_CHUNK ? BLINK_CAP_OUTPUT_CHUNK : len;
        if (blink_shim_send(&x->conn, BLIN_CTL_STDIN, EXEC_ID, p, n, err) < 0)
            return -1;
        p += n;
        len -= n;
    } while (len > 0);
    return 0;
}

int blink_execution_resize(blink_execution_t *x, unsigned rows, unsigned cols, blink_error_t *err)
{
    if (rows == 0 || cols == 0 || rows > 10000 || cols > 10000)
        return blink_fail(err, BLINK_E_INVALID, 0, "resize to %ux%u", rows, cols);
    uint8_t payload[4] = {(uint8_t)rows, (uint8_t)(rows >> 8), (uint8_t)cols, (uint8_t)(cols >> 8)};
    return blink_shim_send(&x->conn, BLIN_TTY_RESIZE, EXEC_ID, payload, 4, err);
}

int blink_execution_kill(blink_execution_t *x, int signo, blink_error_t *err)
{
    if (signo <= 0 || signo > 64)
        return blink_fail(err, BLINK_E_INVALID, 0, "signal %d", signo);
    uint8_t payload[4] = {(uint8_t)signo, 0, 0, 0};
    return blink_shim_send(&x->conn, BLIN_CTL_SIGNAL, EXEC_ID, payload, 4, err);
}

int blink_execution_exit_code(const blink_execution_t *x)
{
    return x->exit_code;
}

int blink_execution_exit_signal(const blink_execution_t *x)
{
    return x->signal;
}

bool blink_execution_timed_out(const blink_execution_t *x)
{
    return x->timed_out;
}

uint64_t blink_execution_id(const blink_execution_t *x)
{
    return x->id;
}

uint64_t blink_execution_next_seq(const blink_execution_t *x)
{
    return x->next_seq;
}

uint64_t blink_execution_dropped(const blink_execution_t *x)
{
    return x->dropped;
}

/* Reads the shim's Attach reply: which chunks it still keeps. The replayed
 * chunks follow in order, numbered from the first one after `after` that
 * is kept, so counting them continues the numbering. */
static int read_attach_reply(blink_execution_t *x, uint64_t after, blink_error_t *err)
{
    for (;;) {
        blin_header_t h;
        const uint8_t *payload;
        if (blink_shim_recv(&x->conn, 30000, &h, &payload, err) <= 0)
            return blink_fail(err, BLINK_E_VM, 0, "attach: no answer from the session's vm");
        if (h.request_id != EXEC_ID)
            continue;
        if (h.type == BLIN_ERROR) {
            char text[512];
            blink_error_frame_text(payload, h.length, text, sizeof(text));
            return blink_fail(err, BLINK_E_NOT_FOUND, 0, "attach to execution %llu: %s",
                              (unsigned long long)x->id, text);
        }
        if (h.type != BLIN_SHIM_ATTACH)
            continue;

        blin_cursor_t c;
        blin_cursor_init(&c, payload, h.length);
        uint64_t first = blin_get_u64(&c);
        uint64_t last = blin_get_u64(&c);
        blin_get_u32(&c);
        if (c.failed || first == 0 || first > last + 1)
            return blink_fail(err, BLINK_E_PROTOCOL, 0, "attach: malformed reply from the shim");
        uint64_t wanted = (after < last ? after : last) + 1;
        x->dropped = first > wanted ? first - wanted : 0;
        x->next_seq = first > wanted ? first : wanted;
        return 0;
    }
}

/* An execution whose VM no longer keeps it (stopped, restarted, or the
 * shim let it go): an exited handle with no output, when the catalog has
 * its exit. Its output went with the VM's memory. */
static int ended_from_catalog(blink_execution_t *x, uint64_t after)
{
    blink_execution_row_t row;
    if (blink_catalog_execution_get(x->session.catalog, x->session.name, (int64_t)x->id, &row,
                                    NULL) < 0 ||
        !row.finished || !row.has_status)
        return -1;
    x->exited = true;
    x->exit_code = row.exit_code;
    x->signal = row.signal;
    x->timed_out = row.timed_out;
    x->next_seq = after + 1;
    return 0;
}

bool blink_execution_exited(const blink_execution_t *x)
{
    return x->exited;
}

int blink_session_attach(blink_t *blink, const char *name, uint64_t execution_id,
                         const blink_attach_options_t *options, blink_execution_t **execution,
                         blink_error_t *err)
{
    *execution = NULL;
    const blink_attach_options_t *o = options;
    if (o == NULL || o->struct_size < sizeof(size_t) || o->struct_size > sizeof(*o))
        return blink_fail(err, BLINK_E_INVALID, 0, "attach options: missing or bad struct_size");
    if (execution_id == 0 || execution_id > INT64_MAX)
        return blink_fail(err, BLINK_E_INVALID, 0, "attach: bad execution id");

    blink_execution_t *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "attach");
    x->conn.fd = -1;
    x->session.lock_fd = -1;
    x->on_output = o->on_output;
    x->userdata = o->userdata;
    x->id = execution_id;

    /* No lock and no boot: the execution lives in a running VM, or it
     * ended and the catalog says how. */
    if (session_ctx_open(blink, name, &x->session, err) < 0 ||
        blink_catalog_session_get(x->session.catalog, name, &x->row, err) < 0)
        goto fail;
    blink_error_t live_err = {0};
    if (blink_shim_connect(x->session.socket, &x->conn, &live_err) < 0) {
        blink_fail(&live_err, BLINK_E_NOT_FOUND, 0, "attach: session `%s` is not running", name);
    } else {
        uint8_t request[16];
        for (int i = 0; i < 8; i++) {
            request[i] = (uint8_t)(execution_id >> (8 * i));
            request[8 + i] = (uint8_t)(o->after_seq >> (8 * i));
        }
        if (blink_shim_send(&x->conn, BLIN_SHIM_ATTACH, EXEC_ID, request, sizeof(request),
                            &live_err) == 0 &&
            read_attach_reply(x, o->after_seq, &live_err) == 0) {
            *execution = x;
            return 0;
        }
        blink_shim_disconnect(&x->conn);
        x->conn.fd = -1;
    }
    if (ended_from_catalog(x, o->after_seq) == 0) {
        *execution = x;
        return 0;
    }
    *err = live_err;

fail:
    blink_execution_free(x);
    return -1;
}
