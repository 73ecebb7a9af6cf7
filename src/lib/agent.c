/* Agents: checking run options, opening the agent file on the host, naming
 * it in the guest and encoding the Exec that starts it. Shared by ephemeral
 * runs (run.c) and session runs (session.c). */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

int blink_agent_check_options(const blink_run_options_t *o, blink_error_t *err)
{
    if (o->struct_size < sizeof(size_t) || o->struct_size > sizeof(*o))
        return blink_fail(err, BLINK_E_INVALID, 0, "run options: bad struct_size %zu",
                          o->struct_size);
    if (o->memory_mib != 0 && (o->memory_mib < 128 || o->memory_mib > 65536))
        return blink_fail(err, BLINK_E_INVALID, 0, "memory %u MiB: use 128-65536", o->memory_mib);
    if (o->cpus > 64)
        return blink_fail(err, BLINK_E_INVALID, 0, "cpus %u: use 1-64", o->cpus);
    if (o->arg_count + o->env_count > BLINK_CAP_EXEC_STRINGS - 16)
        return blink_fail(err, BLINK_E_INVALID, 0, "too many arguments and variables");
    for (size_t i = 0; i < o->env_count; i++) {
        const char *e = o->env[i];
        const char *eq = e ? strchr(e, '=') : NULL;
        size_t name_len = eq ? (size_t)(eq - e) : 0;
        if (name_len == 0 || (e[0] >= '0' && e[0] <= '9') ||
            strspn(e, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") !=
                name_len)
            return blink_fail(err, BLINK_E_INVALID, 0, "environment entry `%.60s`: use KEY=VALUE",
                              e ? e : "(null)");
    }
    for (size_t i = 0; i < o->arg_count; i++)
        if (o->args[i] == NULL || strlen(o->args[i]) > BLINK_CAP_EXEC_STRING)
            return blink_fail(err, BLINK_E_INVALID, 0,
                              "argument %zu is missing or longer than %u bytes", i + 1,
                              BLINK_CAP_EXEC_STRING);
    for (size_t i = 0; i < o->env_count; i++)
        if (strlen(o->env[i]) > BLINK_CAP_EXEC_STRING)
            return blink_fail(err, BLINK_E_INVALID, 0,
                              "environment entry %zu is longer than %u bytes", i + 1,
                              BLINK_CAP_EXEC_STRING);

    /* The whole request must fit one frame: find out now, not after a boot. */
    blin_writer_t w;
    if (blink_agent_exec_payload(&w,
                                 "/var/blink/agents/0123456789abcdef0123456789abcdef/"
                                 "an-agent-name-of-the-longest-kind-that-a-guest-path-gets",
                                 o, err) < 0)
        return -1;
    blin_writer_free(&w);
    return 0;
}

int blink_agent_open(const char *path, uint64_t *size, blink_error_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return blink_fail(err,
                          errno == ENOENT   ? BLINK_E_NOT_FOUND
                          : errno == EACCES ? BLINK_E_PERMISSION
                                            : BLINK_E_IO,
                          errno, "open agent `%s`", path);

    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return blink_fail(err, BLINK_E_IO, e, "stat agent `%s`", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return blink_fail(err, BLINK_E_INVALID, 0, "agent `%s` is %s, not a regular file", path,
                          S_ISDIR(st.st_mode) ? "a directory" : "a special file");
    }
    if ((uint64_t)st.st_size > BLINK_CAP_AGENT_FILE) {
        close(fd);
        return blink_fail(err, BLINK_E_INVALID, 0, "agent `%s` is larger than %llu MiB", path,
                          (unsigned long long)(BLINK_CAP_AGENT_FILE >> 20));
    }
    *size = (uint64_t)st.st_size;
    return fd;
}

char *blink_agent_guest_path(const char *host_path, const char *dir)
{
    const char *base = strrchr(host_path, '/');
    base = base ? base + 1 : host_path;
    size_t len = strlen(base);
    bool tame =
        len > 0 && len <= 128 && base[0] != '.' &&
        strspn(base, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == len;
    return blink_strdup_printf("%s/%s", dir ? dir : "/var/blink/agents", tame ? base : "agent");
}

int blink_agent_exec_payload(blin_writer_t *w, const char *guest_path, const blink_run_options_t *o,
                             blink_error_t *err)
{
    static const char *const base_env[] = {
        /* /run/blink: blink-guest's V-Hub tool and socket (docs/vhub.md). */
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/blink/bin",
        "BLINK_VHUB_SOCKET=/run/blink/vhub.sock",
        "HOME=/root",
        "LANG=C.UTF-8",
        "BLINK=1",
        "BLINK_MEMORY_DIR=/var/blink/memory",
    };
    const size_t base_count = sizeof(base_env) / sizeof(base_env[0]);

    blin_writer_init(w);
    blin_put_u32(w, 0); /* no PTY, stdin on /dev/null */
    blin_put_u16(w, 0);
    blin_put_u16(w, 0);
    blin_put_string(w, "/root");
    blin_put_u32(w, (uint32_t)(1 + o->arg_count));
    blin_put_string(w, guest_path);
    for (size_t i = 0; i < o->arg_count; i++)
        blin_put_string(w, o->args[i]);
    blin_put_u32(w, (uint32_t)(base_count + o->env_count));
    for (size_t i = 0; i < base_count; i++)
        blin_put_string(w, base_env[i]);
    for (size_t i = 0; i < o->env_count; i++)
        blin_put_string(w, o->env[i]);

    if (w->failed) {
        blin_writer_free(w);
        return blink_fail(err, BLINK_E_INVALID, 0, "arguments and environment exceed %u bytes",
                          BLINK_CAP_BLIN_PAYLOAD);
    }
    return 0;
}
