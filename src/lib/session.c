/* Sessions: a named VM with a persistent qcow2 disk over its image.
 *
 * Files: BLINK_HOME/sessions/NAME/{disk.qcow2, shim.sock, shim.log}, and the
 * lock BLINK_HOME/locks/NAME.lock. The catalog row is the commit point: a
 * session exists when its row does. A folder without a row is debris of an
 * interrupted open or remove and is cleared by the next open of that name.
 *
 * Lifecycle changes (open, start, stop, remove) hold the session's lock, so
 * two processes never start two VMs on one disk. Runs on a warm session go
 * through its shim concurrently; runs on a cold session hold the lock for the
 * whole boot-run-shutdown, so they are serialized. */
#include "agent.h"
#include "catalog.h"
#include "context.h"
#include "layers.h"
#include "result.h"
#include "session.h"
#include "shim_client.h"
#include "vhub_carrier.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#define LOCK_WAIT_MS  120000
#define STOP_GRACE_MS 15000
/* Longest wait for a boot whose starter died (BLINK_BOOT_TIMEOUT's default
 * is 60 s; loading the image and kernel may add to it). */
#define ORPHAN_BOOT_WAIT_MS 180000
#define EXEC_ID       1

bool blink_name_valid(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    return len >= 3 && len <= 32 &&
           strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == len;
}

void session_ctx_close(session_ctx_t *s)
{
    if (s->lock_fd >= 0)
        close(s->lock_fd); /* releases the flock */
    s->lock_fd = -1;
    blink_catalog_close(s->catalog);
    s->catalog = NULL;
    free(s->dir);
    free(s->disk);
    free(s->socket);
    s->dir = s->disk = s->socket = NULL;
}

int session_ctx_open(blink_t *blink, const char *name, session_ctx_t *s, blink_error_t *err)
{
    memset(s, 0, sizeof(*s));
    s->lock_fd = -1;
    s->blink = blink;
    s->name = name;
    if (!blink_name_valid(name))
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "session name `%.40s`: use 3-32 of [A-Za-z0-9_-]", name ? name : "");

    cleanup_free char *db = blink_strdup_printf("%s/blink.db", blink->home);
    s->dir = blink_strdup_printf("%s/sessions/%s", blink->home, name);
    s->disk = blink_strdup_printf("%s/sessions/%s/disk.qcow2", blink->home, name);
    s->socket = blink_strdup_printf("%s/sessions/%s/shim.sock", blink->home, name);
    if (db == NULL || s->dir == NULL || s->disk == NULL || s->socket == NULL) {
        session_ctx_close(s);
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "open session");
    }
    if (blink_catalog_open(db, &s->catalog, err) < 0) {
        session_ctx_close(s);
        return -1;
    }
    return 0;
}

/* Takes the session's lock, waiting while another process holds it. */
int session_ctx_lock(session_ctx_t *s, blink_error_t *err)
{
    cleanup_free char *dir = blink_strdup_printf("%s/locks", s->blink->home);
    cleanup_free char *path = blink_strdup_printf("%s/locks/%s.lock", s->blink->home, s->name);
    if (dir == NULL || path == NULL || blink_mkdir_p(dir, 0700, err) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "lock session `%s`", s->name);

    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0)
        return blink_fail(err, BLINK_E_IO, errno, "lock session `%s`", s->name);
    uint64_t deadline = blink_now_ms() + LOCK_WAIT_MS;
    while (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK && errno != EINTR)
            return blink_fail(err, BLINK_E_IO, errno, "lock session `%s`", s->name);
        if (blink_now_ms() >= deadline)
            return blink_fail(err, BLINK_E_BUSY, 0, "session `%s` is busy", s->name);
        usleep(50 * 1000);
    }
    return 0;
}

/* True if `pid` is this session's shim: alive, ours to see, and running
 * blink-shim for this name. The catalog's pid alone is not enough: after a
 * crash the number may belong to any other process by now. */
static bool shim_alive(int64_t pid, const char *name)
{
    if (pid <= 1 || (kill((pid_t)pid, 0) < 0 && errno != EPERM))
        return false;

    char path[64];
    snprintf(path, sizeof(path), "/proc/%lld/cmdline", (long long)pid);
    size_t len = 0;
    cleanup_free char *cmdline = blink_read_file(path, 65536, &len, NULL);
    if (cmdline == NULL || len == 0)
        return false; /* gone, or a zombie */

    const char *argv0 = cmdline;
    const char *base = strrchr(argv0, '/');
    if (strcmp(base ? base + 1 : argv0, "blink-shim") != 0)
        return false;
    for (size_t i = 0; i + 1 < len;) {
        const char *arg = cmdline + i;
        size_t arg_len = strlen(arg);
        if (strcmp(arg, "--name") == 0 && i + arg_len + 1 < len &&
            strcmp(arg + arg_len + 1, name) == 0)
            return true;
        i += arg_len + 1;
    }
    return false;
}

static void mark_crashed(session_ctx_t *s, blink_session_row_t *row)
{
    snprintf(row->last_end, sizeof(row->last_end), "crash: the vm's shim (pid %lld) died",
             (long long)row->shim_pid);
    snprintf(row->state, sizeof(row->state), "%s", BLINK_STATE_CRASHED);
    row->shim_pid = row->qemu_pid = row->started_at = 0;
    row->boot_id[0] = '\0';
    blink_error_t ignored;
    blink_catalog_session_set_state(s->catalog, row, &ignored);
    unlink(s->socket);
}

/* The truth about a session: a row that says running while its shim is gone
 * was a crash (the shim, or QEMU with it, was killed). A row that says
 * starting belongs to whoever holds the lock; without the lock, a command
 * that only looks (ls, info) leaves such a row alone. */
static void reconcile(session_ctx_t *s, blink_session_row_t *row)
{
    bool live_state = strcmp(row->state, BLINK_STATE_RUNNING) == 0 ||
                      strcmp(row->state, BLINK_STATE_STARTING) == 0;
    if (!live_state || shim_alive(row->shim_pid, s->name))
        return;
    if (s->lock_fd >= 0) {
        mark_crashed(s, row);
        return;
    }

    cleanup_free char *path = blink_strdup_printf("%s/locks/%s.lock", s->blink->home, s->name);
    cleanup_close int fd = path ? open(path, O_RDWR | O_CLOEXEC) : -1;
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0)
        return; /* someone is starting or stopping it right now */
    blink_session_row_t fresh;
    if (blink_catalog_session_get(s->catalog, s->name, &fresh, NULL) == 0) {
        *row = fresh;
        live_state = strcmp(row->state, BLINK_STATE_RUNNING) == 0 ||
                     strcmp(row->state, BLINK_STATE_STARTING) == 0;
        if (live_state && !shim_alive(row->shim_pid, s->name))
            mark_crashed(s, row);
    }
}

bool session_is_running(session_ctx_t *s, blink_session_row_t *row)
{
    reconcile(s, row);
    return strcmp(row->state, BLINK_STATE_RUNNING) == 0;
}

static char *shim_path(void)
{
    const char *env = getenv("BLINK_SHIM");
    if (env && *env)
        return strdup(env);

    /* Beside the running program (an install), or in the build tree's
     * src/shim next to src/cli. */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            char *candidates[] = {blink_strdup_printf("%s/blink-shim", exe),
                                  blink_strdup_printf("%s/../shim/blink-shim", exe)};
            for (int i = 0; i < 2; i++) {
                if (candidates[i] && access(candidates[i], X_OK) == 0) {
                    free(candidates[1 - i]);
                    return candidates[i];
                }
            }
            free(candidates[0]);
            free(candidates[1]);
        }
    }
    return strdup(BLINK_LIBEXECDIR "/blink/blink-shim");
}

/* Starts the shim detached from us (double fork, new session) and waits for
 * its ready line. Called with the lock held. */
static int start_shim(session_ctx_t *s, const blink_session_row_t *row, blink_error_t *err)
{
    cleanup_free char *shim = shim_path();
    cleanup_free char *log = blink_strdup_printf("%s/shim.log", s->dir);
    char memory[16], cpus[16], ready_arg[16];
    int ready[2];

    if (shim == NULL || log == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "start session vm");
    if (access(shim, X_OK) < 0)
        return blink_fail(err, BLINK_E_MISSING_DEP, errno, "find blink-shim at `%s`", shim);
    if (pipe2(ready, O_CLOEXEC) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "start session vm");
    snprintf(memory, sizeof(memory), "%u", row->memory_mib);
    snprintf(cpus, sizeof(cpus), "%u", row->cpus);
    snprintf(ready_arg, sizeof(ready_arg), "%d", 3);
    char *argv[] = {shim,
                    "--home",
                    s->blink->home,
                    "--name",
                    (char *)s->name,
                    "--memory",
                    memory,
                    "--cpus",
                    cpus,
                    "--ready-fd",
                    ready_arg,
                    row->warm ? "--warm" : "--cold",
                    s->loadvm ? "--loadvm" : NULL,
                    (char *)s->loadvm,
                    NULL};

    pid_t child = fork();
    if (child < 0) {
        int e = errno;
        close(ready[0]);
        close(ready[1]);
        return blink_fail(err, BLINK_E_IO, e, "start session vm");
    }
    if (child == 0) {
        setsid();
        if (fork() != 0)
            _exit(0);
        int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        int out = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (devnull < 0 || out < 0 || dup2(devnull, 0) < 0 || dup2(out, 1) < 0 ||
            dup2(out, 2) < 0 || dup2(ready[1], 3) < 0)
            _exit(127);
        execv(argv[0], argv);
        _exit(127);
    }
    close(ready[1]);
    waitpid(child, NULL, 0);

    char line[1400] = "";
    size_t len = 0;
    for (;;) {
        ssize_t n = read(ready[0], line + len, sizeof(line) - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == sizeof(line) - 1)
            break;
    }
    close(ready[0]);
    line[len] = '\0';
    line[strcspn(line, "\n")] = '\0';

    if (strncmp(line, "ok ", 3) == 0)
        return 0;
    if (strncmp(line, "error ", 6) == 0)
        return blink_fail(err, BLINK_E_VM, 0, "start session `%s`: %s", s->name, line + 6);
    return blink_fail(err, BLINK_E_VM, 0, "start session `%s`: the shim died (see `%s`)", s->name,
                      log);
}

/* Makes sure the session's VM runs, booting it if needed. Lock held. */
int session_ensure_running(session_ctx_t *s, blink_session_row_t *row, blink_error_t *err)
{
    reconcile(s, row);
    /* A live shim still booting, though we hold the lock: the command that
     * started it died. Its VM is coming up; wait for it, not start another
     * on the same disk. */
    uint64_t deadline = blink_now_ms() + ORPHAN_BOOT_WAIT_MS;
    while (strcmp(row->state, BLINK_STATE_STARTING) == 0 && row->shim_pid > 0 &&
           blink_now_ms() < deadline) {
        nanosleep(&(struct timespec){.tv_nsec = 100 * 1000 * 1000}, NULL);
        if (blink_catalog_session_get(s->catalog, s->name, row, err) < 0)
            return -1;
        reconcile(s, row);
    }
    if (strcmp(row->state, BLINK_STATE_STARTING) == 0 && row->shim_pid > 0)
        return blink_fail(err, BLINK_E_BUSY, 0, "session `%s` is still starting (shim pid %lld)",
                          s->name, (long long)row->shim_pid);
    if (strcmp(row->state, BLINK_STATE_RUNNING) == 0) {
        blink_shim_conn_t probe;
        if (blink_shim_connect(s->socket, &probe, NULL) == 0) {
            blink_shim_disconnect(&probe);
            return 0;
        }
        /* A live pid without a socket: not our shim anymore. */
        log_warn("session", "session `%s`: shim pid %lld does not answer; restarting", s->name,
                 (long long)row->shim_pid);
    }

    snprintf(row->state, sizeof(row->state), "%s", BLINK_STATE_STARTING);
    if (blink_catalog_session_set_state(s->catalog, row, err) < 0)
        return -1;
    if (start_shim(s, row, err) < 0) {
        blink_error_t ignored;
        if (blink_catalog_session_get(s->catalog, s->name, row, &ignored) == 0 &&
            strcmp(row->state, BLINK_STATE_STARTING) == 0) {
            snprintf(row->state, sizeof(row->state), "%s", BLINK_STATE_CRASHED);
            blink_catalog_session_set_state(s->catalog, row, &ignored);
        }
        return -1;
    }
    return blink_catalog_session_get(s->catalog, s->name, row, err);
}

/* Asks the shim to stop the VM and waits for the shim to exit. Lock held. */
int session_stop_vm(session_ctx_t *s, blink_session_row_t *row, blink_error_t *err)
{
    reconcile(s, row);
    if (strcmp(row->state, BLINK_STATE_RUNNING) != 0 &&
        strcmp(row->state, BLINK_STATE_STARTING) != 0)
        return 0;

    blink_shim_conn_t conn;
    if (blink_shim_connect(s->socket, &conn, NULL) == 0) {
        blink_shim_send(&conn, BLIN_SHIM_STOP, 0, NULL, 0, NULL);
        blink_shim_disconnect(&conn);
    } else if (shim_alive(row->shim_pid, s->name)) {
        kill((pid_t)row->shim_pid, SIGTERM);
    }

    uint64_t deadline = blink_now_ms() + STOP_GRACE_MS;
    while (shim_alive(row->shim_pid, s->name) && blink_now_ms() < deadline)
        usleep(20 * 1000);
    if (shim_alive(row->shim_pid, s->name)) {
        log_warn("session", "session `%s`: shim did not stop; killing it", s->name);
        kill((pid_t)row->shim_pid, SIGKILL); /* QEMU follows: PR_SET_PDEATHSIG */
        while (shim_alive(row->shim_pid, s->name) && blink_now_ms() < deadline + 5000)
            usleep(20 * 1000);
    }

    if (blink_catalog_session_get(s->catalog, s->name, row, err) < 0)
        return -1;
    if (strcmp(row->state, BLINK_STATE_STOPPED) != 0) {
        snprintf(row->state, sizeof(row->state), "%s", BLINK_STATE_STOPPED);
        row->shim_pid = row->qemu_pid = row->started_at = 0;
        row->boot_id[0] = '\0';
        if (row->last_end[0] == '\0' || strncmp(row->last_end, "crash", 5) != 0)
            snprintf(row->last_end, sizeof(row->last_end), "killed after the stop grace period");
        blink_catalog_session_set_state(s->catalog, row, err);
    }
    unlink(s->socket);
    return 0;
}

static int create_disk(session_ctx_t *s, const char *base, unsigned size_gib, blink_error_t *err)
{
    cleanup_free char *qemu_img = blink_find_program("qemu-img");
    cleanup_free char *backing = realpath(base, NULL);
    cleanup_free char *tmp = blink_strdup_printf("%s.tmp", s->disk);
    if (qemu_img == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img: install the Debian package `qemu-utils`");
    if (backing == NULL || tmp == NULL)
        return blink_fail(err, BLINK_E_IO, errno, "resolve image `%s`", base);

    if (size_gib) {
        /* A disk smaller than its image would cut the filesystem short. */
        cleanup_free char *info = NULL;
        char *info_argv[] = {qemu_img, "info", "--output=json", "-U", backing, NULL};
        if (blink_run_program_output(info_argv, &info, 1 << 20, err) < 0)
            return -1;
        json_t *parsed = json_loads(info, 0, NULL);
        json_int_t virtual_size = json_integer_value(json_object_get(parsed, "virtual-size"));
        json_decref(parsed);
        if ((uint64_t)virtual_size > ((uint64_t)size_gib << 30))
            return blink_fail(
                err, BLINK_E_INVALID, 0, "disk size %u GiB is smaller than the image's %llu GiB",
                size_gib, (unsigned long long)(((uint64_t)virtual_size + (1u << 30) - 1) >> 30));
    }

    char size[32];
    snprintf(size, sizeof(size), "%uG", size_gib);
    char *argv[] = {qemu_img,
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-F",
                    "qcow2",
                    "-b",
                    backing,
                    tmp,
                    size_gib ? size : NULL,
                    NULL};
    if (blink_run_program(argv, err) < 0) {
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, s->disk) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "create disk `%s`", s->disk);
    return 0;
}

/* Keeps the session's hub (docs/vhub.md): the option, else the
 * environment's; nothing when neither names one. */
static int save_vhub(session_ctx_t *s, const char *option, blink_error_t *err)
{
    cleanup_free char *hub = NULL;
    if (blink_vhub_resolve(option, &hub, err) < 0)
        return -1;
    return hub ? blink_vhub_save(s->dir, hub, err) : 0;
}

int blink_session_open(blink_t *blink, const char *name, const blink_session_options_t *options,
                       bool *created, blink_error_t *err)
{
    blink_session_options_t defaults = {.struct_size = sizeof(defaults)};
    const blink_session_options_t *o = options ? options : &defaults;
    session_ctx_t s;
    blink_session_row_t row;
    char *base = NULL;
    int rc = -1;

    if (created)
        *created = false;
    if (o->memory_mib != 0 && (o->memory_mib < 128 || o->memory_mib > 65536))
        return blink_fail(err, BLINK_E_INVALID, 0, "memory %u MiB: use 128-65536", o->memory_mib);
    if (o->cpus > 64)
        return blink_fail(err, BLINK_E_INVALID, 0, "cpus %u: use 1-64", o->cpus);
    bool has_disk_size = o->struct_size >= offsetof(blink_session_options_t, disk_size_gib) +
                                               sizeof(o->disk_size_gib);
    unsigned disk_size_gib = has_disk_size ? o->disk_size_gib : 0;
    if (disk_size_gib > 1024)
        return blink_fail(err, BLINK_E_INVALID, 0, "disk size %u GiB: use 1-1024", disk_size_gib);
    if (session_ctx_open(blink, name, &s, err) < 0 || session_ctx_lock(&s, err) < 0)
        goto out;

    bool has_vhub = o->struct_size >= offsetof(blink_session_options_t, vhub_socket) +
                                          sizeof(o->vhub_socket);
    const char *vhub_option = has_vhub ? o->vhub_socket : NULL;
    if (blink_catalog_session_get(s.catalog, name, &row, NULL) == 0) {
        /* exists: changes nothing but a hub given now, for its next start */
        rc = vhub_option ? save_vhub(&s, vhub_option, err) : 0;
        goto out;
    }

    base = blink_image_disk(blink, o->image, err);
    if (base == NULL)
        goto out;

    /* Debris of an interrupted open or remove has no row: clear it. */
    blink_remove_tree(s.dir);
    if (blink_mkdir_p(s.dir, 0700, err) < 0 || create_disk(&s, base, disk_size_gib, err) < 0 ||
        save_vhub(&s, vhub_option, err) < 0)
        goto fail_files;

    memset(&row, 0, sizeof(row));
    snprintf(row.name, sizeof(row.name), "%s", name);
    snprintf(row.image, sizeof(row.image), "%s", o->image ? o->image : BLINK_DEFAULT_IMAGE);
    snprintf(row.state, sizeof(row.state), "%s", BLINK_STATE_STOPPED);
    row.warm = o->warm;
    row.memory_mib = o->memory_mib ? o->memory_mib : 512;
    row.cpus = o->cpus ? o->cpus : 1;
    row.disk_size_gib = disk_size_gib;
    if (blink_catalog_session_insert(s.catalog, &row, err) < 0)
        goto fail_files;
    if (created)
        *created = true;

    rc = o->warm ? session_ensure_running(&s, &row, err) : 0;
    if (rc < 0) {
        /* A session that could not start as asked is not left behind. */
        blink_error_t ignored;
        blink_catalog_session_delete(s.catalog, name, &ignored);
        if (created)
            *created = false;
        goto fail_files;
    }
    goto out;

fail_files:
    blink_remove_tree(s.dir);
out:
    free(base);
    session_ctx_close(&s);
    return rc;
}

/* ---- running an agent through the shim ---- */

static atomic_uint transfer_counter;

static int send_agent(blink_shim_conn_t *conn, int fd, uint64_t size, const char *guest_path,
                      blink_error_t *err)
{
    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_string(&w, guest_path);
    blin_put_u32(&w, 0755);
    blin_put_u64(&w, size);
    int rc = w.failed ? blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "encode file")
                      : blink_shim_send(conn, BLIN_CTL_FILE_BEGIN, EXEC_ID, w.data, w.len, err);
    blin_writer_free(&w);
    if (rc < 0)
        return -1;

    cleanup_free char *buf = malloc(BLINK_CAP_FILE_CHUNK);
    if (buf == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "read agent");
    for (uint64_t sent = 0; sent < size;) {
        ssize_t n = read(fd, buf, BLINK_CAP_FILE_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || (uint64_t)n > size - sent)
            return blink_fail(err, BLINK_E_IO, n < 0 ? errno : 0,
                              "read agent: the file changed while it was sent");
        if (blink_shim_send(conn, BLIN_CTL_FILE_DATA, EXEC_ID, buf, (size_t)n, err) < 0)
            return -1;
        sent += (uint64_t)n;
    }
    return 0;
}

/* Streams the execution's frames into `result` until its Exit. */
static int collect(blink_shim_conn_t *conn, const blink_run_options_t *o, blink_result_t *result,
                   blink_error_t *err)
{
    uint64_t start = blink_now_ms();
    for (;;) {
        blin_header_t h;
        const uint8_t *payload;
        if (blink_shim_recv(conn, -1, &h, &payload, err) <= 0)
            return blink_wrap(err, "run agent");
        if (h.request_id != EXEC_ID)
            continue;

        if (h.type == BLIN_STDOUT || h.type == BLIN_STDERR) {
            blink_stream_t stream = h.type == BLIN_STDOUT ? BLINK_STDOUT : BLINK_STDERR;
            if (o->on_output)
                o->on_output(stream, (const char *)payload, h.length, o->userdata);
            if (blink_result_append(result, stream, (const char *)payload, h.length) < 0)
                return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "keep agent output");
        } else if (h.type == BLIN_CTL_EXIT) {
            uint32_t flags;
            if (blink_exit_frame_parse(payload, h.length, &result->exit_code, &result->signal,
                                       &flags, err) < 0)
                return -1;
            result->oom_killed = (flags & BLIN_EXIT_OOM) != 0;
            result->timed_out = (flags & BLIN_EXIT_TIMED_OUT) != 0;
            result->duration_ms = blink_now_ms() - start;
            return 0;
        } else if (h.type == BLIN_ERROR) {
            char text[512];
            blink_error_frame_text(payload, h.length, text, sizeof(text));
            return blink_fail(err, BLINK_E_VM, 0, "run agent: %s", text);
        }
    }
}

static int run_via_shim(session_ctx_t *s, const char *agent_path, const blink_run_options_t *o,
                        int agent_fd, uint64_t agent_size, blink_result_t *result,
                        blink_error_t *err)
{
    blink_shim_conn_t conn;
    if (blink_shim_connect(s->socket, &conn, err) < 0)
        return blink_wrap(err, "session `%s`", s->name);

    cleanup_free char *dir = blink_strdup_printf("/run/blink/agents/%d-%u", (int)getpid(),
                                                 atomic_fetch_add(&transfer_counter, 1));
    cleanup_free char *guest_path = dir ? blink_agent_guest_path(agent_path, dir) : NULL;
    blin_writer_t exec;
    int rc = -1;
    if (guest_path == NULL) {
        blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "name agent");
        goto out;
    }

    /* 1. the agent file, confirmed before the Exec that needs it */
    if (send_agent(&conn, agent_fd, agent_size, guest_path, err) < 0)
        goto out;
    for (;;) {
        blin_header_t h;
        const uint8_t *payload;
        if (blink_shim_recv(&conn, -1, &h, &payload, err) <= 0)
            goto out;
        if (h.request_id == EXEC_ID && h.type == BLIN_CTL_FILE_DONE)
            break;
        if (h.request_id == EXEC_ID && h.type == BLIN_ERROR) {
            char text[512];
            blink_error_frame_text(payload, h.length, text, sizeof(text));
            blink_fail(err, BLINK_E_VM, 0, "send agent: %s", text);
            goto out;
        }
    }

    /* 2. the timeout, enforced by the shim, then the Exec */
    uint8_t timeout[4] = {(uint8_t)o->timeout_sec, (uint8_t)(o->timeout_sec >> 8),
                          (uint8_t)(o->timeout_sec >> 16), (uint8_t)(o->timeout_sec >> 24)};
    if (blink_shim_send(&conn, BLIN_SHIM_EXEC_OPTIONS, EXEC_ID, timeout, 4, err) < 0 ||
        blink_agent_exec_payload(&exec, guest_path, o, err) < 0)
        goto out;
    rc = blink_shim_send(&conn, BLIN_CTL_EXEC, EXEC_ID, exec.data, exec.len, err);
    blin_writer_free(&exec);

    /* 3. output until exit */
    if (rc == 0)
        rc = collect(&conn, o, result, err);
out:
    blink_shim_disconnect(&conn);
    return rc;
}

int blink_session_run(blink_t *blink, const char *name, const char *agent_path,
                      const blink_run_options_t *options, blink_result_t **result,
                      blink_error_t *err)
{
    blink_run_options_t defaults = {.struct_size = sizeof(defaults)};
    const blink_run_options_t *o = options ? options : &defaults;
    session_ctx_t s;
    blink_session_row_t row;
    blink_result_t *r = NULL;
    uint64_t size = 0;
    int fd = -1, rc = -1;

    *result = NULL;
    if (agent_path == NULL)
        return blink_fail(err, BLINK_E_INVALID, 0, "run: no agent path");
    if (blink_agent_check_options(o, err) < 0)
        return -1;
    if (o->image || o->memory_mib || o->cpus)
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "image, memory and cpus belong to the session: set them on open");
    if (session_ctx_open(blink, name, &s, err) < 0)
        return -1;
    if ((fd = blink_agent_open(agent_path, &size, err)) < 0 || session_ctx_lock(&s, err) < 0)
        goto out;
    /* The shim records when the guest became ready: later than this only
     * if this run booted the VM. */
    int64_t asked_at = (int64_t)(blink_wall_ns() / 1000000);
    if (blink_catalog_session_get(s.catalog, name, &row, err) < 0 ||
        session_ensure_running(&s, &row, err) < 0)
        goto out;
    uint64_t boot_ms = row.started_at >= asked_at ? (uint64_t)(row.started_at - asked_at) : 0;

    /* A warm session serves runs concurrently; let others in. */
    if (row.warm) {
        close(s.lock_fd);
        s.lock_fd = -1;
    }

    r = blink_result_new(o->output_cap ? o->output_cap : BLINK_DEFAULT_OUTPUT_CAP);
    if (r == NULL) {
        blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "allocate result");
        goto out;
    }
    r->boot_ms = boot_ms;
    rc = run_via_shim(&s, agent_path, o, fd, size, r, err);

    if (!row.warm) {
        blink_error_t stop_err;
        if (session_stop_vm(&s, &row, &stop_err) < 0)
            log_warn("session", "stop session `%s`: %s", name, stop_err.message);
    }
    if (rc == 0) {
        *result = r;
        r = NULL;
    }
out:
    blink_result_free(r);
    if (fd >= 0)
        close(fd);
    session_ctx_close(&s);
    return rc;
}

/* ---- stop, remove, info, list ---- */

int blink_session_stop(blink_t *blink, const char *name, blink_error_t *err)
{
    session_ctx_t s;
    blink_session_row_t row;
    int rc = -1;
    if (session_ctx_open(blink, name, &s, err) == 0 && session_ctx_lock(&s, err) == 0 &&
        blink_catalog_session_get(s.catalog, name, &row, err) == 0)
        rc = session_stop_vm(&s, &row, err);
    session_ctx_close(&s);
    return rc;
}

int blink_session_remove(blink_t *blink, const char *name, bool force, blink_error_t *err)
{
    session_ctx_t s;
    blink_session_row_t row;
    int64_t active = 0;
    int rc = -1;

    if (session_ctx_open(blink, name, &s, err) < 0 || session_ctx_lock(&s, err) < 0)
        goto out;
    if (blink_catalog_session_get(s.catalog, name, &row, err) < 0) {
        /* No session, but maybe the folder of an interrupted open, fork
         * or import of that name: removing the name clears it too. */
        if (err->code == BLINK_E_NOT_FOUND && blink_remove_tree(s.dir) == 0)
            layers_collect(blink, s.catalog);
        goto out;
    }
    reconcile(&s, &row);
    bool running = strcmp(row.state, BLINK_STATE_RUNNING) == 0;
    if (running && blink_catalog_execution_active(s.catalog, name, &active, err) < 0)
        goto out;
    if (active > 0 && !force) {
        blink_fail(err, BLINK_E_BUSY, 0,
                   "session `%s` has %lld running execution(s): wait, or remove with --force", name,
                   (long long)active);
        goto out;
    }
    if (session_stop_vm(&s, &row, err) < 0)
        goto out;

    /* The row goes first: once it is gone the session is gone, and the
     * files left by a crash right here are cleared by the next open. */
    if (blink_catalog_session_delete(s.catalog, name, err) < 0)
        goto out;
    blink_remove_tree(s.dir);
    layers_collect(blink, s.catalog); /* the layers only it stood on */
    rc = 0;
out:
    session_ctx_close(&s);
    return rc;
}

static void row_to_info(const blink_session_row_t *row, blink_session_info_t *info)
{
    memset(info, 0, sizeof(*info));
    snprintf(info->name, sizeof(info->name), "%s", row->name);
    snprintf(info->image, sizeof(info->image), "%s", row->image);
    snprintf(info->state, sizeof(info->state), "%s", row->state);
    info->warm = row->warm;
    info->memory_mib = row->memory_mib;
    info->cpus = row->cpus;
    info->disk_size_gib = row->disk_size_gib;
    info->shim_pid = row->shim_pid;
    info->qemu_pid = row->qemu_pid;
    snprintf(info->boot_id, sizeof(info->boot_id), "%s", row->boot_id);
    snprintf(info->last_end, sizeof(info->last_end), "%s", row->last_end);
    info->created_at = row->created_at;
    info->started_at = row->started_at;
}

int blink_session_info(blink_t *blink, const char *name, blink_session_info_t *info,
                       blink_error_t *err)
{
    session_ctx_t s;
    blink_session_row_t row;
    int rc = -1;
    if (session_ctx_open(blink, name, &s, err) == 0 &&
        blink_catalog_session_get(s.catalog, name, &row, err) == 0) {
        reconcile(&s, &row);
        row_to_info(&row, info);
        rc = 0;
    }
    session_ctx_close(&s);
    return rc;
}

int blink_session_list(blink_t *blink, blink_session_info_t **list, size_t *count,
                       blink_error_t *err)
{
    cleanup_free char *db = blink_strdup_printf("%s/blink.db", blink->home);
    blink_catalog_t *catalog = NULL;
    blink_session_row_t *rows = NULL;
    size_t n = 0;

    *list = NULL;
    *count = 0;
    if (db == NULL || blink_catalog_open(db, &catalog, err) < 0 ||
        blink_catalog_session_list(catalog, &rows, &n, err) < 0) {
        blink_catalog_close(catalog);
        return -1;
    }
    blink_session_info_t *out = calloc(n ? n : 1, sizeof(*out));
    if (out == NULL) {
        free(rows);
        blink_catalog_close(catalog);
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "list sessions");
    }
    for (size_t i = 0; i < n; i++) {
        session_ctx_t s = {.blink = blink, .name = rows[i].name, .catalog = catalog, .lock_fd = -1};
        s.socket = blink_strdup_printf("%s/sessions/%s/shim.sock", blink->home, rows[i].name);
        if (s.socket)
            reconcile(&s, &rows[i]);
        free(s.socket);
        row_to_info(&rows[i], &out[i]);
    }
    free(rows);
    blink_catalog_close(catalog);
    *list = out;
    *count = n;
    return 0;
}

int blink_open_session(const char *name, const char *image, bool *created, blink_error_t *err)
{
    blink_t *blink = blink_open(NULL, err);
    if (blink == NULL)
        return -1;
    blink_session_options_t options = {.struct_size = sizeof(options), .image = image};
    int rc = blink_session_open(blink, name, &options, created, err);
    blink_close(blink);
    return rc;
}

int blink_run_in_session(const char *name, const char *agent_path, blink_result_t **result,
                         blink_error_t *err)
{
    blink_t *blink = blink_open(NULL, err);
    if (blink == NULL)
        return -1;
    int rc = blink_session_run(blink, name, agent_path, NULL, result, err);
    blink_close(blink);
    return rc;
}
