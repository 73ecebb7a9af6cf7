/* POST /api/import: a multipart/form-data upload (RFC 7578) with the part
 * `archive` (a .boxlite file) and optionally `name`. The archive streams
 * through libmicrohttpd's post processor into a private file under
 * BLINK_HOME/tmp, never into memory, and is imported from there as the CLI
 * does (blink_session_import), then removed.
 *
 * The size limit is BLINK_IMPORT_MAX (bytes, K/M/G suffixes; default
 * 16 GiB): a larger announced Content-Length is refused at once, a body
 * that grows past it while streaming is refused when it does. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define UPLOAD_TMP_PREFIX "upload-"
#define DEFAULT_IMPORT_MAX (16ull << 30)
/* The post processor's buffer: parts are handed over in pieces of this. */
#define POST_BUFFER (64u << 10)

struct upload {
    struct MHD_PostProcessor *pp;
    char *path; /* the archive's temp file */
    int fd;
    uint64_t received;
    uint64_t limit;
    char name[64]; /* the `name` part, if any */
    size_t name_len;
    bool has_archive;
    bool too_large;
    bool failed; /* a write failed: errno_saved says why */
    int errno_saved;
    bool bad_field;
};

static uint64_t import_limit(void)
{
    const char *text = getenv("BLINK_IMPORT_MAX");
    if (text == NULL || *text < '0' || *text > '9')
        return DEFAULT_IMPORT_MAX;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    unsigned shift = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
    if (shift)
        end++;
    if (errno || *end != '\0' || n == 0 || n > (1ull << 50) >> shift) {
        log_warn("import", "BLINK_IMPORT_MAX `%s` is not a size; using 16 GiB", text);
        return DEFAULT_IMPORT_MAX;
    }
    return (uint64_t)n << shift;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One piece of one part (MHD_PostDataIterator). */
static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size)
{
    (void)kind, (void)filename, (void)content_type, (void)transfer_encoding, (void)off;
    struct upload *u = cls;
    if (strcmp(key, "name") == 0) {
        if (u->name_len + size >= sizeof(u->name)) {
            u->bad_field = true;
            return MHD_YES;
        }
        memcpy(u->name + u->name_len, data, size);
        u->name_len += size;
        u->name[u->name_len] = '\0';
        return MHD_YES;
    }
    if (strcmp(key, "archive") != 0)
        return MHD_YES; /* other parts are ignored */
    u->has_archive = true;
    if (u->too_large || u->failed)
        return MHD_YES;
    if (write_all(u->fd, data, size) < 0) {
        u->failed = true;
        u->errno_saved = errno;
    }
    return MHD_YES;
}

static void upload_free(struct upload *u)
{
    if (u == NULL)
        return;
    if (u->pp)
        MHD_destroy_post_processor(u->pp);
    if (u->fd >= 0)
        close(u->fd);
    if (u->path)
        unlink(u->path);
    free(u->path);
    free(u);
}

static void upload_free_cb(void *p)
{
    upload_free(p);
}

static bool announced_over(struct MHD_Connection *connection, uint64_t limit)
{
    const char *length = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length == NULL)
        return false;
    errno = 0;
    char *end;
    unsigned long long n = strtoull(length, &end, 10);
    return errno != 0 || end == length || n > limit;
}

enum MHD_Result upload_begin(request_t *req)
{
    struct upload *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return MHD_NO;
    u->fd = -1;
    u->limit = import_limit();
    req->upload = u;
    req->upgrade = u; /* freed with the request, however it ends */
    req->upgrade_free = upload_free_cb;

    if (announced_over(req->connection, u->limit))
        return http_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "archive over %llu bytes",
                          (unsigned long long)u->limit);
    u->pp = MHD_create_post_processor(req->connection, POST_BUFFER, on_part, u);
    if (u->pp == NULL)
        return http_error(req, MHD_HTTP_BAD_REQUEST,
                          "send the archive as multipart/form-data (part `archive`)");

    u->path = blink_strdup_printf("%s/tmp/" UPLOAD_TMP_PREFIX "%d-XXXXXX", req->server->home,
                                  (int)getpid());
    if (u->path == NULL)
        return MHD_NO;
    u->fd = mkostemp(u->path, O_CLOEXEC);
    if (u->fd < 0) {
        blink_error_t err = {0};
        blink_fail(&err, BLINK_E_IO, errno, "create `%s`", u->path);
        free(u->path);
        u->path = NULL;
        return http_fail(req, &err);
    }
    return MHD_YES;
}

enum MHD_Result upload_chunk(request_t *req, const char *data, size_t size)
{
    struct upload *u = req->upload;
    if (u->pp == NULL || u->too_large)
        return MHD_YES; /* an answer is queued, or will be: the rest is dropped */
    /* A stopping server does not wait for a slow upload to end. */
    pthread_mutex_lock(&req->server->lock);
    bool stopping = req->server->stopping;
    pthread_mutex_unlock(&req->server->lock);
    if (stopping) {
        log_warn("import", "server stopping: upload abandoned after %llu bytes",
                 (unsigned long long)u->received);
        return MHD_NO;
    }
    u->received += size;
    if (u->received > u->limit) {
        /* Stop writing and free the disk at once; the 413 goes out when
         * the body ends. */
        u->too_large = true;
        if (ftruncate(u->fd, 0) < 0)
            log_warn("import", "truncate `%s`: %s", u->path, strerror(errno));
        return MHD_YES;
    }
    return MHD_post_process(u->pp, data, size);
}

static enum MHD_Result answer_import(request_t *req, struct upload *u)
{
    if (u->too_large)
        return http_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "archive over %llu bytes",
                          (unsigned long long)u->limit);
    if (u->bad_field)
        return http_error(req, MHD_HTTP_BAD_REQUEST, "field `name` is too long");
    if (!u->has_archive)
        return http_error(req, MHD_HTTP_BAD_REQUEST, "missing the part `archive`");

    blink_error_t err = {0};
    if (u->failed) {
        blink_fail(&err, BLINK_E_IO, u->errno_saved, "write `%s`", u->path);
        return http_fail(req, &err);
    }
    if (u->name_len > 0 && check_name("session", u->name, &err) < 0)
        return http_fail(req, &err);
    close(u->fd);
    u->fd = -1;

    blink_transfer_options_t options = {
        .struct_size = sizeof(options),
        .name = u->name_len > 0 ? u->name : NULL,
    };
    cleanup_free char *imported = NULL;
    blink_session_info_t info;
    log_info("import", "importing an upload of %llu bytes", (unsigned long long)u->received);
    if (blink_session_import(req->server->blink, u->path, &options, &imported, &err) < 0 ||
        blink_session_info(req->server->blink, imported, &info, &err) < 0)
        return http_fail(req, &err);

    json_t *event = json_session_info(&info);
    json_object_set_new(event, "event", json_string("session_imported"));
    return http_json(req, MHD_HTTP_CREATED, event);
}

enum MHD_Result route_import(request_t *req, char **params)
{
    (void)params;
    struct upload *u = req->upload;
    if (u == NULL) /* cannot happen: http.c begins every import as an upload */
        return http_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "no upload");

    enum MHD_Result queued = answer_import(req, u);
    /* Gone before the client reads the answer (MHD sends it after this
     * returns), not only when the request is cleaned up. */
    if (u->path) {
        unlink(u->path);
        free(u->path);
        u->path = NULL;
    }
    return queued;
}

void upload_reap(const char *home)
{
    cleanup_free char *tmp_dir = blink_strdup_printf("%s/tmp", home);
    if (tmp_dir)
        blink_reap_orphans(tmp_dir, UPLOAD_TMP_PREFIX, true);
}
