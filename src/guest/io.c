/* Small file and time helpers used across blink-guest. */
#include "guest.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int write_all(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;

    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

ssize_t read_small_file(const char *path, char *buf, size_t size)
{
    size_t have = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -errno;
    for (;;) {
        if (have + 1 >= size) {
            close(fd);
            return -EFBIG;
        }
        ssize_t n = read(fd, buf + have, size - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = errno;
            close(fd);
            return -err;
        }
        if (n == 0)
            break;
        have += (size_t)n;
    }
    close(fd);
    buf[have] = '\0';
    return (ssize_t)have;
}

int write_small_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);

    if (fd < 0)
        return -errno;

    /* Kernel knobs take the value in one write and report a bad value there. */
    int rc = write_all(fd, text, strlen(text));
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

int ensure_directory(const char *path, mode_t mode)
{
    struct stat st;

    if (mkdir(path, mode) == 0)
        return 0;
    if (errno != EEXIST)
        return -errno;
    if (stat(path, &st) < 0)
        return -errno;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int make_parent_directories(const char *path, mode_t mode)
{
    char prefix[PATH_MAX];
    size_t len = strlen(path);

    if (len >= sizeof(prefix))
        return -ENAMETOOLONG;
    memcpy(prefix, path, len + 1);

    /* Each '/' after the first character ends a parent directory's name. */
    for (size_t i = 1; i < len; i++) {
        if (prefix[i] != '/')
            continue;
        prefix[i] = '\0';
        int rc = ensure_directory(prefix, mode);
        prefix[i] = '/';
        if (rc < 0)
            return rc;
    }
    return 0;
}

void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

int set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

uint64_t monotonic_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}
