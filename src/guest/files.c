/* File transfers: FileBegin creates the file, FileData frames fill it in
 * order, and the guest answers FileDone or one Error. See docs/protocol.md,
 * "File transfer". */
#include "guest.h"
#include "caps.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct transfer {
    bool used;
    uint64_t id;
    int fd;
    char *path;
    uint32_t mode;
    uint64_t remaining;
} transfer_t;

static transfer_t transfers[GUEST_MAX_TRANSFERS];

static transfer_t *find_transfer(uint64_t id)
{
    for (size_t i = 0; i < GUEST_MAX_TRANSFERS; i++)
        if (transfers[i].used && transfers[i].id == id)
            return &transfers[i];
    return NULL;
}

static transfer_t *claim_transfer(void)
{
    for (size_t i = 0; i < GUEST_MAX_TRANSFERS; i++)
        if (!transfers[i].used)
            return &transfers[i];
    return NULL;
}

static void release_transfer(transfer_t *t)
{
    if (t->fd >= 0)
        close(t->fd);
    free(t->path);
    memset(t, 0, sizeof(*t));
    t->fd = -1;
}

/* Drops a failed transfer: the partial file goes, one Error is sent, and the
 * transfer's remaining FileData frames find no transfer and are discarded. */
static void abort_transfer(transfer_t *t, int err, const char *what)
{
    uint64_t id = t->id;

    if (unlink(t->path) < 0 && errno != ENOENT)
        log_warn_errno(errno, "remove partial file %s", t->path);
    control_reply_error(id, err, "%s `%s`", what, t->path);
    release_transfer(t);
}

static void complete_transfer(transfer_t *t)
{
    if (fchmod(t->fd, t->mode & 07777) < 0) {
        abort_transfer(t, errno, "set mode of");
        return;
    }
    /* close reports delayed write errors on some filesystems. */
    int fd = t->fd;
    t->fd = -1;
    if (close(fd) < 0) {
        abort_transfer(t, errno, "close");
        return;
    }
    log_debug("transfer %llu: wrote %s", (unsigned long long)t->id, t->path);
    control_send(BLIN_CTL_FILE_DONE, t->id, NULL, 0);
    release_transfer(t);
}

/* Absolute, and no `..` component, so a path names what it appears to. */
static bool path_acceptable(const char *path)
{
    if (path[0] != '/' || path[1] == '\0')
        return false;
    for (const char *p = path; *p;) {
        p += strspn(p, "/");
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return false;
        p += n;
    }
    return true;
}

void files_handle_begin(uint64_t id, const uint8_t *payload, size_t len)
{
    blin_cursor_t c;

    blin_cursor_init(&c, payload, len);
    char *path = blin_get_string(&c, PATH_MAX - 1);
    uint32_t mode = blin_get_u32(&c);
    uint64_t size = blin_get_u64(&c);
    if (c.failed || c.pos != c.len) {
        free(path);
        control_reply_error(id, EINVAL, "malformed file begin payload");
        return;
    }

    int err = 0;
    const char *problem = NULL;
    if (!path_acceptable(path)) {
        err = EINVAL;
        problem = "path is not absolute or has a `..` component:";
    } else if (size > BLINK_CAP_AGENT_FILE) {
        err = EFBIG;
        problem = "file larger than the agent file cap:";
    } else if (find_transfer(id) != NULL) {
        err = EBUSY;
        problem = "transfer id already in use for";
    }
    if (problem != NULL) {
        control_reply_error(id, err, "%s `%s`", problem, path);
        free(path);
        return;
    }

    transfer_t *t = claim_transfer();
    if (t == NULL) {
        control_reply_error(id, EAGAIN, "%u transfers already open; refuse `%s`",
                            GUEST_MAX_TRANSFERS, path);
        free(path);
        return;
    }

    int rc = make_parent_directories(path, 0755);
    if (rc < 0) {
        control_reply_error(id, -rc, "create parent directories of `%s`", path);
        free(path);
        return;
    }
    /* O_NOFOLLOW: a symlink planted at the path is refused (ELOOP), never
     * followed to overwrite some other file. */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        control_reply_error(id, errno, "create `%s`", path);
        free(path);
        return;
    }

    *t = (transfer_t){.used = true, .id = id, .fd = fd, .path = path, .mode = mode,
                      .remaining = size};
    if (size == 0)
        complete_transfer(t);
}

void files_handle_data(uint64_t id, const uint8_t *payload, size_t len)
{
    transfer_t *t = find_transfer(id);

    if (t == NULL) {
        log_debug("discard %zu bytes of file data for transfer %llu", len,
                  (unsigned long long)id);
        return;
    }
    if (len > t->remaining) {
        abort_transfer(t, EFBIG, "more data than announced for");
        return;
    }

    int rc = write_all(t->fd, payload, len);
    if (rc < 0) {
        abort_transfer(t, -rc, "write");
        return;
    }
    t->remaining -= len;
    if (t->remaining == 0)
        complete_transfer(t);
}
