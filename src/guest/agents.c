/* The `agents` control group: every execution runs in it, under a memory and
 * a process-count limit, so an agent that fills memory or fork-bombs is
 * stopped there instead of taking PID 1 and the VM down with it.
 *
 * The kernel's OOM killer is the first line, but without swap it can come
 * very late: at the limit, reclaim keeps evicting the agents' own program
 * text, which they fault straight back in, and every pass that frees a page
 * counts as progress, so the charge is retried instead of going to the OOM
 * killer. Under TCG this livelock was seen stalling the whole VM, PID 1
 * included, for minutes.
 * So PID 1 acts at its onset: when the group hits its limit (a `max` event)
 * with so much memory that cannot be reclaimed that only a few MiB are left
 * for program text, the outcome is an OOM kill anyway, and PID 1 does it at
 * once by killing the group's largest process. */
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

/* Room below the limit for what reclaim can still take, chiefly the program
 * text of the running agents; with less than this the group thrashes. */
#define RECLAIMABLE_FLOOR (8ull << 20)

/* cgroup.procs is read in one bounded buffer; pids.max keeps it under this. */
#define PROCS_BUFFER (64u << 10)

static uint64_t watch_kills;
static pid_t last_victim;

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
    return kernel_kills + watch_kills;
}

int agents_watch_open(void)
{
    char events[1024];

    int fd = open(AGENTS_CGROUP "/memory.events", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        log_warn_errno(errno, "open %s/memory.events", AGENTS_CGROUP);
        return -1;
    }
    /* Reading the file arms it: poll reports POLLPRI once it changes after
     * the last read (kernfs notification). */
    if (pread(fd, events, sizeof(events), 0) < 0) {
        log_warn_errno(errno, "read %s/memory.events", AGENTS_CGROUP);
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

/* The value of `name` in memory.stat text (lines `name value`), or 0. */
static uint64_t stat_field(const char *stat, const char *name)
{
    size_t len = strlen(name);

    for (const char *line = stat; *line;) {
        if (strncmp(line, name, len) == 0 && line[len] == ' ')
            return strtoull(line + len + 1, NULL, 10);
        line += strcspn(line, "\n");
        line += *line == '\n';
    }
    return 0;
}

/* Memory of the group that reclaim cannot take back, there being no swap:
 * anonymous and shared memory, and kernel memory but reclaimable slab. */
static uint64_t unreclaimable_bytes(void)
{
    char stat[4096];

    if (read_small_file(AGENTS_CGROUP "/memory.stat", stat, sizeof(stat)) < 0)
        return 0;
    uint64_t kernel = stat_field(stat, "kernel");
    uint64_t reclaimable_slab = stat_field(stat, "slab_reclaimable");
    if (reclaimable_slab > kernel)
        reclaimable_slab = kernel;
    return stat_field(stat, "anon") + stat_field(stat, "shmem") + kernel - reclaimable_slab;
}

bool agents_watch_handle(int fd)
{
    char events[1024];

    /* Re-arm the notification before looking, so no change is missed. A
     * file that cannot be read any more (the group was removed) would
     * report POLLERR forever: stop watching it. */
    if (pread(fd, events, sizeof(events), 0) < 0) {
        log_warn_errno(errno, "read %s/memory.events; memory watch stopped", AGENTS_CGROUP);
        return false;
    }

    uint64_t max = read_cgroup_number(AGENTS_CGROUP "/memory.max");
    uint64_t stuck = unreclaimable_bytes();
    if (max == UINT64_MAX || stuck + RECLAIMABLE_FLOOR < max)
        return true;

    /* The last victim may still be releasing its memory. */
    if (last_victim > 0 && kill(last_victim, 0) == 0) {
        char pid[16];
        format_text_args(pid, sizeof(pid), "%d", (int)last_victim);
        if (resident_pages(pid) > 0)
            return true;
    }

    uint64_t pages;
    pid_t victim = largest_agent(&pages);
    if (victim <= 1)
        return true;
    if (kill(victim, SIGKILL) < 0) {
        log_warn_errno(errno, "kill pid %d of the agents group", (int)victim);
        return true;
    }
    last_victim = victim;
    watch_kills++;
    log_warn("agents group out of memory (%llu of %llu bytes cannot be reclaimed): "
             "killed pid %d, %llu KiB resident",
             (unsigned long long)stuck, (unsigned long long)max, (int)victim,
             (unsigned long long)(pages * (uint64_t)sysconf(_SC_PAGESIZE) / 1024));
    return true;
}
