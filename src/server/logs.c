/* Live logs of queued runs: GET /api/runs/{id}/logs[?after=SEQ] is a
 * Server-Sent Events stream (HTML Living Standard, "Server-sent events")
 * of the run's output while it runs.
 *
 * A worker keeps the newest SERVER_CAP_RUN_LOG bytes of its job's output
 * as numbered chunks; each chunk is one event (`stdout` or `stderr`, its
 * number as the event id, data {"text": …}), so a client that reconnects
 * with Last-Event-ID (or ?after=) continues where it was. Chunks no longer
 * kept are announced by a `dropped` event. When the run ends an `end`
 * event carries its status; for a run that ended before the stream began
 * (or whose log is gone), its stored result's output is sent instead. */
#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Ended runs whose logs stay for late readers. */
#define KEPT_ENDED_LOGS 16
/* A comment line keeps idle streams open through proxies. */
#define KEEPALIVE_MS 15000
#define WAIT_MS 1000

typedef struct log_chunk {
    uint64_t seq;
    blink_stream_t stream;
    size_t len;
    struct log_chunk *next;
    char data[];
} log_chunk_t;

struct run_log {
    server_t *server;
    int64_t id;
    log_chunk_t *first, *last;
    size_t kept;
    uint64_t next_seq;
    bool ended;
    struct run_log *next;
};

static void log_free(run_log_t *log)
{
    while (log->first) {
        log_chunk_t *next = log->first->next;
        free(log->first);
        log->first = next;
    }
    free(log);
}

run_log_t *run_log_open(server_t *server, int64_t id)
{
    run_log_t *log = calloc(1, sizeof(*log));
    if (log == NULL)
        return NULL; /* the run goes on without a live log */
    log->server = server;
    log->id = id;
    pthread_mutex_lock(&server->lock);
    log->next = server->logs;
    server->logs = log;
    pthread_mutex_unlock(&server->lock);
    return log;
}

void run_log_output(blink_stream_t stream, const char *data, size_t len, void *userdata)
{
    run_log_t *log = userdata;
    server_t *server = log->server;
    log_chunk_t *chunk = malloc(sizeof(*chunk) + len);

    /* The chunk's number is taken even when it cannot be kept. */
    pthread_mutex_lock(&server->lock);
    uint64_t seq = ++log->next_seq;
    if (chunk) {
        *chunk = (log_chunk_t){.seq = seq, .stream = stream, .len = len};
        memcpy(chunk->data, data, len);
        if (log->last)
            log->last->next = chunk;
        else
            log->first = chunk;
        log->last = chunk;
        log->kept += len;
        while (log->kept > SERVER_CAP_RUN_LOG && log->first != log->last) {
            log_chunk_t *old = log->first;
            log->first = old->next;
            log->kept -= old->len;
            free(old);
        }
    }
    pthread_cond_broadcast(&server->logs_changed);
    pthread_mutex_unlock(&server->lock);
}

void run_log_end(run_log_t *log)
{
    if (log == NULL)
        return;
    server_t *server = log->server;
    log->ended = true;
    /* Keep the newest ended logs; drop the rest (the list is newest first). */
    int ended = 0;
    for (run_log_t **p = &server->logs; *p;) {
        run_log_t *l = *p;
        if (l->ended && ++ended > KEPT_ENDED_LOGS) {
            *p = l->next;
            log_free(l);
            continue;
        }
        p = &l->next;
    }
    pthread_cond_broadcast(&server->logs_changed);
}

void run_logs_free(server_t *server)
{
    while (server->logs) {
        run_log_t *next = server->logs->next;
        log_free(server->logs);
        server->logs = next;
    }
}

/* ---- the event stream ---- */

typedef struct stream {
    server_t *server;
    int64_t id;
    uint64_t after; /* the last chunk number sent */
    blink_buf_t pending;
    size_t pending_off;
    bool ended;
    uint64_t last_emit_ms;
} stream_t;

/* Appends one event; `fields` is stolen and sent as JSON on one line. */
static void emit(stream_t *s, const char *event, uint64_t id, json_t *fields)
{
    char *text = fields ? json_dumps(fields, JSON_COMPACT) : NULL;
    json_decref(fields);
    char head[96];
    int n = id ? snprintf(head, sizeof(head), "event: %s\nid: %llu\ndata: ", event,
                          (unsigned long long)id)
               : snprintf(head, sizeof(head), "event: %s\ndata: ", event);
    if (text == NULL || blink_buf_append(&s->pending, head, (size_t)n) < 0 ||
        blink_buf_append(&s->pending, text, strlen(text)) < 0 ||
        blink_buf_append(&s->pending, "\n\n", 2) < 0)
        s->ended = true; /* out of memory: end the stream; the client reconnects */
    free(text);
    s->last_emit_ms = blink_now_ms();
}

static json_t *text_field(const char *data, size_t len)
{
    size_t text_len;
    cleanup_free char *text = blink_utf8_sanitize(data, len, &text_len);
    return text ? json_pack("{s:s%}", "text", text, text_len) : NULL;
}

/* From the live log: what is new, or the end. Lock held. */
static void emit_from_log(stream_t *s, run_log_t *log)
{
    if (log->first && log->first->seq > s->after + 1) {
        emit(s, "dropped", 0,
             json_pack("{s:I}", "dropped", (json_int_t)(log->first->seq - s->after - 1)));
        s->after = log->first->seq - 1;
    }
    for (log_chunk_t *c = log->first; c; c = c->next) {
        if (c->seq <= s->after)
            continue;
        emit(s, c->stream == BLINK_STDOUT ? "stdout" : "stderr", c->seq,
             text_field(c->data, c->len));
        s->after = c->seq;
    }
}

/* From the catalog, for a run that has ended: its stored output, then the
 * end. A client that saw numbered chunks already gets only the end. */
static void emit_from_row(stream_t *s, const blink_run_row_t *row)
{
    json_t *result = row->result ? json_loads(row->result, 0, NULL) : NULL;
    if (result && s->after == 0) {
        static const char *const streams[] = {"stdout", "stderr"};
        for (int i = 0; i < 2; i++) {
            const char *text = json_string_value(json_object_get(result, streams[i]));
            if (text && *text)
                emit(s, streams[i], 0, json_pack("{s:s}", "text", text));
        }
    }
    json_t *end = json_pack("{s:s}", "status", row->status);
    json_t *code = result ? json_object_get(result, "exit_code") : NULL;
    if (code)
        json_object_set(end, "exit_code", code);
    if (row->error)
        json_object_set_new(end, "error", json_string(row->error));
    emit(s, "end", 0, end);
    json_decref(result);
    s->ended = true;
}

static run_log_t *find_log(server_t *server, int64_t id)
{
    for (run_log_t *l = server->logs; l; l = l->next)
        if (l->id == id)
            return l;
    return NULL;
}

static void wait_for_change(server_t *server)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += WAIT_MS / 1000;
    pthread_cond_timedwait(&server->logs_changed, &server->lock, &until);
}

/* Fills s->pending with the next events, waiting for some. Lock held. */
static void next_events(stream_t *s)
{
    server_t *server = s->server;
    while (s->pending.len == s->pending_off && !s->ended) {
        if (server->stopping) {
            s->ended = true;
            return;
        }
        run_log_t *log = find_log(server, s->id);
        if (log) {
            emit_from_log(s, log);
            bool drained = log->last == NULL || log->last->seq <= s->after;
            if (log->ended && drained)
                log = NULL; /* the end comes from the catalog, which has the result */
            else if (s->pending.len > s->pending_off)
                return;
        }
        if (log == NULL) {
            blink_run_row_t row;
            blink_error_t err = {0};
            if (blink_catalog_run_get(server->catalog, s->id, &row, &err) < 0) {
                emit(s, "end", 0, json_pack("{s:s}", "error", err.message));
                s->ended = true;
                return;
            }
            bool done = strcmp(row.status, BLINK_RUN_SUCCEEDED) == 0 ||
                        strcmp(row.status, BLINK_RUN_FAILED) == 0;
            if (done)
                emit_from_row(s, &row);
            blink_catalog_run_row_clear(&row);
            if (done)
                return;
        }
        if (blink_now_ms() - s->last_emit_ms >= KEEPALIVE_MS) {
            blink_buf_append(&s->pending, ":\n\n", 3);
            s->last_emit_ms = blink_now_ms();
            return;
        }
        wait_for_change(server);
    }
}

/* MHD's content reader: blocking is allowed with a thread per connection. */
static ssize_t read_events(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream_t *s = cls;
    if (s->pending.len == s->pending_off) {
        s->pending.len = s->pending_off = 0;
        pthread_mutex_lock(&s->server->lock);
        next_events(s);
        pthread_mutex_unlock(&s->server->lock);
    }
    size_t left = s->pending.len - s->pending_off;
    if (left == 0)
        return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = left < max ? left : max;
    memcpy(buf, s->pending.data + s->pending_off, n);
    s->pending_off += n;
    return (ssize_t)n;
}

static void free_stream(void *cls)
{
    stream_t *s = cls;
    blink_buf_free(&s->pending);
    free(s);
}

static bool parse_seq(const char *text, uint64_t *out)
{
    size_t len = text ? strlen(text) : 0;
    if (len == 0 || len > 18 || strspn(text, "0123456789") != len)
        return false;
    *out = strtoull(text, NULL, 10);
    return true;
}

enum MHD_Result route_run_logs(request_t *req, char **params)
{
    int64_t id = 0;
    uint64_t parsed;
    if (!parse_seq(params[0], &parsed) || parsed == 0)
        return http_error(req, MHD_HTTP_NOT_FOUND, "no run `%s`", params[0]);
    id = (int64_t)parsed;

    /* ?after= wins over the header a reconnecting EventSource sends. */
    uint64_t after = 0;
    const char *arg = http_query(req, "after");
    const char *last = MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND,
                                                   "Last-Event-ID");
    if (arg ? !parse_seq(arg, &after) : last && !parse_seq(last, &after))
        return http_error(req, MHD_HTTP_BAD_REQUEST, "`after` must be a sequence number");

    blink_run_row_t row;
    blink_error_t err = {0};
    pthread_mutex_lock(&req->server->lock);
    int rc = blink_catalog_run_get(req->server->catalog, id, &row, &err);
    pthread_mutex_unlock(&req->server->lock);
    if (rc < 0)
        return http_fail(req, &err);
    blink_catalog_run_row_clear(&row);

    stream_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return MHD_NO;
    *s = (stream_t){.server = req->server, .id = id, .after = after,
                    .last_emit_ms = blink_now_ms()};
    struct MHD_Response *response =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 32 * 1024, read_events, s,
                                          free_stream);
    if (response == NULL) {
        free(s);
        return MHD_NO;
    }
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    return http_queue(req, MHD_HTTP_OK, response);
}
