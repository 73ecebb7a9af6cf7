/* POST /api/sessions/{name}/export and GET /api/exports/{file}: archives
 * are written to BLINK_HOME/exports and served from there, by plain file
 * name only. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define ARCHIVE_SUFFIX ".boxlite"

enum MHD_Result route_session_export(request_t *req, char **params)
{
    blink_error_t err = {0};
    if (check_name("session", params[0], &err) < 0)
        return http_fail(req, &err);

    /* No output path: the library names the archive in BLINK_HOME/exports. */
    blink_transfer_options_t options = {.struct_size = sizeof(options)};
    cleanup_free char *path = NULL;
    uint64_t size = 0;
    if (blink_session_export(req->server->blink, params[0], &options, &path, &size, &err) < 0)
        return http_fail(req, &err);

    const char *slash = strrchr(path, '/');
    const char *file = slash ? slash + 1 : path;
    cleanup_free char *url = blink_strdup_printf("/api/exports/%s", file);
    if (url == NULL)
        return MHD_NO;
    return http_json(req, MHD_HTTP_OK,
                     json_pack("{s:s, s:s, s:s, s:I, s:s}", "event", "session_exported", "name",
                               params[0], "path", path, "size_bytes", (json_int_t)size,
                               "download_url", url));
}

/* A plain archive name: [A-Za-z0-9_.-]+ ending in .boxlite, not starting
 * with a dot. No slash can pass, so the file is in the exports folder. */
static bool archive_name_valid(const char *name)
{
    size_t len = strlen(name);
    size_t suffix = strlen(ARCHIVE_SUFFIX);
    if (len <= suffix || len > 255 || name[0] == '.' ||
        strcmp(name + len - suffix, ARCHIVE_SUFFIX) != 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* A byte range of an RFC 9110 §14.2 Range header. Only a single range is
 * served; several ranges, or a unit other than bytes, get the whole file
 * (a server may ignore Range). Returns 1 for a range, 0 for the whole
 * file, -1 when the range cannot be satisfied. */
static int parse_range(const char *header, uint64_t size, uint64_t *first, uint64_t *last)
{
    static const char unit[] = "bytes=";
    if (header == NULL || strncmp(header, unit, strlen(unit)) != 0 ||
        strchr(header, ',') != NULL)
        return 0;

    const char *spec = header + strlen(unit);
    const char *dash = strchr(spec, '-');
    if (dash == NULL)
        return 0;
    char *end;
    errno = 0;
    if (dash == spec) { /* "-N": the last N bytes */
        unsigned long long n = strtoull(dash + 1, &end, 10);
        if (errno || end == dash + 1 || *end != '\0')
            return 0;
        if (n == 0 || size == 0)
            return -1;
        *first = n >= size ? 0 : size - n;
        *last = size - 1;
        return 1;
    }

    unsigned long long a = strtoull(spec, &end, 10);
    if (errno || end != dash)
        return 0;
    unsigned long long b = size ? size - 1 : 0;
    if (dash[1] != '\0') {
        b = strtoull(dash + 1, &end, 10);
        if (errno || *end != '\0' || b < a)
            return 0;
    }
    if (a >= size)
        return -1;
    *first = a;
    *last = b >= size ? size - 1 : b;
    return 1;
}

static enum MHD_Result unsatisfiable(request_t *req, uint64_t size)
{
    char content_range[64];
    snprintf(content_range, sizeof(content_range), "bytes */%" PRIu64, size);
    static const char body[] = "{\"error\":\"range not satisfiable\"}";
    struct MHD_Response *response =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    if (response == NULL)
        return MHD_NO;
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_RANGE, content_range);
    return http_queue(req, MHD_HTTP_RANGE_NOT_SATISFIABLE, response);
}

enum MHD_Result route_export_download(request_t *req, char **params)
{
    const char *name = params[0];
    if (!archive_name_valid(name))
        return http_error(req, MHD_HTTP_BAD_REQUEST,
                          "invalid export name: a plain [A-Za-z0-9_.-] name ending in .boxlite");

    cleanup_free char *path = blink_strdup_printf("%s/exports/%s", req->server->home, name);
    if (path == NULL)
        return MHD_NO;
    /* O_NOFOLLOW: a symlink placed in exports/ is not followed out of it. */
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    struct stat st;
    if (fd < 0 && (errno == ENOENT || errno == ELOOP))
        return http_error(req, MHD_HTTP_NOT_FOUND, "no export `%s`", name);
    if (fd < 0 || fstat(fd, &st) < 0) {
        blink_error_t err = {0};
        blink_fail(&err, BLINK_E_IO, errno, "open export `%s`", name);
        return http_fail(req, &err);
    }
    if (!S_ISREG(st.st_mode))
        return http_error(req, MHD_HTTP_NOT_FOUND, "no export `%s`", name);

    uint64_t size = (uint64_t)st.st_size, first = 0, last = size ? size - 1 : 0;
    const char *range_header =
        MHD_lookup_connection_value(req->connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE);
    int range = parse_range(range_header, size, &first, &last);
    if (range < 0)
        return unsatisfiable(req, size);
    uint64_t length = range ? last - first + 1 : size;

    /* The response owns the descriptor from here and closes it. */
    struct MHD_Response *response =
        MHD_create_response_from_fd_at_offset64(length, fd, range ? first : 0);
    if (response == NULL)
        return MHD_NO;
    steal_fd(&fd);

    char disposition[300];
    snprintf(disposition, sizeof(disposition), "attachment; filename=\"%s\"", name);
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
    MHD_add_response_header(response, MHD_HTTP_HEADER_ACCEPT_RANGES, "bytes");
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_DISPOSITION, disposition);
    if (range) {
        char content_range[96];
        snprintf(content_range, sizeof(content_range), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64,
                 first, last, size);
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_RANGE, content_range);
        return http_queue(req, MHD_HTTP_PARTIAL_CONTENT, response);
    }
    return http_queue(req, MHD_HTTP_OK, response);
}
