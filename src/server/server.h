/* blink-server: the REST API over libblink (docs in DESIGN.md §1). One file
 * per route group, dispatched from routes.c; http.c holds what every handler
 * needs to read a request and answer it. */
#ifndef BLINK_SERVER_H
#define BLINK_SERVER_H

#include "caps.h"
#include "catalog.h"
#include "internal.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>

/* Caps on what an HTTP client controls: src/common/caps.h. */

/* ---- the server ---- */

typedef struct server {
    blink_t *blink;
    const char *home;

    /* The job queue (runs.c). The catalog handle is used by one thread at a
     * time, so every use holds `lock`; `changed` is broadcast when a job is
     * queued, claimed or finished, and when the server begins to stop. */
    blink_catalog_t *catalog;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    pthread_t *workers;
    unsigned worker_count;
    bool stopping;

    /* Requests between their first byte and their completion (http.c), so
     * that a stop can wait for them after it stopped accepting. */
    unsigned in_flight;
    pthread_cond_t idle;
} server_t;

/* One request, from its first call to the completion callback. */
typedef struct request {
    server_t *server;
    struct MHD_Connection *connection;
    char method[16];
    char *path;          /* copied: logged when the request completes */
    uint64_t started_ms;
    unsigned status;     /* of the response queued, for the log */
    blink_buf_t body;
    bool body_too_large;
} request_t;

/* ---- http.c: answering ---- */

/* Queues `body` (a reference is stolen) as a JSON response. */
enum MHD_Result http_json(request_t *req, unsigned status, json_t *body);
/* Queues {"error": message, "code": name} with the status. */
enum MHD_Result http_error(request_t *req, unsigned status, const char *fmt, ...)
    BLINK_PRINTF(3, 4);
/* Queues the error in `err`, its HTTP status from the one table of codes. */
enum MHD_Result http_fail(request_t *req, const blink_error_t *err);
/* Queues an already built response and records its status. */
enum MHD_Result http_queue(request_t *req, unsigned status, struct MHD_Response *response);

/* Parses the body as a JSON object. On failure queues a 400 and returns
 * NULL with *queued set to the result of queuing it. */
json_t *http_body_object(request_t *req, enum MHD_Result *queued);
/* Optional fields of a request object. A field that is absent leaves *out
 * as it was; one of the wrong type or out of range fails with
 * BLINK_E_INVALID naming the field. `required` makes absence a failure. */
int body_string(json_t *body, const char *key, bool required, const char **out,
                blink_error_t *err);
int body_uint(json_t *body, const char *key, unsigned min, unsigned max, unsigned *out,
              blink_error_t *err);
int body_bool(json_t *body, const char *key, bool *out, blink_error_t *err);
/* Checks a session or snapshot name from a path or a body (400 when bad). */
int check_name(const char *what, const char *name, blink_error_t *err);

/* A query argument, or NULL. */
const char *http_query(request_t *req, const char *key);

/* The MHD callbacks (main.c starts the daemon with them). */
enum MHD_Result http_access(void *cls, struct MHD_Connection *connection, const char *url,
                            const char *method, const char *version, const char *upload_data,
                            size_t *upload_data_size, void **con_cls);
void http_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                    enum MHD_RequestTerminationCode toe);

/* Waits until no request is in flight. */
void http_wait_idle(server_t *server);

/* ---- routes.c ---- */

/* A handler gets the path's variable segments in order ({name}, {snap}...). */
typedef enum MHD_Result (*route_handler_t)(request_t *req, char **params);

enum MHD_Result routes_dispatch(request_t *req);

/* ---- json.c: the shapes the CLI prints (docs/cli.md, docs/archive.md) ---- */

json_t *json_session_info(const blink_session_info_t *info);
json_t *json_checkpoint(const char *session, const blink_checkpoint_info_t *info);
/* The execution_result object of `result` (freed here), with `session` when
 * not NULL. NULL on allocation failure. */
json_t *json_execution_result(blink_result_t *result, const char *session);

/* ---- agent input shared by session runs and queued jobs (runs.c) ---- */

typedef struct agent_request {
    const char *script;    /* host path, or NULL */
    const char *inline_b64; /* script_inline, or NULL */
    unsigned timeout_sec;
    const char *env[SERVER_CAP_ENV];
    size_t env_count;
    char *env_storage[SERVER_CAP_ENV]; /* "K=V" strings owned here */
} agent_request_t;

/* Reads script/script_inline, timeout and env from a request object into
 * *out (which borrows strings from `body`). Fails with BLINK_E_INVALID. */
int agent_request_parse(json_t *body, agent_request_t *out, blink_error_t *err);
void agent_request_clear(agent_request_t *req);

/* Runs the agent of `req` in session `session` (NULL: an ephemeral VM with
 * `image`). An inline agent lives in BLINK_HOME/tmp for the run only. */
int agent_request_run(server_t *server, const agent_request_t *req, const char *session,
                      const char *image, blink_result_t **result, blink_error_t *err);

/* ---- route handlers ---- */

enum MHD_Result route_health(request_t *req, char **params);
enum MHD_Result route_product(request_t *req, char **params);

enum MHD_Result route_sessions_list(request_t *req, char **params);
enum MHD_Result route_sessions_open(request_t *req, char **params);
enum MHD_Result route_session_get(request_t *req, char **params);
enum MHD_Result route_session_remove(request_t *req, char **params);
enum MHD_Result route_session_stop(request_t *req, char **params);
enum MHD_Result route_session_run(request_t *req, char **params);
enum MHD_Result route_checkpoints_create(request_t *req, char **params);
enum MHD_Result route_checkpoints_list(request_t *req, char **params);
enum MHD_Result route_checkpoint_restore(request_t *req, char **params);

enum MHD_Result route_session_export(request_t *req, char **params);
enum MHD_Result route_export_download(request_t *req, char **params);

enum MHD_Result route_runs_queue(request_t *req, char **params);
enum MHD_Result route_runs_get(request_t *req, char **params);
/* status.c */
enum MHD_Result route_runs_list(request_t *req, char **params);
enum MHD_Result route_metrics(request_t *req, char **params);
enum MHD_Result route_status_page(request_t *req, char **params);

/* runs.c: the worker pool. */
int jobs_start(server_t *server, unsigned workers, blink_error_t *err);
/* Wakes long-polls and idle workers; workers finish the job they run. */
void jobs_begin_stop(server_t *server);
void jobs_join(server_t *server);

#endif
