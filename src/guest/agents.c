/* The `agents` control group: every execution runs in it, under a memory and
 * a process-count limit, so an agent that fills memory or fork-bombs is
 * stopped there instead of taking PID 1 and the VM down with it.
 *
 * The kernel's OOM killer is the first line. Without swap it can fail to
 * fire: at the limit, reclaim keeps evicting the agent's own program text,
 * which the agent faults straight back in, and every pass that frees a page
 * counts as progress, so the charge is retried instead of going to the OOM
 * killer. Under TCG this livelock was seen lasting minutes. A PSI trigger on
 * the group's memory pressure is the second line: when the group is stalled
 * on memory while at its limit, the largest process in it is killed, as
 * systemd-oomd does for services. */
#include "guest.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What the group leaves to blink-guest and the kernel, counted from
 * MemAvailable rather than MemTotal: a booted 512 MiB guest already has
 * ~40 MiB of MemTotal in kernel use, and with MemTotal - 48 MiB the whole VM
 * ran short before the group did. */
#define AGENTS_MEMORY_RESERVE (48ull << 20)
#define AGENTS_MEMORY_MIN (32ull << 20)
#define AGENTS_PIDS_MAX "4096"

/* PSI trigger: all of the group's tasks stalled on memory for 1 s of a 2 s
 * window. A program streaming through files at its limit does not stall like
 * this; only one whose working set no longer fits does. */
#define PRESSURE_TRIGGER "full 1000000 2000000"

/* "At the limit": reclaim keeps a thrashing group within a few pages of it. */
#define NEAR_LIMIT (4ull << 20)

/* cgroup.procs is read in one bounded buffer; pids.max keeps it under this. */
#define PROCS_BUFFER (64u << 10)

static uint64_t pressure_kills;

/* A field of /proc/meminfo such as "MemAvailable:" in bytes, or 0. */
static uint64_t meminfo_bytes(const char *name)
{
    char meminfo[4096];

    /* The fields we read are in the first lines; a partial read is fine. */
    int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, meminfo, sizeof(meminfo) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    meminfo[n] = '\0';

    const char *field = strstr(meminfo, name);
    if (field == NULL)
        return 0;
    return strtoull(field + strlen(name), NULL, 10) * 1024u;
}

/* A cgroup file holding one number; `max` reads as UINT64_MAX, errors as 0. */
static uint64_t read_cgroup_number(const char *path)
{
    char text[64];

    if (read_small_file(path, text, sizeof(text)) < 0)
        return 0;
    if (strncmp(text, "max", 3) == 0)
        return UINT64_MAX;
    return strtoull(text, NULL, 10);
}

static bool write_cgroup_knob(const char *path, const char *value)
{
    int rc = write_small_file(path, value);
    if (rc < 0)
        log_warn_errno(-rc, "write `%s` to %s", value, path);
    return rc == 0;
}

bool setup_agents_cgroup(void)
{
    char limit[32];

    if (!write_cgroup_knob("/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids"))
        return false;
    int rc = ensure_directory(AGENTS_CGROUP, 0755);
    if (rc < 0) {
        log_warn_errno(-rc, "create control group %s", AGENTS_CGROUP);
        return false;
    }
    if (!write_cgroup_knob(AGENTS_CGROUP "/pids.max", AGENTS_PIDS_MAX))
        return false;

    uint64_t available = meminfo_bytes("MemAvailable:");
    if (available == 0) {
        log_warn("read MemAvailable from /proc/meminfo: not found");
        return false;
    }
    uint64_t max = available > AGENTS_MEMORY_RESERVE ? available - AGENTS_MEMORY_RESERVE : 0;
    if (max < AGENTS_MEMORY_MIN)
        max = AGENTS_MEMORY_MIN;
    format_text_args(limit, sizeof(limit), "%llu", (unsigned long long)max);
    if (!write_cgroup_knob(AGENTS_CGROUP "/memory.max", limit))
        return false;

    log_debug("agents group: memory.max %s, pids.max %s", limit, AGENTS_PIDS_MAX);
    return true;
}

uint64_t agents_oom_kills(void)
{
    char events[1024];
    uint64_t kernel_kills = 0;

    /* Lines are `key value`; oom_kill is preceded by a newline. */
    if (read_small_file(AGENTS_CGROUP "/memory.events", events, sizeof(events)) >= 0) {
        const char *line = strstr(events, "\noom_kill ");
        if (line != NULL)
            kernel_kills = strtoull(line + strlen("\noom_kill "), NULL, 10);
    }
    return kernel_kills + pressure_kills;
}

int agents_pressure_open(void)
{
    int fd = open(AGENTS_CGROUP "/memory.pressure", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        log_warn_errno(errno, "open %s/memory.pressure", AGENTS_CGROUP);
        return -1;
    }
    /* The trigger includes its terminating NUL, as the PSI interface asks. */
    if (write(fd, PRESSURE_TRIGGER, sizeof(PRESSURE_TRIGGER)) < 0) {
        log_warn_errno(errno, "set memory pressure trigger `%s`", PRESSURE_TRIGGER);
        close(fd);
        return -1;
    }
    return fd;
}

/* Resident pages of a process, 0 if it is gone. */
static uint64_t resident_pages(const char *pid)
{
    char path[64];
    char statm[128];

    format_text_args(path, sizeof(path), "/proc/%s/statm", pid);
    if (read_small_file(path, statm, sizeof(statm)) < 0)
        return 0;
    /* Fields: size resident shared text lib data dt. */
    const char *resident = strchr(statm, ' ');
    return resident ? strtoull(resident + 1, NULL, 10) : 0;
}

/* The pid of the process of the group with the most resident memory. */
static pid_t largest_agent(uint64_t *pages)
{
    static char procs[PROCS_BUFFER];
    pid_t victim = 0;

    *pages = 0;
    int fd = open(AGENTS_CGROUP "/cgroup.procs", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, procs, sizeof(procs) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    procs[n] = '\0';

    for (char *line = procs; *line;) {
        size_t len = strcspn(line, "\n");
        char *next = line + len + (line[len] == '\n');
        line[len] = '\0';
        uint64_t resident = resident_pages(line);
        if (resident > *pages) {
            *pages = resident;
            victim = (pid_t)strtol(line, NULL, 10);
        }
        line = next;
    }
    return victim;
}

void agents_pressure_handle(void)
{
    uint64_t current = read_cgroup_number(AGENTS_CGROUP "/memory.current");
    uint64_t max = read_cgroup_number(AGENTS_CGROUP "/memory.max");

    if (max == UINT64_MAX || current + NEAR_LIMIT < max) {
        log_debug("agents memory pressure at %llu of %llu bytes: below the limit, no action",
                  (unsigned long long)current, (unsigned long long)max);
        return;
    }

    uint64_t pages;
    pid_t victim = largest_agent(&pages);
    if (victim <= 1)
        return;
    if (kill(victim, SIGKILL) < 0) {
        log_warn_errno(errno, "kill pid %d of the thrashing agents group", (int)victim);
        return;
    }
    pressure_kills++;
    log_warn("agents group stalled at its memory limit: killed pid %d (%llu KiB resident)",
             (int)victim, (unsigned long long)(pages * (uint64_t)sysconf(_SC_PAGESIZE) / 1024));
}
