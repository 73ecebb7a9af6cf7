/* Runs: the agent a request names (a host path or inline bytes), the job
 * queue behind POST /api/runs, its worker pool, and GET /api/runs/{id}.
 *
 * Jobs live in the catalog (table `runs`), so a queued job survives a
 * restart of the server; a job that was running when the server ended
 * cannot finish and is marked failed on the next start. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Temp agents are named `server-PID-XXXXXX` so that a later start can
 * remove what a killed server left (blink_reap_orphans). */
#define AGENT_TMP_PREFIX "server-"

/* How often idle workers and long-polls look at the catalog again, for jobs
 * queued or finished by another server on the same BLINK_HOME. */
#define JOBS_POLL_MS 1000

/* The error of a job that was running when its server ended abruptly. */
#define RUN_INTERRUPTED                                                                        \
    "interrupted: the server ended while this run was running; a run is not resumed after "   \
    "a restart (queue it again)"

/* ---- the agent of a request ---- */

static int base64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes standard base64 (RFC 4648 §4), padding optional, nothing else
 * allowed. *out is malloc'ed. */
static int base64_decode(const char *text, char **out, size_t *out_len, blink_error_t *err)
{
    size_t len = strlen(text);
    while (len > 0 && text[len - 1] == '=' && strlen(text) - len < 2)
        len--;
    if (len % 4 == 1)
        return blink_fail(err, BLINK_E_INVALID, 0, "field `script_inline` is not base64");

    char *bytes = malloc(len / 4 * 3 + 3);
    if (bytes == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "decode `script_inline`");
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = base64_value((unsigned char)text[i]);
        if (v < 0) {
            free(bytes);
            return blink_fail(err, BLINK_E_INVALID, 0, "field `script_inline` is not base64");
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            bytes[n++] = (char)((acc >> bits) & 0xff);
        }
    }
    *out = bytes;
    *out_len = n;
    return 0;
}

int agent_request_parse(json_t *body, agent_request_t *out, blink_error_t *err)
{
    memset(out, 0, sizeof(*out));
    if (body_string(body, "script", false, &out->script, err) < 0 ||
        body_string(body, "script_inline", false, &out->inline_b64, err) < 0 ||
        body_uint(body, "timeout", 0, SERVER_CAP_TIMEOUT_SEC, &out->timeout_sec, err) < 0)
        return -1;
    if ((out->script == NULL) == (out->inline_b64 == NULL))
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "give exactly one of the fields `script` and `script_inline`");
    if (out->script && out->script[0] != '/')
        return blink_fail(err, BLINK_E_INVALID, 0, "field `script` must be an absolute path");
    if (out->inline_b64) {
        /* Checked now, so that a queued job with bad bytes is refused. */
        char *bytes;
        size_t len;
        if (base64_decode(out->inline_b64, &bytes, &len, err) < 0)
            return -1;
        free(bytes);
    }

    json_t *env = json_object_get(body, "env");
    if (env == NULL)
        return 0;
    if (!json_is_object(env))
        return blink_fail(err, BLINK_E_INVALID, 0, "field `env` must be an object");
    if (json_object_size(env) > SERVER_CAP_ENV)
        return blink_fail(err, BLINK_E_INVALID, 0, "field `env` has over %d entries",
                          SERVER_CAP_ENV);
    const char *key;
    json_t *value;
    json_object_foreach (env, key, value) {
        if (key[0] == '\0' || strchr(key, '=') != NULL || !json_is_string(value))
            return blink_fail(err, BLINK_E_INVALID, 0,
                              "field `env` must map names without `=` to strings");
        char *entry = blink_strdup_printf("%s=%s", key, json_string_value(value));
        if (entry == NULL)
            return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "read field `env`");
        out->env_storage[out->env_count] = entry;
        out->env[out->env_count++] = entry;
    }
    return 0;
}

void agent_request_clear(agent_request_t *req)
{
    for (size_t i = 0; i < req->env_count; i++)
        free(req->env_storage[i]);
    req->env_count = 0;
}

/* Writes an inline agent to a new private file in BLINK_HOME/tmp; *path
 * (malloc'ed) names it. */
static int write_inline_agent(server_t *server, const char *b64, char **path, blink_error_t *err)
{
    cleanup_free char *bytes = NULL;
    size_t len = 0;
    if (base64_decode(b64, &bytes, &len, err) < 0)
        return -1;

    cleanup_free char *name =
        blink_strdup_printf("%s/tmp/" AGENT_TMP_PREFIX "%d-XXXXXX", server->home, (int)getpid());
    if (name == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "name an inline agent");
    cleanup_close int fd = mkostemp(name, O_CLOEXEC);
    if (fd < 0)
        return blink_fail(err, BLINK_E_IO, errno, "create `%s`", name);

    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, bytes + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            unlink(name);
            return blink_fail(err, BLINK_E_IO, e, "write `%s`", name);
        }
        done += (size_t)w;
    }
    if (fchmod(fd, 0700) < 0) {
        int e = errno;
        unlink(name);
        return blink_fail(err, BLINK_E_IO, e, "chmod `%s`", name);
    }
    *path = steal_pointer(&name);
    return 0;
}

int agent_request_run(server_t *server, const agent_request_t *req, const char *session,
                      const char *image, run_log_t *log, blink_result_t **result,
                      blink_error_t *err)
{
    cleanup_free char *tmp = NULL;
    const char *path = req->script;
    if (req->inline_b64) {
        if (write_inline_agent(server, req->inline_b64, &tmp, err) < 0)
            return -1;
        path = tmp;
    } else {
        /* Told apart from Blink's own "not found" (a 404 names a session). */
        struct stat st;
        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
            return blink_fail(err, BLINK_E_INVALID, 0, "script `%s` is not a file", path);
    }

    blink_run_options_t options = {
        .struct_size = sizeof(options),
        .image = image,
        .timeout_sec = req->timeout_sec,
        .env = req->env,
        .env_count = req->env_count,
        .on_output = log ? run_log_output : NULL,
        .userdata = log,
    };
    int rc = session ? blink_session_run(server->blink, session, path, &options, result, err)
                     : blink_run(server->blink, path, &options, result, err);
    if (tmp)
        unlink(tmp);
    return rc;
}

/* ---- the queue ---- */

/* What POST /api/runs accepts beyond the agent: checked when the job is
 * queued, and again when it runs. */
static int parse_job(json_t *body, agent_request_t *agent, const char **session,
                     const char **image, blink_error_t *err)
{
    const char *tier = NULL;
    *session = *image = NULL;
    if (agent_request_parse(body, agent, err) < 0 ||
        body_string(body, "tier", false, &tier, err) < 0 ||
        body_string(body, "session_name", false, session, err) < 0 ||
        body_string(body, "image", false, image, err) < 0)
        return -1;
    if (tier && strcmp(tier, "free") != 0 && strcmp(tier, "paid") != 0)
        return blink_fail(err, BLINK_E_INVALID, 0, "field `tier` must be `free` or `paid`");
    if (*session && check_name("session", *session, err) < 0)
        return -1;
    if (*session && tier && strcmp(tier, "free") == 0)
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "the free tier runs ephemeral agents only; sessions are paid");
    if (*session && *image)
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "`image` is for ephemeral runs; a session keeps its own");
    return 0;
}

enum MHD_Result route_runs_queue(request_t *req, char **params)
{
    (void)params;
    enum MHD_Result queued;
    json_t *body = http_body_object(req, &queued);
    if (body == NULL)
        return queued;

    blink_error_t err = {0};
    agent_request_t agent;
    const char *session, *image;
    int rc = parse_job(body, &agent, &session, &image, &err);
    agent_request_clear(&agent);
    cleanup_free char *text = rc == 0 ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (rc < 0)
        return http_fail(req, &err);
    if (text == NULL)
        return MHD_NO;

    server_t *server = req->server;
    pthread_mutex_lock(&server->lock);
    int64_t id = blink_catalog_run_insert(server->catalog, text, &err);
    if (id > 0)
        pthread_cond_broadcast(&server->changed);
    pthread_mutex_unlock(&server->lock);
    if (id < 0)
        return http_fail(req, &err);

    log_info("runs", "run %lld queued", (long long)id);
    char url[64];
    snprintf(url, sizeof(url), "/api/runs/%lld", (long long)id);
    return http_json(req, MHD_HTTP_ACCEPTED,
                     json_pack("{s:I, s:s, s:s}", "id", (json_int_t)id, "status",
                               BLINK_RUN_QUEUED, "url", url));
}

static json_t *time_or_null(int64_t ms)
{
    return ms > 0 ? json_integer(ms) : json_null();
}

static json_t *run_json(const blink_run_row_t *row)
{
    json_t *result = row->result ? json_loads(row->result, JSON_ALLOW_NUL, NULL) : NULL;
    return json_pack("{s:I, s:s, s:I, s:o, s:o, s:o, s:o}", "id", (json_int_t)row->id, "status",
                     row->status, "created_at", (json_int_t)row->created_at, "started_at",
                     time_or_null(row->started_at), "finished_at",
                     time_or_null(row->finished_at), "result", result ? result : json_null(),
                     "error", row->error ? json_string(row->error) : json_null());
}

static bool parse_id(const char *text, int64_t *id)
{
    size_t len = strlen(text);
    if (len == 0 || len > 18 || strspn(text, "0123456789") != len)
        return false;
    *id = strtoll(text, NULL, 10);
    return *id > 0;
}

static void deadline_in(struct timespec *ts, uint64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

static bool finished(const blink_run_row_t *row)
{
    return strcmp(row->status, BLINK_RUN_SUCCEEDED) == 0 ||
           strcmp(row->status, BLINK_RUN_FAILED) == 0;
}

enum MHD_Result route_runs_get(request_t *req, char **params)
{
    int64_t id = 0;
    if (!parse_id(params[0], &id))
        return http_error(req, MHD_HTTP_NOT_FOUND, "no run `%s`", params[0]);

    const char *wait_arg = http_query(req, "wait");
    unsigned long wait_sec = 0;
    if (wait_arg) {
        char *end;
        errno = 0;
        wait_sec = strtoul(wait_arg, &end, 10);
        if (errno || end == wait_arg || *end != '\0' || wait_arg[0] == '-')
            return http_error(req, MHD_HTTP_BAD_REQUEST, "`wait` must be a number of seconds");
        if (wait_sec > SERVER_CAP_WAIT_SEC)
            wait_sec = SERVER_CAP_WAIT_SEC;
    }

    /* Long-poll: look again whenever a job changes (or every poll period,
     * for changes made by another process) until the job has finished, the
     * wait is over or the server stops. */
    server_t *server = req->server;
    uint64_t deadline = blink_now_ms() + wait_sec * 1000;
    blink_error_t err = {0};
    blink_run_row_t row;
    pthread_mutex_lock(&server->lock);
    for (;;) {
        if (blink_catalog_run_get(server->catalog, id, &row, &err) < 0) {
            pthread_mutex_unlock(&server->lock);
            return http_fail(req, &err);
        }
        uint64_t now = blink_now_ms();
        if (finished(&row) || server->stopping || now >= deadline)
            break;
        blink_catalog_run_row_clear(&row);

        struct timespec until;
        uint64_t left = deadline - now;
        deadline_in(&until, left < JOBS_POLL_MS ? left : JOBS_POLL_MS);
        pthread_cond_timedwait(&server->changed, &server->lock, &until);
    }
    pthread_mutex_unlock(&server->lock);

    json_t *body = run_json(&row);
    blink_catalog_run_row_clear(&row);
    return http_json(req, MHD_HTTP_OK, body);
}

/* ---- workers ---- */

/* Runs a claimed job. Returns the result JSON text (caller frees), or NULL
 * with *error set. */
static char *run_job(server_t *server, const blink_run_row_t *row, run_log_t *log, char *error,
                     size_t error_size)
{
    blink_error_t err = {0};
    json_error_t jerr;
    json_t *body = json_loads(row->request, 0, &jerr);
    if (body == NULL) {
        snprintf(error, error_size, "stored request is not JSON: %s", jerr.text);
        return NULL;
    }

    agent_request_t agent;
    const char *session, *image;
    blink_result_t *result = NULL;
    int rc = parse_job(body, &agent, &session, &image, &err);
    if (rc == 0)
        rc = agent_request_run(server, &agent, session, image, log, &result, &err);
    agent_request_clear(&agent);

    char *text = NULL;
    if (rc == 0) {
        metrics_boot(server, blink_result_boot_ms(result));
        json_t *event = json_execution_result(result, session);
        text = event ? json_dumps(event, JSON_COMPACT) : NULL;
        json_decref(event);
        if (text == NULL)
            snprintf(error, error_size, "encode the result");
    } else {
        blink_error_format(&err, error, error_size);
    }
    json_decref(body);
    return text;
}

static void *worker_main(void *arg)
{
    server_t *server = arg;
    pthread_mutex_lock(&server->lock);
    while (!server->stopping) {
        blink_error_t err = {0};
        blink_run_row_t row;
        int claimed = blink_catalog_run_claim(server->catalog, &row, &err);
        if (claimed < 0)
            log_warn("runs", "claim a job: %s", err.message);
        if (claimed <= 0) {
            struct timespec until;
            deadline_in(&until, JOBS_POLL_MS);
            pthread_cond_timedwait(&server->changed, &server->lock, &until);
            continue;
        }

        pthread_cond_broadcast(&server->changed);
        pthread_mutex_unlock(&server->lock);
        log_info("runs", "run %lld started", (long long)row.id);
        run_log_t *log = run_log_open(server, row.id);
        char error[1400] = "";
        cleanup_free char *result = run_job(server, &row, log, error, sizeof(error));
        if (result)
            log_info("runs", "run %lld succeeded", (long long)row.id);
        else
            log_warn("runs", "run %lld failed: %s", (long long)row.id, error);

        pthread_mutex_lock(&server->lock);
        if (blink_catalog_run_finish(server->catalog, row.id, result, error, &err) < 0)
            log_error("runs", "record the end of run %lld: %s", (long long)row.id, err.message);
        run_log_end(log);
        pthread_cond_broadcast(&server->changed);
        blink_catalog_run_row_clear(&row);
    }
    pthread_mutex_unlock(&server->lock);
    return NULL;
}

int jobs_start(server_t *server, unsigned workers, blink_error_t *err)
{
    cleanup_free char *tmp_dir = blink_strdup_printf("%s/tmp", server->home);
    if (tmp_dir)
        blink_reap_orphans(tmp_dir, AGENT_TMP_PREFIX, true);
    upload_reap(server->home);

    cleanup_free char *db = blink_strdup_printf("%s/blink.db", server->home);
    if (db == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "open the job queue");
    if (blink_catalog_open(db, &server->catalog, err) < 0)
        return blink_wrap(err, "open the job queue");

    int64_t abandoned = 0;
    /* A run's result is gathered by the worker that ran it; a server that
     * died took those workers (and an ephemeral run's VM, its child) with
     * it, so such a run cannot be picked up again. */
    if (blink_catalog_run_fail_running(server->catalog, RUN_INTERRUPTED, &abandoned, err) < 0)
        return blink_wrap(err, "recover the job queue");
    if (abandoned > 0)
        log_warn("runs", "%lld runs were running when the server last ended: marked failed",
                 (long long)abandoned);

    server->workers = calloc(workers ? workers : 1, sizeof(*server->workers));
    if (server->workers == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "start workers");
    for (unsigned i = 0; i < workers; i++) {
        int rc = pthread_create(&server->workers[i], NULL, worker_main, server);
        if (rc != 0) {
            jobs_begin_stop(server);
            jobs_join(server);
            return blink_fail(err, BLINK_E_IO, rc, "start worker %u", i);
        }
        server->worker_count++;
    }
    return 0;
}

void jobs_begin_stop(server_t *server)
{
    pthread_mutex_lock(&server->lock);
    server->stopping = true;
    pthread_cond_broadcast(&server->changed);
    pthread_mutex_unlock(&server->lock);
}

void jobs_join(server_t *server)
{
    for (unsigned i = 0; i < server->worker_count; i++)
        pthread_join(server->workers[i], NULL);
    server->worker_count = 0;
    free(server->workers);
    server->workers = NULL;
    blink_catalog_close(server->catalog);
    server->catalog = NULL;
    run_logs_free(server);
}
