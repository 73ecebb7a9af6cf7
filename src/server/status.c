/* For people and for monitoring: the list of recent jobs, Prometheus
 * metrics, and the status page (share/blink/status.html, served as is). */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define RECENT_RUNS 50

const double boot_bucket_bounds[BOOT_BUCKETS] = {0.5, 1, 2, 4, 8, 16, 32, 64};

int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void metrics_boot(server_t *server, uint64_t ms)
{
    if (ms == 0)
        return;
    pthread_mutex_lock(&server->lock);
    for (int i = 0; i < BOOT_BUCKETS; i++)
        if ((double)ms / 1000.0 <= boot_bucket_bounds[i])
            server->boot_buckets[i]++;
    server->boot_count++;
    server->boot_sum_ms += ms;
    pthread_mutex_unlock(&server->lock);
}

void metrics_boot_since(server_t *server, const char *name, int64_t asked_at)
{
    blink_session_info_t info;
    if (blink_session_info(server->blink, name, &info, NULL) == 0 && info.started_at >= asked_at)
        metrics_boot(server, (uint64_t)(info.started_at - asked_at) + 1);
}

static json_t *run_summary(const blink_run_row_t *row)
{
    json_t *o = json_pack("{s:I, s:s, s:I}", "id", (json_int_t)row->id, "status", row->status,
                          "created_at", (json_int_t)row->created_at);
    json_object_set_new(o, "started_at",
                        row->started_at ? json_integer(row->started_at) : json_null());
    json_object_set_new(o, "finished_at",
                        row->finished_at ? json_integer(row->finished_at) : json_null());
    json_object_set_new(o, "duration_ms",
                        row->started_at && row->finished_at
                            ? json_integer(row->finished_at - row->started_at)
                            : json_null());
    return o;
}

enum MHD_Result route_runs_list(request_t *req, char **params)
{
    (void)params;
    server_t *server = req->server;
    blink_run_row_t *rows = NULL;
    size_t count = 0;
    blink_error_t err = {0};

    pthread_mutex_lock(&server->lock);
    int rc = blink_catalog_run_recent(server->catalog, RECENT_RUNS, &rows, &count, &err);
    pthread_mutex_unlock(&server->lock);
    if (rc < 0)
        return http_fail(req, &err);

    json_t *list = json_array();
    for (size_t i = 0; i < count; i++) {
        json_array_append_new(list, run_summary(&rows[i]));
        blink_catalog_run_row_clear(&rows[i]);
    }
    free(rows);
    return http_json(req, MHD_HTTP_OK, json_pack("{s:s, s:o}", "event", "run_list", "runs", list));
}

/* Prometheus text exposition format, version 0.0.4. */
enum MHD_Result route_metrics(request_t *req, char **params)
{
    (void)params;
    server_t *server = req->server;
    blink_run_stats_t stats;
    blink_error_t err = {0};

    uint64_t boot_buckets[BOOT_BUCKETS], boot_count, boot_sum_ms;
    pthread_mutex_lock(&server->lock);
    int rc = blink_catalog_run_stats(server->catalog, &stats, &err);
    memcpy(boot_buckets, server->boot_buckets, sizeof(boot_buckets));
    boot_count = server->boot_count;
    boot_sum_ms = server->boot_sum_ms;
    pthread_mutex_unlock(&server->lock);
    blink_session_info_t *sessions = NULL;
    size_t session_count = 0;
    if (rc == 0)
        rc = blink_session_list(server->blink, &sessions, &session_count, &err);
    if (rc < 0)
        return http_fail(req, &err);
    int64_t running_vms = 0;
    for (size_t i = 0; i < session_count; i++)
        running_vms += strcmp(sessions[i].state, "running") == 0;
    free(sessions);

    static const char *const statuses[] = {"queued", "running", "succeeded", "failed"};
    blink_buf_t out = {0};
    char line[256];
#define EMIT(...)                                                                              \
    do {                                                                                       \
        int n = snprintf(line, sizeof(line), __VA_ARGS__);                                     \
        if (n > 0)                                                                             \
            blink_buf_append(&out, line, (size_t)n);                                           \
    } while (0)
    EMIT("# HELP blink_runs Jobs of the run queue by status.\n# TYPE blink_runs gauge\n");
    for (int i = 0; i < 4; i++)
        EMIT("blink_runs{status=\"%s\"} %lld\n", statuses[i],
             (long long)stats.count_by_status[i]);
    EMIT("# HELP blink_run_queue_depth Jobs waiting for a worker.\n"
         "# TYPE blink_run_queue_depth gauge\nblink_run_queue_depth %lld\n",
         (long long)stats.count_by_status[0]);
    EMIT("# HELP blink_running_vms Session VMs running now.\n"
         "# TYPE blink_running_vms gauge\nblink_running_vms %lld\n", (long long)running_vms);
    EMIT("# HELP blink_run_duration_seconds Duration of succeeded jobs.\n"
         "# TYPE blink_run_duration_seconds histogram\n");
    for (int i = 0; i < BLINK_RUN_DURATION_BUCKETS; i++)
        EMIT("blink_run_duration_seconds_bucket{le=\"%g\"} %lld\n",
             (double)blink_run_duration_bounds_ms[i] / 1000.0,
             (long long)stats.duration_buckets[i]);
    EMIT("blink_run_duration_seconds_bucket{le=\"+Inf\"} %lld\n",
         (long long)stats.duration_count);
    EMIT("blink_run_duration_seconds_sum %.3f\n", (double)stats.duration_sum_ms / 1000.0);
    EMIT("blink_run_duration_seconds_count %lld\n", (long long)stats.duration_count);
    EMIT("# HELP blink_vm_boot_seconds Boots of VMs this server started (runs, session opens "
         "and spawns), QEMU start to the guest's Ready, since the server started.\n"
         "# TYPE blink_vm_boot_seconds histogram\n");
    for (int i = 0; i < BOOT_BUCKETS; i++)
        EMIT("blink_vm_boot_seconds_bucket{le=\"%g\"} %llu\n", boot_bucket_bounds[i],
             (unsigned long long)boot_buckets[i]);
    EMIT("blink_vm_boot_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)boot_count);
    EMIT("blink_vm_boot_seconds_sum %.3f\n", (double)boot_sum_ms / 1000.0);
    EMIT("blink_vm_boot_seconds_count %llu\n", (unsigned long long)boot_count);
#undef EMIT

    if (out.data == NULL)
        return MHD_NO;
    struct MHD_Response *response =
        MHD_create_response_from_buffer(out.len, out.data, MHD_RESPMEM_MUST_FREE);
    if (response == NULL) {
        blink_buf_free(&out);
        return MHD_NO;
    }
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4");
    return http_queue(req, MHD_HTTP_OK, response);
}

/* The page lives in the repository (share/blink/status.html): found through
 * $BLINK_STATIC_DIR, then the source tree this server was built from, then
 * the installed data folder. */
static int open_status_page(void)
{
    const char *dirs[] = {getenv("BLINK_STATIC_DIR"), BLINK_SOURCE_STATIC_DIR,
                          BLINK_INSTALLED_STATIC_DIR};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (dirs[i] == NULL || dirs[i][0] == '\0')
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/status.html", dirs[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0)
            return fd;
    }
    return -1;
}

enum MHD_Result route_status_page(request_t *req, char **params)
{
    (void)params;
    int fd = open_status_page();
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        if (fd >= 0)
            close(fd);
        return http_error(req, MHD_HTTP_NOT_FOUND, "status page not installed");
    }
    struct MHD_Response *response = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
    if (response == NULL) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
    return http_queue(req, MHD_HTTP_OK, response);
}
