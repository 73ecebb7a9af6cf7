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
#include <poll.h>
#include <pthread.h>
#include <wslay/wslay.h>

/* Caps on what an HTTP client controls: src/common/caps.h. */

typedef struct run_log run_log_t;

/* Upper bounds of the VM boot histogram's buckets, in seconds. */
#define BOOT_BUCKETS 8
extern const double boot_bucket_bounds[BOOT_BUCKETS];

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
    /* Live output of running jobs (logs.c), newest first; `logs_changed`
     * is broadcast when one grows or ends. Under `lock`. */
    run_log_t *logs;
    pthread_cond_t logs_changed;

    /* Boots of VMs this server started (status.c), since it started. */
    uint64_t boot_buckets[BOOT_BUCKETS];
    uint64_t boot_count, boot_sum_ms;

    /* Requests between their first byte and their completion (http.c), so
     * that a stop can wait for them after it stopped accepting. */
    unsigned in_flight;
    pthread_cond_t idle;

    /* Readable once the server stops: attached WebSockets poll it and
     * close (an eventfd nobody reads). */
    int stop_fd;
    int home_lock_fd; /* one server per BLINK_HOME (main.c) */
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
    /* What an upgrade handler takes over; freed with the request if the
     * upgrade never happened (the client left before the 101). */
    void *upgrade;
    void (*upgrade_free)(void *upgrade);
    /* A request whose body the handler streams itself (upload.c). */
    struct upload *upload;
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

/* ---- ws.c: WebSocket connections (RFC 6455; framing by wslay) ---- */

typedef struct ws_conn ws_conn_t;
/* A whole text or binary message from the client. */
typedef void (*ws_message_fn)(ws_conn_t *ws, bool text, const uint8_t *data, size_t len,
                              void *user);
struct ws_conn {
    wslay_event_context_ptr ctx;
    int fd;
    char *extra; /* bytes MHD read past the headers, served first */
    size_t extra_len, extra_off;
    ws_message_fn on_message;
    void *user;
    uint16_t close_code; /* a close waiting for the queued messages, or 0 */
    char close_reason[100];
};

/* Answers the opening handshake with 101 and hands the socket to `handler`
 * (426 when the request is not a version 13 WebSocket upgrade). */
enum MHD_Result ws_accept(request_t *req, MHD_UpgradeHandler handler, void *cls);
int ws_conn_init(ws_conn_t *ws, int fd, const char *extra, size_t extra_len, ws_message_fn on_msg,
                 void *user, blink_error_t *err);
void ws_conn_free(ws_conn_t *ws);
/* Queue a message (copied); sent by ws_io. */
int ws_send(ws_conn_t *ws, bool text, const void *data, size_t len);
/* Queues `object` as a text message; the reference is stolen. */
int ws_send_json(ws_conn_t *ws, json_t *object);
/* Starts the closing handshake (once). */
void ws_close(ws_conn_t *ws, uint16_t code, const char *reason);
/* What to poll the socket for; and the I/O once it is ready (-1: gone). */
short ws_poll_events(ws_conn_t *ws);
int ws_io(ws_conn_t *ws, short revents);
/* True once both sides closed (or the connection broke). */
bool ws_done(ws_conn_t *ws);
/* Bytes queued for the client and not yet sent. */
size_t ws_queued(ws_conn_t *ws);

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
 * `image`). An inline agent lives in BLINK_HOME/tmp for the run only.
 * `log` (may be NULL) receives the output as it comes. */
int agent_request_run(server_t *server, const agent_request_t *req, const char *session,
                      const char *image, run_log_t *log, blink_result_t **result,
                      blink_error_t *err);

/* ---- logs.c: live output of queued runs ---- */

/* A new log for job `id` (NULL when memory runs out: no live log). */
run_log_t *run_log_open(server_t *server, int64_t id);
/* A blink_output_fn: appends output to the log passed as userdata. */
void run_log_output(blink_stream_t stream, const char *data, size_t len, void *userdata);
/* Marks the log ended (readers get the end from the catalog). Lock held. */
void run_log_end(run_log_t *log);
void run_logs_free(server_t *server);
enum MHD_Result route_run_logs(request_t *req, char **params);

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
enum MHD_Result route_session_fork(request_t *req, char **params);

enum MHD_Result route_checkpoint_delete(request_t *req, char **params);

/* executions.c and attach.c */
enum MHD_Result route_session_spawn(request_t *req, char **params);
enum MHD_Result route_execution_attach(request_t *req, char **params);

enum MHD_Result route_session_export(request_t *req, char **params);

/* upload.c: POST /api/import streams its body to disk. */
enum MHD_Result upload_begin(request_t *req);
enum MHD_Result upload_chunk(request_t *req, const char *data, size_t size);
enum MHD_Result route_import(request_t *req, char **params);
/* Removes uploads a killed server left in BLINK_HOME/tmp. */
void upload_reap(const char *home);
enum MHD_Result route_export_download(request_t *req, char **params);

enum MHD_Result route_runs_queue(request_t *req, char **params);
enum MHD_Result route_runs_get(request_t *req, char **params);
/* status.c */
enum MHD_Result route_runs_list(request_t *req, char **params);
enum MHD_Result route_metrics(request_t *req, char **params);
enum MHD_Result route_status_page(request_t *req, char **params);
/* Records a VM boot of `ms` in the histogram (0: no boot, not recorded). */
void metrics_boot(server_t *server, uint64_t ms);
/* Records the boot of session `name` if its VM became ready after
 * `asked_at` (wall ms): a boot caused by the request. */
void metrics_boot_since(server_t *server, const char *name, int64_t asked_at);
/* Wall-clock ms, as the catalog records times. */
int64_t wall_ms(void);

/* runs.c: the worker pool. */
int jobs_start(server_t *server, unsigned workers, blink_error_t *err);
/* Wakes long-polls and idle workers; workers finish the job they run. */
void jobs_begin_stop(server_t *server);
void jobs_join(server_t *server);

#endif
