/* /api/sessions...: open, list, inspect, stop, remove, run in, checkpoint
 * and restore named sessions. Each handler checks the names it was given,
 * calls libblink, and answers with the CLI's event for the operation. */
#include "server.h"

#include <string.h>

/* Checks the session name of the path; on failure queues the 400. */
static bool session_param(request_t *req, const char *name, enum MHD_Result *queued)
{
    blink_error_t err = {0};
    if (check_name("session", name, &err) == 0)
        return true;
    *queued = http_fail(req, &err);
    return false;
}

/* The session name of the path, then the JSON object body; NULL when either
 * is bad, with the error queued. */
static json_t *session_body(request_t *req, const char *name, enum MHD_Result *queued)
{
    return session_param(req, name, queued) ? http_body_object(req, queued) : NULL;
}

enum MHD_Result route_sessions_list(request_t *req, char **params)
{
    (void)params;
    blink_error_t err = {0};
    blink_session_info_t *list = NULL;
    size_t count = 0;
    if (blink_session_list(req->server->blink, &list, &count, &err) < 0)
        return http_fail(req, &err);

    json_t *sessions = json_array();
    for (size_t i = 0; i < count; i++)
        json_array_append_new(sessions, json_session_info(&list[i]));
    free(list);
    return http_json(req, MHD_HTTP_OK,
                     json_pack("{s:s, s:o}", "event", "session_list", "sessions", sessions));
}

static int parse_open(json_t *body, const char **name, blink_session_options_t *options,
                      blink_error_t *err)
{
    options->struct_size = sizeof(*options);
    if (body_string(body, "name", true, name, err) < 0 || check_name("session", *name, err) < 0 ||
        body_string(body, "image", false, &options->image, err) < 0 ||
        body_bool(body, "warm", &options->warm, err) < 0 ||
        body_uint(body, "memory_mib", 128, 65536, &options->memory_mib, err) < 0 ||
        body_uint(body, "cpus", 1, 64, &options->cpus, err) < 0)
        return -1;
    return 0;
}

enum MHD_Result route_sessions_open(request_t *req, char **params)
{
    (void)params;
    enum MHD_Result queued;
    json_t *body = http_body_object(req, &queued);
    if (body == NULL)
        return queued;

    blink_error_t err = {0};
    const char *name = NULL;
    blink_session_options_t options = {0};
    bool created = false;
    blink_session_info_t info;
    int64_t asked_at = wall_ms();
    if (parse_open(body, &name, &options, &err) < 0 ||
        blink_session_open(req->server->blink, name, &options, &created, &err) < 0 ||
        blink_session_info(req->server->blink, name, &info, &err) < 0) {
        json_decref(body);
        return http_fail(req, &err);
    }
    json_decref(body);
    if (info.started_at >= asked_at)
        metrics_boot(req->server, (uint64_t)(info.started_at - asked_at) + 1);

    json_t *event = json_session_info(&info);
    json_object_set_new(event, "event", json_string("session_opened"));
    json_object_set_new(event, "created", json_boolean(created));
    return http_json(req, created ? MHD_HTTP_CREATED : MHD_HTTP_OK, event);
}

enum MHD_Result route_session_get(request_t *req, char **params)
{
    enum MHD_Result queued;
    if (!session_param(req, params[0], &queued))
        return queued;

    blink_error_t err = {0};
    blink_session_info_t info;
    if (blink_session_info(req->server->blink, params[0], &info, &err) < 0)
        return http_fail(req, &err);
    return http_json(req, MHD_HTTP_OK, json_pack("{s:s, s:o}", "event", "session_info",
                                                 "session", json_session_info(&info)));
}

enum MHD_Result route_session_remove(request_t *req, char **params)
{
    enum MHD_Result queued;
    if (!session_param(req, params[0], &queued))
        return queued;

    const char *force = http_query(req, "force");
    bool forced = force && (strcmp(force, "1") == 0 || strcmp(force, "true") == 0);
    blink_error_t err = {0};
    if (blink_session_remove(req->server->blink, params[0], forced, &err) < 0)
        return http_fail(req, &err);
    return http_json(req, MHD_HTTP_OK,
                     json_pack("{s:s, s:s}", "event", "session_removed", "name", params[0]));
}

enum MHD_Result route_session_stop(request_t *req, char **params)
{
    enum MHD_Result queued;
    if (!session_param(req, params[0], &queued))
        return queued;

    blink_error_t err = {0};
    if (blink_session_stop(req->server->blink, params[0], &err) < 0)
        return http_fail(req, &err);
    return http_json(req, MHD_HTTP_OK,
                     json_pack("{s:s, s:s}", "event", "session_stopped", "name", params[0]));
}

/* Runs synchronously: the response is the run's execution_result. */
enum MHD_Result route_session_run(request_t *req, char **params)
{
    enum MHD_Result queued;
    json_t *body = session_body(req, params[0], &queued);
    if (body == NULL)
        return queued;

    blink_error_t err = {0};
    agent_request_t agent;
    blink_result_t *result = NULL;
    int rc = agent_request_parse(body, &agent, &err);
    if (rc == 0)
        rc = agent_request_run(req->server, &agent, params[0], NULL, NULL, &result,
                               &err);
    if (rc == 0)
        metrics_boot(req->server, blink_result_boot_ms(result));
    agent_request_clear(&agent);
    json_decref(body);
    if (rc < 0)
        return http_fail(req, &err);

    json_t *event = json_execution_result(result, params[0]);
    return event ? http_json(req, MHD_HTTP_OK, event) : MHD_NO;
}

enum MHD_Result route_checkpoints_create(request_t *req, char **params)
{
    enum MHD_Result queued;
    json_t *body = session_body(req, params[0], &queued);
    if (body == NULL)
        return queued;

    /* "memory": true asks for memory, false for the disk only; absent
     * lets Blink choose (memory when the VM runs). */
    blink_error_t err = {0};
    const char *snapshot = NULL;
    bool has_memory = json_object_get(body, "memory") != NULL;
    bool memory = false;
    blink_checkpoint_info_t info;
    int rc = 0;
    if (body_string(body, "name", true, &snapshot, &err) < 0 ||
        check_name("snapshot", snapshot, &err) < 0 || body_bool(body, "memory", &memory, &err) < 0)
        rc = -1;
    blink_checkpoint_kind_t kind = !has_memory ? BLINK_CHECKPOINT_AUTO
                                   : memory    ? BLINK_CHECKPOINT_MEMORY
                                               : BLINK_CHECKPOINT_DISK;
    if (rc == 0)
        rc = blink_session_checkpoint(req->server->blink, params[0], snapshot, kind, &info, &err);
    json_decref(body);
    if (rc < 0)
        return http_fail(req, &err);

    json_t *event = json_checkpoint(params[0], &info);
    json_object_set_new(event, "event", json_string("session_checkpoint"));
    return http_json(req, MHD_HTTP_CREATED, event);
}

enum MHD_Result route_checkpoints_list(request_t *req, char **params)
{
    enum MHD_Result queued;
    if (!session_param(req, params[0], &queued))
        return queued;

    blink_error_t err = {0};
    blink_checkpoint_info_t *list = NULL;
    size_t count = 0;
    if (blink_session_checkpoints(req->server->blink, params[0], &list, &count, &err) < 0)
        return http_fail(req, &err);

    json_t *checkpoints = json_array();
    for (size_t i = 0; i < count; i++)
        json_array_append_new(checkpoints, json_checkpoint(params[0], &list[i]));
    free(list);
    return http_json(req, MHD_HTTP_OK,
                     json_pack("{s:s, s:s, s:o}", "event", "checkpoint_list", "name", params[0],
                               "checkpoints", checkpoints));
}

enum MHD_Result route_checkpoint_restore(request_t *req, char **params)
{
    enum MHD_Result queued;
    if (!session_param(req, params[0], &queued))
        return queued;

    blink_error_t err = {0};
    blink_session_info_t info;
    if (check_name("snapshot", params[1], &err) < 0 ||
        blink_session_restore(req->server->blink, params[0], params[1], &err) < 0 ||
        blink_session_info(req->server->blink, params[0], &info, &err) < 0)
        return http_fail(req, &err);
    return http_json(req, MHD_HTTP_OK,
                     json_pack("{s:s, s:s, s:s, s:s}", "event", "session_restored", "name",
                               params[0], "snapshot", params[1], "state", info.state));
}

enum MHD_Result route_checkpoint_delete(request_t *req, char **params)
{
    enum MHD_Result queued;
    if (!session_param(req, params[0], &queued))
        return queued;

    blink_error_t err = {0};
    if (check_name("snapshot", params[1], &err) < 0 ||
        blink_session_delete_checkpoint(req->server->blink, params[0], params[1], &err) < 0)
        return http_fail(req, &err);
    return http_json(req, MHD_HTTP_OK,
                     json_pack("{s:s, s:s, s:s}", "event", "checkpoint_deleted", "session",
                               params[0], "name", params[1]));
}

/* POST /api/sessions/{name}/fork {"to": NAME, "snapshot"?: S} (docs/fork.md). */
enum MHD_Result route_session_fork(request_t *req, char **params)
{
    enum MHD_Result queued;
    json_t *body = session_body(req, params[0], &queued);
    if (body == NULL)
        return queued;

    blink_error_t err = {0};
    const char *target = NULL, *snapshot = NULL;
    blink_session_info_t info;
    int rc = 0;
    if (body_string(body, "to", true, &target, &err) < 0 ||
        check_name("session", target, &err) < 0 ||
        body_string(body, "snapshot", false, &snapshot, &err) < 0 ||
        (snapshot && check_name("snapshot", snapshot, &err) < 0))
        rc = -1;
    if (rc == 0)
        rc = blink_session_fork(req->server->blink, params[0], target, snapshot, &err);
    if (rc == 0)
        rc = blink_session_info(req->server->blink, target, &info, &err);
    json_t *event = rc == 0 ? json_pack("{s:s, s:s, s:s, s:o, s:s, s:s}", "event",
                                        "session_forked", "name", target, "source", params[0],
                                        "snapshot", snapshot ? json_string(snapshot) : json_null(),
                                        "image", info.image, "state", info.state)
                            : NULL;
    json_decref(body);
    if (rc < 0)
        return http_fail(req, &err);
    return http_json(req, MHD_HTTP_CREATED, event);
}
