/* Starting one process for an Exec: the request, its stdio (a PTY or pipes)
 * and the child's steps between fork and exec. See docs/protocol.md, "Exec". */
#include "guest.h"
#include "caps.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#define EXEC_FLAGS_KNOWN (EXEC_FLAG_PTY | EXEC_FLAG_STDIN_PIPE)

extern char **environ;

/* What the child needs between fork and exec; its own ends of the stdio. */
typedef struct child_plan {
    const exec_request_t *request;
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
    int pty_slave; /* replaces the three above when >= 0 */
    int report_fd; /* close-on-exec: EOF means exec succeeded */
    bool join_cgroup;
} child_plan_t;

/* Sent by the child through report_fd when it cannot run the program. */
typedef struct child_failure {
    int32_t stage;
    int32_t err;
} child_failure_t;

enum { STAGE_SETUP = 1, STAGE_CHDIR, STAGE_EXEC };

static void free_string_list(char **list)
{
    if (list == NULL)
        return;
    for (char **p = list; *p; p++)
        free(*p);
    free(list);
}

void exec_request_free(exec_request_t *r)
{
    free(r->cwd);
    free_string_list(r->argv);
    free_string_list(r->envp);
}

/* Reads `u32 count` and that many strings into a NULL-terminated array. */
static char **get_string_list(blin_cursor_t *c, uint32_t min_count)
{
    uint32_t count = blin_get_u32(c);
    if (c->failed)
        return NULL;

    /* Every string takes at least its 4-byte length, so a count the payload
     * cannot hold is refused before the array is allocated. */
    if (count < min_count || count > BLINK_CAP_EXEC_STRINGS || count > (c->len - c->pos) / 4) {
        c->failed = true;
        return NULL;
    }
    char **list = calloc((size_t)count + 1, sizeof(*list));
    if (list == NULL) {
        c->failed = true;
        return NULL;
    }
    for (uint32_t i = 0; i < count; i++) {
        list[i] = blin_get_string(c, BLINK_CAP_EXEC_STRING);
        if (list[i] == NULL) {
            free_string_list(list);
            return NULL;
        }
    }
    return list;
}

const char *exec_request_parse(const uint8_t *payload, size_t len, exec_request_t *r)
{
    blin_cursor_t c;

    memset(r, 0, sizeof(*r));
    blin_cursor_init(&c, payload, len);
    r->flags = blin_get_u32(&c);
    r->rows = blin_get_u16(&c);
    r->cols = blin_get_u16(&c);
    r->cwd = blin_get_string(&c, BLINK_CAP_EXEC_STRING);
    if (!c.failed)
        r->argv = get_string_list(&c, 1);
    if (!c.failed)
        r->envp = get_string_list(&c, 0);
    if (c.failed || c.pos != c.len)
        return "malformed exec payload";

    if (r->flags & ~EXEC_FLAGS_KNOWN)
        return "unknown exec flags";
    if (r->argv[0][0] == '\0')
        return "empty program name";
    for (char **env = r->envp; *env; env++)
        if ((*env)[0] == '=' || strchr(*env, '=') == NULL)
            return "environment entry not of the form KEY=VALUE";
    return NULL;
}

/* ---- the child, between fork and exec: async-signal-safe calls only ---- */

static _Noreturn void child_fail(int report_fd, int stage, int err, int exit_code)
{
    child_failure_t failure = {.stage = stage, .err = err};

    /* If even this fails the exit code still tells the host. */
    ssize_t unused = write(report_fd, &failure, sizeof(failure));
    (void)unused;
    _exit(exit_code);
}

static void reset_signals(void)
{
    struct sigaction default_action = {.sa_handler = SIG_DFL};
    sigset_t none;

    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &default_action, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static void setup_child_stdio(const child_plan_t *plan)
{
    int in = plan->stdin_fd, out = plan->stdout_fd, err = plan->stderr_fd;

    if (plan->pty_slave >= 0) {
        /* The slave was opened with O_NOCTTY; claim it for the new session. */
        if (ioctl(plan->pty_slave, TIOCSCTTY, 0) < 0)
            child_fail(plan->report_fd, STAGE_SETUP, errno, 126);
        in = out = err = plan->pty_slave;
    }
    /* blink-guest keeps fds 0-2 on /dev/null, so these never alias. */
    if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        child_fail(plan->report_fd, STAGE_SETUP, errno, 126);

    /* Every fd of blink-guest is close-on-exec already; this makes sure the
     * program inherits nothing but its stdio even if one was missed. */
    close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
}

static _Noreturn void run_child(const child_plan_t *plan)
{
    const exec_request_t *r = plan->request;
    const char *cwd = r->cwd[0] ? r->cwd : "/";

    if (setsid() < 0)
        child_fail(plan->report_fd, STAGE_SETUP, errno, 126);
    setup_child_stdio(plan);

    /* Children inherit PID 1's -1000, which would make agents unkillable by
     * the OOM killer; raising it back needs no privilege. */
    int rc = write_small_file("/proc/self/oom_score_adj", "0");
    if (rc < 0)
        log_warn_errno(-rc, "reset oom_score_adj of pid %d", (int)getpid());
    if (plan->join_cgroup) {
        rc = write_small_file(AGENTS_CGROUP "/cgroup.procs", "0");
        if (rc < 0)
            log_warn_errno(-rc, "move pid %d into %s", (int)getpid(), AGENTS_CGROUP);
    }

    if (chdir(cwd) < 0)
        child_fail(plan->report_fd, STAGE_CHDIR, errno, 126);
    reset_signals();

    /* execvpe searches the PATH of the current environment: make it the
     * requested one, as a shell given this environment would. */
    environ = r->envp;
    execvpe(r->argv[0], r->argv, r->envp);
    int err = errno;
    child_fail(plan->report_fd, STAGE_EXEC, err, err == ENOENT ? 127 : 126);
}

/* ---- the parent's side ---- */

static int open_terminal(spawned_t *p, child_plan_t *plan, const exec_request_t *r)
{
    char slave_path[64];
    struct winsize size = {.ws_row = r->rows, .ws_col = r->cols};

    p->pty_fd = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (p->pty_fd < 0)
        return -errno;
    if (grantpt(p->pty_fd) < 0 || unlockpt(p->pty_fd) < 0)
        return -errno;
    int rc = ptsname_r(p->pty_fd, slave_path, sizeof(slave_path));
    if (rc != 0)
        return -rc;
    if (ioctl(p->pty_fd, TIOCSWINSZ, &size) < 0)
        return -errno;

    /* Opened here rather than in the child, so the terminal is never without
     * a slave (a master then reads EIO) before the child has it. */
    plan->pty_slave = open(slave_path, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (plan->pty_slave < 0)
        return -errno;
    return set_nonblocking(p->pty_fd);
}

static int open_pipe(int *parent_end, int *child_end, bool parent_reads)
{
    int ends[2];

    if (pipe2(ends, O_CLOEXEC) < 0)
        return -errno;
    *parent_end = parent_reads ? ends[0] : ends[1];
    *child_end = parent_reads ? ends[1] : ends[0];
    return set_nonblocking(*parent_end);
}

static int open_pipes(spawned_t *p, child_plan_t *plan, bool stdin_pipe)
{
    int rc = open_pipe(&p->stdout_fd, &plan->stdout_fd, true);
    if (rc == 0)
        rc = open_pipe(&p->stderr_fd, &plan->stderr_fd, true);
    if (rc < 0)
        return rc;
    if (stdin_pipe)
        return open_pipe(&p->stdin_fd, &plan->stdin_fd, false);

    plan->stdin_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return plan->stdin_fd < 0 ? -errno : 0;
}

static void close_child_ends(child_plan_t *plan)
{
    close_fd(&plan->stdin_fd);
    close_fd(&plan->stdout_fd);
    close_fd(&plan->stderr_fd);
    close_fd(&plan->pty_slave);
    close_fd(&plan->report_fd);
}

static void close_parent_ends(spawned_t *p)
{
    close_fd(&p->pty_fd);
    close_fd(&p->stdout_fd);
    close_fd(&p->stderr_fd);
    close_fd(&p->stdin_fd);
}

/* Waits for the child to exec (the report pipe closes) or to report why it
 * could not. Returns true when it reported a failure. */
static bool await_exec(int report_fd, child_failure_t *failure)
{
    size_t have = 0;

    while (have < sizeof(*failure)) {
        ssize_t n = read(report_fd, (char *)failure + have, sizeof(*failure) - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    return have == sizeof(*failure);
}

/* The line a shell would print for a program it could not run. */
static void describe_failure(const exec_request_t *r, const child_failure_t *failure,
                             char *text, size_t size)
{
    const char *reason = errno_text(failure->err);

    if (failure->stage == STAGE_EXEC)
        format_text_args(text, size, "blink-guest: cannot execute `%s`: %s\n", r->argv[0],
                         reason);
    else if (failure->stage == STAGE_CHDIR)
        format_text_args(text, size, "blink-guest: cannot change directory to `%s`: %s\n",
                         r->cwd, reason);
    else
        format_text_args(text, size, "blink-guest: cannot set up the process: %s\n", reason);
}

int spawn_process(const exec_request_t *r, bool join_cgroup, spawned_t *out, char *failure,
                  size_t failure_size)
{
    child_plan_t plan = {
        .request = r,
        .stdin_fd = -1,
        .stdout_fd = -1,
        .stderr_fd = -1,
        .pty_slave = -1,
        .report_fd = -1,
        .join_cgroup = join_cgroup,
    };
    int report[2] = {-1, -1};
    int rc;

    *out = (spawned_t){.pid = -1, .pty_fd = -1, .stdout_fd = -1, .stderr_fd = -1, .stdin_fd = -1};
    failure[0] = '\0';
    if (r->flags & EXEC_FLAG_PTY)
        rc = open_terminal(out, &plan, r);
    else
        rc = open_pipes(out, &plan, r->flags & EXEC_FLAG_STDIN_PIPE);
    if (rc == 0 && pipe2(report, O_CLOEXEC) < 0)
        rc = -errno;
    if (rc < 0)
        goto fail;
    plan.report_fd = report[1];

    pid_t pid = fork();
    if (pid == 0)
        run_child(&plan);
    if (pid < 0)
        rc = -errno;
    /* The child has its own copies now; ours would keep the pipes open. */
    close_child_ends(&plan);
    if (rc < 0)
        goto fail;

    out->pid = pid;
    child_failure_t report_data;
    if (await_exec(report[0], &report_data))
        describe_failure(r, &report_data, failure, failure_size);
    close_fd(&report[0]);
    return 0;

fail:
    close_child_ends(&plan);
    close_parent_ends(out);
    close_fd(&report[0]);
    return rc;
}
