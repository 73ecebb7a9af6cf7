/* Small host-side helpers: time, files, strings. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

uint64_t blink_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t blink_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

char *blink_strdup_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : s;
}

int blink_mkdir_p(const char *path, mode_t mode, blink_error_t *err)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);

    if (len == 0 || len >= sizeof(buf))
        return blink_fail(err, BLINK_E_INVALID, 0, "create directory `%s`: bad path", path);
    memcpy(buf, path, len + 1);

    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(buf, mode) < 0 && errno != EEXIST) {
            int e = errno;
            return blink_fail(err, e == EACCES || e == EROFS ? BLINK_E_PERMISSION : BLINK_E_IO, e,
                              "create directory `%s`", buf);
        }
        *p = saved;
        if (saved == '\0')
            break;
    }

    struct stat st;
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
        return blink_fail(err, BLINK_E_IO, ENOTDIR, "create directory `%s`", path);
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

int blink_remove_tree(const char *path)
{
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

char *blink_read_file(const char *path, size_t max, size_t *len, blink_error_t *err)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return blink_fail_null(err, errno == ENOENT ? BLINK_E_NOT_FOUND : BLINK_E_IO, errno,
                               "open `%s`", path);

    blink_buf_t buf = {0};
    char chunk[8192];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            blink_buf_free(&buf);
            return blink_fail_null(err, BLINK_E_IO, e, "read `%s`", path);
        }
        if (n == 0)
            break;
        if (buf.len + (size_t)n > max) {
            blink_buf_free(&buf);
            return blink_fail_null(err, BLINK_E_INVALID, 0, "read `%s`: larger than %zu bytes",
                                   path, max);
        }
        if (blink_buf_append(&buf, chunk, (size_t)n) < 0) {
            blink_buf_free(&buf);
            return blink_fail_null(err, BLINK_E_NO_MEMORY, ENOMEM, "read `%s`", path);
        }
    }
    if (blink_buf_append(&buf, "", 1) < 0) {
        blink_buf_free(&buf);
        return blink_fail_null(err, BLINK_E_NO_MEMORY, ENOMEM, "read `%s`", path);
    }
    if (len)
        *len = buf.len - 1;
    return buf.data;
}

int blink_write_file_atomic(const char *path, const void *data, size_t len, blink_error_t *err)
{
    cleanup_free char *tmp = blink_strdup_printf("%s.tmp.%d", path, (int)getpid());
    if (tmp == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "write `%s`", path);

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return blink_fail(err, errno == EACCES ? BLINK_E_PERMISSION : BLINK_E_IO, errno,
                          "create `%s`", tmp);

    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        p += n;
        left -= (size_t)n;
    }
    if (fsync(fd) < 0)
        goto fail;
    if (close(fd) < 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) < 0)
        goto fail;
    return 0;

fail:;
    int e = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return blink_fail(err, BLINK_E_IO, e, "write `%s`", path);
}

void blink_reap_orphans(const char *dir, const char *marker, bool prefix_only)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        const char *at =
            prefix_only
                ? (strncmp(entry->d_name, marker, strlen(marker)) == 0 ? entry->d_name : NULL)
                : strstr(entry->d_name, marker);
        int pid = 0;
        if (at == NULL || sscanf(at + strlen(marker), "%d", &pid) != 1 || pid <= 0)
            continue;
        if (kill(pid, 0) == 0 || errno == EPERM)
            continue;
        cleanup_free char *path = blink_strdup_printf("%s/%s", dir, entry->d_name);
        if (path && blink_remove_tree(path) == 0)
            log_info("cleanup", "removed `%s`, left by killed process %d", path, pid);
    }
    closedir(d);
}

int blink_copy_file(const char *source, const char *target, blink_error_t *err)
{
    cleanup_close int in = open(source, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return blink_fail(err, BLINK_E_IO, errno, "open `%s`", source);
    cleanup_close int out = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0)
        return blink_fail(err, BLINK_E_IO, errno, "create `%s`", target);

    for (;;) {
        ssize_t n = copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return blink_fail(err, BLINK_E_IO, errno, "copy `%s` to `%s`", source, target);
        if (n == 0)
            break;
    }
    if (fsync(out) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "sync `%s`", target);
    return 0;
}

char *blink_find_program(const char *name)
{
    const char *path = getenv("PATH");
    if (path == NULL || *path == '\0')
        path = "/usr/local/bin:/usr/bin:/bin";

    const char *p = path;
    while (*p) {
        const char *end = strchrnul(p, ':');
        char *candidate = blink_strdup_printf("%.*s/%s", (int)(end - p), p, name);
        if (candidate && access(candidate, X_OK) == 0)
            return candidate;
        free(candidate);
        p = *end ? end + 1 : end;
    }
    return NULL;
}

int blink_set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (1-4), or 0 if invalid (RFC 3629 §4:
 * no overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t utf8_sequence(const unsigned char *p, size_t left)
{
    unsigned char c = p[0];
    size_t n;
    uint32_t cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n > left)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

char *blink_utf8_sanitize(const char *data, size_t len, size_t *out_len)
{
    static const char replacement[] = "\xef\xbf\xbd";
    blink_buf_t out = {0};
    const unsigned char *p = (const unsigned char *)data;
    size_t i = 0, run_start = 0;

    while (i < len) {
        size_t n = utf8_sequence(p + i, len - i);
        if (n > 0) {
            i += n;
            continue;
        }
        if (blink_buf_append(&out, data + run_start, i - run_start) < 0 ||
            blink_buf_append(&out, replacement, 3) < 0)
            goto oom;
        i++;
        run_start = i;
    }
    if (blink_buf_append(&out, data + run_start, len - run_start) < 0 ||
        blink_buf_append(&out, "", 1) < 0)
        goto oom;
    *out_len = out.len - 1;
    return out.data;

oom:
    blink_buf_free(&out);
    return NULL;
}

void blink_tail_append(char *tail, size_t *tail_len, size_t cap, const char *data, size_t len)
{
    if (len >= cap) {
        memcpy(tail, data + len - cap, cap);
        *tail_len = cap;
        return;
    }
    if (*tail_len + len > cap) {
        size_t drop = *tail_len + len - cap;
        memmove(tail, tail + drop, *tail_len - drop);
        *tail_len -= drop;
    }
    memcpy(tail + *tail_len, data, len);
    *tail_len += len;
}

int blink_buf_append(blink_buf_t *b, const void *data, size_t len)
{
    if (len == 0 && b->data != NULL)
        return 0;
    if (b->len + len + 1 > b->capacity) {
        size_t cap = b->capacity ? b->capacity : 4096;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (grown == NULL)
            return -1;
        b->data = grown;
        b->capacity = cap;
    }
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

void blink_buf_free(blink_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->capacity = 0;
}
