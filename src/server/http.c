/* Reading requests and answering them: the body (capped), JSON responses,
 * errors and the one table that maps Blink's codes to HTTP statuses. */
#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Blink's status codes as HTTP statuses and as the names the CLI prints
 * (docs/cli.md). What a client caused maps to 4xx; the rest is ours. */
static const struct {
    blink_status_t code;
    unsigned http;
    const char *name;
} status_table[] = {
    {BLINK_E_INVALID, MHD_HTTP_BAD_REQUEST, "invalid"},
    {BLINK_E_NOT_FOUND, MHD_HTTP_NOT_FOUND, "not_found"},
    {BLINK_E_EXISTS, MHD_HTTP_CONFLICT, "exists"},
    {BLINK_E_BUSY, MHD_HTTP_CONFLICT, "busy"},
    {BLINK_E_IO, MHD_HTTP_INTERNAL_SERVER_ERROR, "io"},
    {BLINK_E_NO_MEMORY, MHD_HTTP_INTERNAL_SERVER_ERROR, "no_memory"},
    {BLINK_E_PROTOCOL, MHD_HTTP_INTERNAL_SERVER_ERROR, "protocol"},
    {BLINK_E_VM, MHD_HTTP_INTERNAL_SERVER_ERROR, "vm"},
    {BLINK_E_TIMEOUT, MHD_HTTP_INTERNAL_SERVER_ERROR, "timeout"},
    {BLINK_E_MISSING_DEP, MHD_HTTP_INTERNAL_SERVER_ERROR, "missing_dependency"},
    {BLINK_E_PERMISSION, MHD_HTTP_INTERNAL_SERVER_ERROR, "permission"},
    {BLINK_E_NOT_SETUP, MHD_HTTP_INTERNAL_SERVER_ERROR, "not_setup"},
    {BLINK_E_INTERNAL, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal"},
};

enum MHD_Result http_queue(request_t *req, unsigned status, struct MHD_Response *response)
{
    if (response == NULL)
        return MHD_NO; /* MHD closes the connection */

    req->status = status;
    enum MHD_Result queued = MHD_queue_response(req->connection, status, response);
    MHD_destroy_response(response);
    return queued;
}

enum MHD_Result http_json(request_t *req, unsigned status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL) {
        log_error("http", "encode a response to %s %s", req->method, req->path);
        return MHD_NO;
    }

    struct MHD_Response *response =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (response == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return http_queue(req, status, response);
}

enum MHD_Result http_error(request_t *req, unsigned status, const char *fmt, ...)
{
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);

    /* A message may quote what a client sent; JSON needs valid UTF-8. */
    size_t text_len;
    cleanup_free char *text = blink_utf8_sanitize(message, strlen(message), &text_len);
    return http_json(req, status, json_pack("{s:s}", "error", text ? text : "error"));
}

enum MHD_Result http_fail(request_t *req, const blink_error_t *err)
{
    unsigned status = MHD_HTTP_INTERNAL_SERVER_ERROR;
    const char *name = "internal";
    for (size_t i = 0; i < sizeof(status_table) / sizeof(status_table[0]); i++) {
        if (status_table[i].code == err->code) {
            status = status_table[i].http;
            name = status_table[i].name;
        }
    }

    char message[1400];
    blink_error_format(err, message, sizeof(message));
    if (status >= 500)
        log_error("http", "%s %s: %s", req->method, req->path, message);
    size_t text_len;
    cleanup_free char *text = blink_utf8_sanitize(message, strlen(message), &text_len);
    return http_json(req, status,
                     json_pack("{s:s, s:s}", "error", text ? text : "error", "code", name));
}

json_t *http_body_object(request_t *req, enum MHD_Result *queued)
{
    if (req->body.len == 0) {
        *queued = http_error(req, MHD_HTTP_BAD_REQUEST, "missing JSON body");
        return NULL;
    }

    json_error_t jerr;
    json_t *body = json_loadb(req->body.data, req->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL) {
        *queued = http_error(req, MHD_HTTP_BAD_REQUEST, "bad JSON at line %d: %s", jerr.line,
                             jerr.text);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        *queued = http_error(req, MHD_HTTP_BAD_REQUEST, "the body must be a JSON object");
        return NULL;
    }
    return body;
}

int body_string(json_t *body, const char *key, bool required, const char **out,
                blink_error_t *err)
{
    json_t *value = json_object_get(body, key);
    if (value == NULL && required)
        return blink_fail(err, BLINK_E_INVALID, 0, "missing field `%s`", key);
    if (value == NULL)
        return 0;
    if (!json_is_string(value))
        return blink_fail(err, BLINK_E_INVALID, 0, "field `%s` must be a string", key);
    if (strlen(json_string_value(value)) != json_string_length(value))
        return blink_fail(err, BLINK_E_INVALID, 0, "field `%s` holds a NUL byte", key);
    *out = json_string_value(value);
    return 0;
}

int body_uint(json_t *body, const char *key, unsigned min, unsigned max, unsigned *out,
              blink_error_t *err)
{
    json_t *value = json_object_get(body, key);
    if (value == NULL)
        return 0;
    json_int_t n = json_is_integer(value) ? json_integer_value(value) : -1;
    if (n < (json_int_t)min || n > (json_int_t)max)
        return blink_fail(err, BLINK_E_INVALID, 0, "field `%s` must be an integer in %u-%u", key,
                          min, max);
    *out = (unsigned)n;
    return 0;
}

int body_bool(json_t *body, const char *key, bool *out, blink_error_t *err)
{
    json_t *value = json_object_get(body, key);
    if (value == NULL)
        return 0;
    if (!json_is_boolean(value))
        return blink_fail(err, BLINK_E_INVALID, 0, "field `%s` must be true or false", key);
    *out = json_is_true(value);
    return 0;
}

int check_name(const char *what, const char *name, blink_error_t *err)
{
    /* The name is not echoed: it may be any bytes a client sent. */
    if (!blink_name_valid(name))
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "invalid %s name: use 3-32 characters of [A-Za-z0-9_-]", what);
    return 0;
}

const char *http_query(request_t *req, const char *key)
{
    return MHD_lookup_connection_value(req->connection, MHD_GET_ARGUMENT_KIND, key);
}

/* ---- the request's life ---- */

static request_t *request_begin(server_t *server, struct MHD_Connection *connection,
                                const char *url, const char *method)
{
    request_t *req = calloc(1, sizeof(*req));
    if (req == NULL)
        return NULL;
    req->path = strdup(url);
    if (req->path == NULL) {
        free(req);
        return NULL;
    }
    snprintf(req->method, sizeof(req->method), "%s", method);
    req->server = server;
    req->connection = connection;
    req->started_ms = blink_now_ms();

    pthread_mutex_lock(&server->lock);
    server->in_flight++;
    pthread_mutex_unlock(&server->lock);
    return req;
}

/* True when the client announced a body over the cap: it is refused before
 * any of it is read. A body without a length is counted as it arrives. */
static bool announced_too_large(struct MHD_Connection *connection)
{
    const char *length = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length == NULL)
        return false;

    errno = 0;
    char *end;
    unsigned long long n = strtoull(length, &end, 10);
    return errno != 0 || end == length || n > SERVER_CAP_BODY;
}

enum MHD_Result http_access(void *cls, struct MHD_Connection *connection, const char *url,
                            const char *method, const char *version, const char *upload_data,
                            size_t *upload_data_size, void **con_cls)
{
    (void)version;
    request_t *req = *con_cls;

    /* 1. First call: the headers are in. */
    if (req == NULL) {
        req = request_begin(cls, connection, url, method);
        if (req == NULL)
            return MHD_NO;
        *con_cls = req;
        /* An archive upload streams to disk under its own limit. */
        if (strcmp(method, "POST") == 0 && strcmp(url, "/api/import") == 0)
            return upload_begin(req);
        if (announced_too_large(connection))
            return http_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "request body over %u bytes",
                              SERVER_CAP_BODY);
        return MHD_YES;
    }

    /* 2. Body chunks, kept up to the cap and then dropped. */
    if (*upload_data_size > 0 && req->upload) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return upload_chunk(req, upload_data, n);
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->body_too_large)
            return MHD_YES;
        if (req->body.len + n > SERVER_CAP_BODY) {
            req->body_too_large = true;
            blink_buf_free(&req->body);
            return MHD_YES;
        }
        return blink_buf_append(&req->body, upload_data, n) == 0 ? MHD_YES : MHD_NO;
    }

    /* 3. The whole request is in. */
    if (req->body_too_large)
        return http_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "request body over %u bytes",
                          SERVER_CAP_BODY);
    return routes_dispatch(req);
}

/* The path as logged: at most 200 bytes, control bytes shown as '?'. */
static void printable_path(const char *path, char *out, size_t size)
{
    size_t i = 0;
    for (; path[i] != '\0' && i + 1 < size && i < 200; i++) {
        unsigned char c = (unsigned char)path[i];
        out[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    out[i] = '\0';
}

void http_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                    enum MHD_RequestTerminationCode toe)
{
    (void)connection;
    server_t *server = cls;
    request_t *req = *con_cls;
    if (req == NULL)
        return;
    *con_cls = NULL;

    char path[256];
    printable_path(req->path, path, sizeof(path));
    log_info("http", "%s %s %u %llu ms%s", req->method, path, req->status,
             (unsigned long long)(blink_now_ms() - req->started_ms),
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection ended early)");

    if (req->upgrade)
        req->upgrade_free(req->upgrade);
    blink_buf_free(&req->body);
    free(req->path);
    free(req);

    pthread_mutex_lock(&server->lock);
    if (--server->in_flight == 0)
        pthread_cond_broadcast(&server->idle);
    pthread_mutex_unlock(&server->lock);
}

void http_wait_idle(server_t *server)
{
    pthread_mutex_lock(&server->lock);
    while (server->in_flight > 0)
        pthread_cond_wait(&server->idle, &server->lock);
    pthread_mutex_unlock(&server->lock);
}
