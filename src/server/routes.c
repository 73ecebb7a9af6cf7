/* The dispatch table: every route of the API, its method and its handler.
 * A path that matches a route under another method is a 405 (with Allow);
 * a path that matches none is a 404. */
#include "server.h"

#include <stdio.h>
#include <string.h>

#define API_PREFIX "/api/"
#define MAX_SEGMENTS 8

/* Patterns are paths below /api: `*` takes one segment as a parameter, a
 * final `**` takes the rest of the path (slashes included) as one, so that
 * its handler, not the router, judges a name such as `../x`. */
static const struct route {
    const char *method;
    const char *pattern;
    route_handler_t handler;
} routes[] = {
    {"GET", "health", route_health},
    {"GET", "product", route_product},
    {"GET", "sessions", route_sessions_list},
    {"POST", "sessions", route_sessions_open},
    {"GET", "sessions/*", route_session_get},
    {"DELETE", "sessions/*", route_session_remove},
    {"POST", "sessions/*/stop", route_session_stop},
    {"POST", "sessions/*/runs", route_session_run},
    {"POST", "sessions/*/checkpoints", route_checkpoints_create},
    {"GET", "sessions/*/checkpoints", route_checkpoints_list},
    {"POST", "sessions/*/checkpoints/*/restore", route_checkpoint_restore},
    {"DELETE", "sessions/*/checkpoints/*", route_checkpoint_delete},
    {"POST", "sessions/*/fork", route_session_fork},
    {"POST", "sessions/*/spawn", route_session_spawn},
    {"GET", "sessions/*/executions/*/attach", route_execution_attach},
    {"POST", "sessions/*/export", route_session_export},
    {"GET", "exports/**", route_export_download},
    {"POST", "import", route_import},
    {"POST", "runs", route_runs_queue},
    {"GET", "runs", route_runs_list},
    {"GET", "runs/*", route_runs_get},
    {"GET", "runs/*/logs", route_run_logs},
};

/* Matches `path` (below /api/) against `pattern`, filling params with
 * pointers into `scratch`, a copy of the path cut at the slashes. */
static bool match(const char *pattern, const char *path, char *scratch, size_t scratch_size,
                  char **params, size_t *param_count)
{
    snprintf(scratch, scratch_size, "%s", path);
    *param_count = 0;
    char *rest = scratch;
    const char *p = pattern;
    for (;;) {
        const char *p_end = strchr(p, '/');
        size_t p_len = p_end ? (size_t)(p_end - p) : strlen(p);
        if (p_len == 2 && strncmp(p, "**", 2) == 0) {
            if (*rest == '\0' || *param_count == MAX_SEGMENTS)
                return false;
            params[(*param_count)++] = rest;
            return true;
        }

        char *slash = strchr(rest, '/');
        size_t len = slash ? (size_t)(slash - rest) : strlen(rest);
        if (len == 0)
            return false; /* an empty segment: "//" or a trailing slash */
        if (p_len == 1 && *p == '*') {
            if (*param_count == MAX_SEGMENTS)
                return false;
            params[(*param_count)++] = rest;
        } else if (len != p_len || strncmp(rest, p, len) != 0) {
            return false;
        }

        if ((p_end == NULL) != (slash == NULL))
            return false;
        if (p_end == NULL)
            return true;
        *slash = '\0';
        rest = slash + 1;
        p = p_end + 1;
    }
}

enum MHD_Result routes_dispatch(request_t *req)
{
    const char *path = req->path;
    bool get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    /* Outside the API: the page for people and the metrics for scrapers. */
    if (strcmp(path, "/") == 0 || strcmp(path, "/metrics") == 0) {
        if (!get)
            return http_error(req, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET");
        return path[1] == '\0' ? route_status_page(req, NULL) : route_metrics(req, NULL);
    }
    if (strncmp(path, API_PREFIX, strlen(API_PREFIX)) != 0)
        return http_error(req, MHD_HTTP_NOT_FOUND, "no route `%s`", path);
    path += strlen(API_PREFIX);

    size_t scratch_size = strlen(path) + 1;
    cleanup_free char *scratch = malloc(scratch_size);
    if (scratch == NULL)
        return MHD_NO;

    /* HEAD is GET without the body, which MHD drops by itself. */
    const char *method = strcmp(req->method, "HEAD") == 0 ? "GET" : req->method;
    char allow[64] = "";
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        char *params[MAX_SEGMENTS];
        size_t count;
        if (!match(routes[i].pattern, path, scratch, scratch_size, params, &count))
            continue;
        if (strcmp(routes[i].method, method) == 0)
            return routes[i].handler(req, params);

        size_t used = strlen(allow);
        snprintf(allow + used, sizeof(allow) - used, "%s%s", used ? ", " : "", routes[i].method);
    }
    if (allow[0] == '\0')
        return http_error(req, MHD_HTTP_NOT_FOUND, "no route `%s`", req->path);

    json_t *body = json_pack("{s:s}", "error", "method not allowed");
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    struct MHD_Response *response =
        text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE) : NULL;
    if (response == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, allow);
    return http_queue(req, MHD_HTTP_METHOD_NOT_ALLOWED, response);
}
