/* Which hub a VM's guest programs reach: per run, or kept per session. */
#include "vhub_carrier.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/un.h>

/* sockaddr_un's path holds 108 bytes with the terminator. */
#define HUB_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

int blink_vhub_resolve(const char *option, char **path, blink_error_t *err)
{
    const char *given = option && *option ? option : getenv("BLINK_VHUB_SOCKET");

    *path = NULL;
    if (given == NULL || *given == '\0')
        return 0;
    if (given[0] == '/') {
        *path = strdup(given);
    } else {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof(cwd)) == NULL)
            return blink_fail(err, BLINK_E_IO, errno, "resolve hub socket `%s`", given);
        *path = blink_strdup_printf("%s/%s", cwd, given);
    }
    if (*path == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "resolve hub socket");
    if (strlen(*path) > HUB_PATH_MAX || strchr(*path, '\n')) {
        free(*path);
        *path = NULL;
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "hub socket `%.200s`: a path of at most %zu bytes on one line", given,
                          HUB_PATH_MAX);
    }
    return 0;
}

int blink_vhub_save(const char *session_dir, const char *path, blink_error_t *err)
{
    cleanup_free char *file = blink_strdup_printf("%s/vhub", session_dir);
    if (file == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "record hub socket");
    if (path == NULL) {
        if (unlink(file) < 0 && errno != ENOENT)
            return blink_fail(err, BLINK_E_IO, errno, "remove `%s`", file);
        return 0;
    }
    cleanup_free char *line = blink_strdup_printf("%s\n", path);
    if (line == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "record hub socket");
    return blink_write_file_atomic(file, line, strlen(line), err);
}

char *blink_vhub_load(const char *session_dir)
{
    cleanup_free char *file = blink_strdup_printf("%s/vhub", session_dir);
    size_t len = 0;
    blink_error_t err;
    char *text = file ? blink_read_file(file, HUB_PATH_MAX + 2, &len, &err) : NULL;
    if (text == NULL)
        return NULL;
    text[strcspn(text, "\n")] = '\0';
    if (text[0] != '/') {
        log_warn("vhub", "ignoring `%s`: not an absolute socket path", file);
        free(text);
        return NULL;
    }
    return text;
}
