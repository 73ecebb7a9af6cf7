/* Disk layers shared by forked sessions (layers.h, docs/fork.md). */
#include "layers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#define NBD_READY_MS 20000

int layers_lock(blink_t *blink, blink_error_t *err)
{
    cleanup_free char *dir = blink_strdup_printf("%s/locks", blink->home);
    cleanup_free char *path = blink_strdup_printf("%s/locks/layers.lock", blink->home);
    if (dir == NULL || path == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "lock layers");
    if (blink_mkdir_p(dir, 0700, err) < 0)
        return -1;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return blink_fail(err, BLINK_E_IO, errno, "open `%s`", path);
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            int e = errno;
            close(fd);
            return blink_fail(err, BLINK_E_IO, e, "lock `%s`", path);
        }
    }
    return fd;
}

char *layers_new_path(const char *dir, blink_error_t *err)
{
    uint8_t random[8];
    if (getrandom(random, sizeof(random), 0) != (ssize_t)sizeof(random))
        return blink_fail_null(err, BLINK_E_IO, errno, "name a layer");
    char *path = blink_strdup_printf("%s/%02x%02x%02x%02x%02x%02x%02x%02x.qcow2", dir, random[0],
                                     random[1], random[2], random[3], random[4], random[5],
                                     random[6], random[7]);
    if (path == NULL)
        return blink_fail_null(err, BLINK_E_NO_MEMORY, ENOMEM, "name a layer");
    return path;
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Layout: QEMU's docs/interop/qcow2.txt, "Header" (big-endian fields):
 * version at 4, backing_file_offset at 8, backing_file_size at 16 (u32),
 * size at 24. QEMU caps backing names at 1023 bytes. */
int layers_read_header(const char *path, char **backing, uint64_t *virtual_size,
                       blink_error_t *err)
{
    uint8_t h[32];
    *backing = NULL;
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return blink_fail(err, errno == ENOENT ? BLINK_E_NOT_FOUND : BLINK_E_IO, errno,
                          "open `%s`", path);
    if (pread(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h) || memcmp(h, "QFI\xfb", 4) != 0 ||
        (h[7] != 2 && h[7] != 3) || h[4] || h[5] || h[6])
        return blink_fail(err, BLINK_E_INVALID, 0, "`%s` is not a qcow2 disk", path);
    uint64_t offset = be64(h + 8);
    uint32_t length = (uint32_t)h[16] << 24 | (uint32_t)h[17] << 16 | (uint32_t)h[18] << 8 | h[19];
    *virtual_size = be64(h + 24);
    if (offset == 0)
        return 0;
    if (length == 0 || length > 1023)
        return blink_fail(err, BLINK_E_INVALID, 0, "`%s` has a malformed backing name", path);
    char *name = calloc(1, length + 1);
    if (name == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "read `%s`", path);
    if (pread(fd, name, length, (off_t)offset) != (ssize_t)length || strlen(name) != length) {
        free(name);
        return blink_fail(err, BLINK_E_INVALID, 0, "`%s` has a malformed backing name", path);
    }
    *backing = name;
    return 0;
}

int layers_create_overlay(const char *path, const char *backing, uint64_t virtual_size,
                          blink_error_t *err)
{
    cleanup_free char *tool = blink_find_program("qemu-img");
    if (tool == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img: install the Debian package `qemu-utils`");
    char size[32];
    snprintf(size, sizeof(size), "%llu", (unsigned long long)virtual_size);
    char *argv[] = {tool, "create", "-q",  "-f",         "qcow2",      "-u", "-b",
                    (char *)backing,     "-F", "qcow2", (char *)path, size, NULL};
    return blink_run_program(argv, err);
}

const char *layers_relative(blink_t *blink, const char *path)
{
    size_t len = strlen(blink->home);
    if (strncmp(path, blink->home, len) != 0 || path[len] != '/')
        return NULL;
    return path + len + 1;
}

bool layers_is_private(const session_ctx_t *s, const char *relative)
{
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "sessions/%s/layers/", s->name);
    return strncmp(relative, prefix, strlen(prefix)) == 0;
}

/* ---- a disk at a snapshot of a layer, storing only the difference ---- */

static pid_t start_nbd(const char *tool, const char *socket_path, const char *base,
                       const char *snapshot, blink_error_t *err)
{
    cleanup_free char *load = blink_strdup_printf("--load-snapshot=%s", snapshot);
    cleanup_free char *sock = blink_strdup_printf("--socket=%s", socket_path);
    if (load == NULL || sock == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "start qemu-nbd");
    /* Read-only, a few shared connections, persistent until we end it. */
    char *argv[] = {(char *)tool, "--read-only", "--persistent", "--shared=8",
                    "--format=qcow2", load, sock, (char *)base, NULL};
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return blink_fail(err, BLINK_E_IO, errno, "start qemu-nbd");
    if (pid == 0) {
        /* It must not outlive us, even if we are killed. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        /* Silent: it reports a client hanging up as an error, and we learn
         * of real failures from the connect and from qemu-img. */
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, STDIN_FILENO);
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
        }
        execv(tool, argv);
        _exit(127);
    }
    return pid;
}

static int wait_for_socket(const char *path, pid_t server, blink_error_t *err)
{
    uint64_t deadline = blink_now_ms() + NBD_READY_MS;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return blink_fail(err, BLINK_E_IO, errno, "connect to qemu-nbd");
        int rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
        close(fd);
        if (rc == 0)
            return 0;
        int status;
        if (waitpid(server, &status, WNOHANG) == server)
            return blink_fail(err, BLINK_E_VM, 0, "qemu-nbd could not export the snapshot");
        if (blink_now_ms() >= deadline)
            return blink_fail(err, BLINK_E_TIMEOUT, 0, "qemu-nbd did not start");
        nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
    }
}

int layers_overlay_at_snapshot(blink_t *blink, const char *target, const char *base,
                               const char *snapshot, blink_error_t *err)
{
    cleanup_free char *img = blink_find_program("qemu-img");
    cleanup_free char *nbd = blink_find_program("qemu-nbd");
    if (img == NULL || nbd == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img and qemu-nbd: install the Debian package `qemu-utils`");
    char *backing = NULL;
    uint64_t size = 0;
    if (layers_read_header(base, &backing, &size, err) < 0)
        return -1;
    free(backing);

    /* A private folder for the socket, in BLINK_HOME/tmp where the next
     * one reaps it if we are killed, or where a socket path fits (107). */
    blink_reap_orphans(blink->tmp_dir, "nbd-", true);
    const char *tmp = getenv("TMPDIR");
    bool fits = strlen(blink->tmp_dir) + sizeof("/nbd-4294967295-XXXXXX/nbd.sock") <= 108;
    cleanup_free char *dir =
        fits ? blink_strdup_printf("%s/nbd-%d-XXXXXX", blink->tmp_dir, (int)getpid())
             : blink_strdup_printf("%s/blink-nbd-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (dir == NULL || mkdtemp(dir) == NULL)
        return blink_fail(err, BLINK_E_IO, errno, "create a folder for qemu-nbd");
    cleanup_free char *socket_path = blink_strdup_printf("%s/nbd.sock", dir);
    cleanup_free char *uri = blink_strdup_printf("nbd+unix:///?socket=%s", socket_path);
    int rc = -1;
    pid_t server = -1;
    if (socket_path == NULL || uri == NULL || strlen(socket_path) >= 108) {
        blink_fail(err, BLINK_E_INVALID, 0, "TMPDIR is too long for a socket path");
        goto out;
    }
    server = start_nbd(nbd, socket_path, base, snapshot, err);
    if (server < 0 || wait_for_socket(socket_path, server, err) < 0)
        goto out;

    /* The overlay starts over the snapshot itself; rebase then writes into
     * it every cluster where the layer's content differs from the snapshot
     * and moves it onto the layer. */
    char size_text[32];
    snprintf(size_text, sizeof(size_text), "%llu", (unsigned long long)size);
    char *create[] = {img, "create", "-q", "-f", "qcow2", "-u", "-b", uri, "-F", "raw",
                      (char *)target, size_text, NULL};
    char *rebase[] = {img,           "rebase", "-q", "-f", "qcow2", "-b",
                      (char *)base,  "-F",     "qcow2", (char *)target, NULL};
    if (blink_run_program(create, err) < 0 || blink_run_program(rebase, err) < 0) {
        unlink(target);
        goto out;
    }
    rc = 0;
out:
    if (server > 0) {
        kill(server, SIGTERM);
        waitpid(server, NULL, 0);
    }
    if (socket_path)
        unlink(socket_path);
    rmdir(dir);
    if (rc < 0)
        blink_wrap(err, "materialize checkpoint `%s`", snapshot);
    return rc;
}

/* ---- garbage collection ---- */

/* Files in use, by identity: paths may be spelled differently (a
 * BLINK_HOME given through a symbolic link) but an inode is an inode. */
typedef struct file_id {
    dev_t dev;
    ino_t ino;
} file_id_t;

typedef struct file_set {
    file_id_t *items;
    size_t count, capacity;
    bool failed;
} file_set_t;

static void file_set_add(file_set_t *set, const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return;
    if (set->count == set->capacity) {
        size_t capacity = set->capacity ? set->capacity * 2 : 16;
        file_id_t *grown = realloc(set->items, capacity * sizeof(*grown));
        if (grown == NULL) {
            set->failed = true;
            return;
        }
        set->items = grown;
        set->capacity = capacity;
    }
    set->items[set->count++] = (file_id_t){st.st_dev, st.st_ino};
}

static bool file_set_has(const file_set_t *set, const struct stat *st)
{
    for (size_t i = 0; i < set->count; i++)
        if (set->items[i].dev == st->st_dev && set->items[i].ino == st->st_ino)
            return true;
    return false;
}

/* Adds every file `disk` stands on. */
static void add_chain(file_set_t *set, const char *disk)
{
    cleanup_free char *current = strdup(disk);
    for (int depth = 0; current && depth <= LAYERS_MAX_DEPTH; depth++) {
        char *backing = NULL;
        uint64_t size;
        if (layers_read_header(current, &backing, &size, NULL) < 0 || backing == NULL)
            return;
        file_set_add(set, backing);
        free(current);
        current = backing;
    }
    set->failed = true; /* a chain we did not see the end of: delete nothing */
}

int layers_chain_depth(const char *disk, blink_error_t *err)
{
    cleanup_free char *current = strdup(disk);
    for (int depth = 0; current; depth++) {
        char *backing = NULL;
        uint64_t size;
        if (layers_read_header(current, &backing, &size, err) < 0)
            return -1;
        if (backing == NULL)
            return depth;
        if (depth > LAYERS_MAX_DEPTH)
            return blink_fail(err, BLINK_E_INVALID, 0, "`%s` stands on too many layers", disk);
        free(current);
        current = backing;
    }
    return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "follow the layers of `%s`", disk);
}

int layers_overlay_empty(const char *disk, bool *empty, blink_error_t *err)
{
    cleanup_free char *tool = blink_find_program("qemu-img");
    cleanup_free char *map = NULL, *info = NULL;
    *empty = false;
    if (tool == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img: install the Debian package `qemu-utils`");
    char *map_argv[] = {tool, "map", "-U", "--output=json", "-f", "qcow2", (char *)disk, NULL};
    char *info_argv[] = {tool, "info", "-U", "--output=json", "-f", "qcow2", (char *)disk, NULL};
    if (blink_run_program_output(map_argv, &map, 64 << 20, err) < 0 ||
        blink_run_program_output(info_argv, &info, 16 << 20, err) < 0)
        return -1;
    json_t *extents = json_loads(map, 0, NULL);
    json_t *details = json_loads(info, 0, NULL);
    bool nothing = json_is_array(extents) && json_is_object(details) &&
                   json_array_size(json_object_get(details, "snapshots")) == 0;
    json_t *extent;
    size_t i;
    json_array_foreach(extents, i, extent)
    {
        json_t *depth = json_object_get(extent, "depth");
        nothing = nothing && json_is_integer(depth) && json_integer_value(depth) > 0;
    }
    json_decref(extents);
    json_decref(details);
    *empty = nothing;
    return 0;
}

static void add_session_files(file_set_t *set, const char *sessions_dir)
{
    DIR *sessions = opendir(sessions_dir);
    struct dirent *entry;
    while (sessions && (entry = readdir(sessions)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        cleanup_free char *disk = blink_strdup_printf("%s/%s/disk.qcow2", sessions_dir,
                                                      entry->d_name);
        cleanup_free char *parked = blink_strdup_printf("%s/%s/layers", sessions_dir,
                                                        entry->d_name);
        if (disk)
            add_chain(set, disk);
        DIR *layers = parked ? opendir(parked) : NULL;
        struct dirent *layer;
        while (layers && (layer = readdir(layers)) != NULL) {
            cleanup_free char *path = blink_strdup_printf("%s/%s", parked, layer->d_name);
            if (layer->d_name[0] != '.' && path)
                add_chain(set, path);
        }
        if (layers)
            closedir(layers);
    }
    if (sessions)
        closedir(sessions);
}

void layers_collect(blink_t *blink, blink_catalog_t *catalog)
{
    blink_error_t err;
    int lock = layers_lock(blink, &err);
    if (lock < 0) {
        log_warn("layers", "collect: %s", err.message);
        return;
    }
    file_set_t used = {0};
    cleanup_free char *sessions_dir = blink_strdup_printf("%s/sessions", blink->home);
    cleanup_free char *layers_dir = blink_strdup_printf("%s/layers", blink->home);
    blink_checkpoint_row_t *rows = NULL;
    size_t count = 0;
    if (sessions_dir == NULL || layers_dir == NULL ||
        blink_catalog_checkpoint_layered(catalog, NULL, &rows, &count, &err) < 0)
        goto out; /* when in doubt, keep everything */
    add_session_files(&used, sessions_dir);
    for (size_t i = 0; i < count; i++) {
        cleanup_free char *path = blink_strdup_printf("%s/%s", blink->home, rows[i].layer);
        if (path) {
            file_set_add(&used, path);
            add_chain(&used, path);
        }
    }

    if (used.failed)
        goto out;

    DIR *dir = opendir(layers_dir);
    struct dirent *entry;
    while (dir && (entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        cleanup_free char *path = blink_strdup_printf("%s/%s", layers_dir, entry->d_name);
        struct stat st;
        if (path && lstat(path, &st) == 0 && !file_set_has(&used, &st)) {
            log_info("layers", "delete unused layer %s", entry->d_name);
            unlink(path);
        }
    }
    if (dir)
        closedir(dir);
out:
    free(rows);
    free(used.items);
    close(lock);
}
