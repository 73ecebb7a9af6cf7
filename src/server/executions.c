/* POST /api/sessions/{name}/spawn: starts a process in a warm session's VM
 * and answers with the id to attach to (attach.c). The server does not
 * hold the process: the session's shim does, so it outlives this request
 * and a restart of the server. */
#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

typedef struct spawn_request {
    const char *argv[SERVER_CAP_ARGS + 1];
    size_t argc;
    const char *env[SERVER_CAP_ENV];
    char *env_storage[SERVER_CAP_ENV];
    size_t env_count;
    const char *workdir;
    bool tty;
    unsigned rows, cols, timeout_sec;
} spawn_request_t;

static void spawn_request_clear(spawn_request_t *s)
{
    for (size_t i = 0; i < s->env_count; i++)
        free(s->env_storage[i]);
    s->env_count = 0;
}

static int parse_args(json_t *body, spawn_request_t *s, blink_error_t *err)
{
    json_t *args = json_object_get(body, "args");
    if (args == NULL)
        return 0;
    if (!json_is_array(args) || json_array_size(args) > SERVER_CAP_ARGS)
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "field `args` must be an array of at most %d strings", SERVER_CAP_ARGS);
    size_t i;
    json_t *arg;
    json_array_foreach (args, i, arg) {
        const char *text = json_string_value(arg);
        if (text == NULL || strlen(text) != json_string_length(arg))
            return blink_fail(err, BLINK_E_INVALID, 0,
                              "field `args` must hold strings without NUL bytes");
        s->argv[s->argc++] = text;
    }
    return 0;
}

static int parse_env(json_t *body, spawn_request_t *s, blink_error_t *err)
{
    json_t *env = json_object_get(body, "env");
    if (env == NULL)
        return 0;
    if (!json_is_object(env) || json_object_size(env) > SERVER_CAP_ENV)
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "field `env` must be an object of at most %d strings", SERVER_CAP_ENV);
    const char *key;
    json_t *value;
    json_object_foreach (env, key, value) {
        const char *text = json_string_value(value);
        if (key[0] == '\0' || strchr(key, '=') || text == NULL ||
            strlen(text) != json_string_length(value))
            return blink_fail(err, BLINK_E_INVALID, 0,
                              "field `env` must map names without `=` to strings");
        char *entry = blink_strdup_printf("%s=%s", key, text);
        if (entry == NULL)
            return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "read field `env`");
        s->env_storage[s->env_count] = entry;
        s->env[s->env_count++] = entry;
    }
    return 0;
}

/* {command, args?, env?, tty?, rows?, cols?, working_dir?, timeout?} */
static int parse_spawn(json_t *body, spawn_request_t *s, blink_error_t *err)
{
    memset(s, 0, sizeof(*s));
    const char *command = NULL;
    if (body_string(body, "command", true, &command, err) < 0 ||
        body_string(body, "working_dir", false, &s->workdir, err) < 0 ||
        body_bool(body, "tty", &s->tty, err) < 0 ||
        body_uint(body, "rows", 1, 10000, &s->rows, err) < 0 ||
        body_uint(body, "cols", 1, 10000, &s->cols, err) < 0 ||
        body_uint(body, "timeout", 0, SERVER_CAP_TIMEOUT_SEC, &s->timeout_sec, err) < 0)
        return -1;
    if (command[0] == '\0')
        return blink_fail(err, BLINK_E_INVALID, 0, "field `command` is empty");
    if (s->workdir && s->workdir[0] != '/')
        return blink_fail(err, BLINK_E_INVALID, 0, "field `working_dir` must be absolute");
    s->argv[s->argc++] = command;
    return parse_args(body, s, err) < 0 ? -1 : parse_env(body, s, err);
}

/* Only a warm session's shim keeps a process once its client is gone; a
 * cold VM lives for the command that booted it. */
static int check_warm(server_t *server, const char *name, blink_error_t *err)
{
    blink_session_info_t info;
    if (blink_session_info(server->blink, name, &info, err) < 0)
        return -1;
    if (!info.warm)
        return blink_fail(err, BLINK_E_BUSY, 0,
                          "session `%s` is cold: spawned processes outlive the request only "
                          "in a warm session (open it with \"warm\": true)",
                          name);
    return 0;
}

enum MHD_Result route_session_spawn(request_t *req, char **params)
{
    blink_error_t err = {0};
    if (check_name("session", params[0], &err) < 0)
        return http_fail(req, &err);
    enum MHD_Result queued;
    json_t *body = http_body_object(req, &queued);
    if (body == NULL)
        return queued;

    spawn_request_t s;
    blink_execution_t *x = NULL;
    int rc = parse_spawn(body, &s, &err);
    if (rc == 0)
        rc = check_warm(req->server, params[0], &err);
    int64_t asked_at = wall_ms();
    if (rc == 0) {
        blink_spawn_options_t options = {
            .struct_size = sizeof(options),
            .argv = s.argv,
            .argc = s.argc,
            .env = s.env,
            .env_count = s.env_count,
            .workdir = s.workdir,
            .tty = s.tty,
            .rows = s.rows,
            .cols = s.cols,
            .timeout_sec = s.timeout_sec,
        };
        rc = blink_session_spawn(req->server->blink, params[0], &options, &x, &err);
    }
    spawn_request_clear(&s);
    json_decref(body);
    if (rc < 0)
        return http_fail(req, &err);
    metrics_boot_since(req->server, params[0], asked_at);

    /* Leaving it: the shim goes on running the process (a warm session). */
    uint64_t id = blink_execution_id(x);
    blink_execution_free(x);
    if (id == 0)
        return http_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR,
                          "the session's catalog did not record the execution: cannot attach");
    log_info("spawn", "session %s: execution %llu started", params[0], (unsigned long long)id);

    char url[160];
    snprintf(url, sizeof(url), "/api/sessions/%s/executions/%llu/attach", params[0],
             (unsigned long long)id);
    return http_json(req, MHD_HTTP_CREATED,
                     json_pack("{s:s, s:s, s:I, s:b, s:s}", "event", "exec_spawned", "session",
                               params[0], "execution_id", (json_int_t)id, "tty", s.tty,
                               "attach_url", url));
}
