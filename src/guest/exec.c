/* Executions: the processes the host starts with Exec, their output, input,
 * signals, terminal size and exit. See docs/protocol.md, "Exec". */
#include "guest.h"
#include "caps.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define EXEC_FLAG_PTY 0x1u
#define EXEC_FLAG_STDIN_PIPE 0x2u
#define EXEC_FLAGS_KNOWN (EXEC_FLAG_PTY | EXEC_FLAG_STDIN_PIPE)

/* virtio_console accepts at most 32 KiB per write(2). A chunk this size plus
 * its header is exactly one such write, so every output frame is one buffer
 * on the virtqueue, and stays within BLINK_CAP_OUTPUT_CHUNK. */
#define OUTPUT_READ_MAX (BLINK_CAP_OUTPUT_CHUNK - BLIN_HEADER_SIZE)

/* When the main process has exited, its pipes are read for what they hold
 * (FIONREAD) plus this slack, which covers PTY output still in the tty
 * layer's flip buffers (64 KiB at most) and ends the drain when a grandchild
 * that inherited the pipe keeps writing. */
#define DRAIN_SLACK (256u << 10)

/* VEOF of a terminal in canonical mode: an empty Stdin on a PTY sends it. */
#define TERMINAL_EOF_CHAR '\x04'

typedef struct exec_request {
    uint32_t flags;
    uint16_t rows;
    uint16_t cols;
    char *cwd;
    char **argv; /* NULL-terminated */
    char **envp; /* NULL-terminated */
} exec_request_t;

typedef struct execution {
    bool used;
    uint64_t id;
    pid_t pid;
    int pty_fd;    /* PTY master, output and input; -1 without a PTY */
    bool pty_idle; /* no process holds the terminal any more (EIO) */
    int stdout_fd; /* read ends of the output pipes; -1 once closed */
    int stderr_fd;
    int stdin_fd;  /* write end of the stdin pipe; -1 for /dev/null or closed */
    bool stdin_eof_pending; /* close the stdin pipe once the queue drains */
    uint8_t *input;         /* Stdin bytes the process has not read yet */
    size_t input_start;
    size_t input_len;
    size_t input_capacity;
    uint64_t oom_kills_at_start;
    bool exited;
    int wait_status;
} execution_t;

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

typedef enum stream { STREAM_STDOUT, STREAM_STDERR, STREAM_STDIN, STREAM_PTY } stream_t;

typedef struct poll_ref {
    execution_t *execution;
    stream_t stream;
    int fd;
} poll_ref_t;

static execution_t executions[GUEST_MAX_EXECUTIONS];
static poll_ref_t poll_refs[3 * GUEST_MAX_EXECUTIONS];
static bool agents_cgroup_ready;
static size_t stdin_queued_total;
/* Output is read straight behind a header so each frame leaves in one write. */
static uint8_t output_frame[BLIN_HEADER_SIZE + OUTPUT_READ_MAX];

extern char **environ;

void exec_init(bool agents_cgroup)
{
    agents_cgroup_ready = agents_cgroup;
}

static execution_t *find_execution(uint64_t id)
{
    for (size_t i = 0; i < GUEST_MAX_EXECUTIONS; i++)
        if (executions[i].used && executions[i].id == id)
            return &executions[i];
    return NULL;
}

static execution_t *find_execution_by_pid(pid_t pid)
{
    for (size_t i = 0; i < GUEST_MAX_EXECUTIONS; i++)
        if (executions[i].used && executions[i].pid == pid)
            return &executions[i];
    return NULL;
}

static execution_t *claim_free_slot(void)
{
    for (size_t i = 0; i < GUEST_MAX_EXECUTIONS; i++) {
        execution_t *e = &executions[i];
        if (!e->used) {
            memset(e, 0, sizeof(*e));
            e->pty_fd = e->stdout_fd = e->stderr_fd = e->stdin_fd = -1;
            return e;
        }
    }
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* ---- request parsing ---- */

static void free_string_list(char **list)
{
    if (list == NULL)
        return;
    for (char **p = list; *p; p++)
        free(*p);
    free(list);
}

static void exec_request_free(exec_request_t *r)
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

/* Fills `r` from an Exec payload. NULL on success, else what is wrong. */
static const char *parse_exec_request(const uint8_t *payload, size_t len, exec_request_t *r)
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

/* ---- starting ---- */

static int open_terminal(execution_t *e, child_plan_t *plan, const exec_request_t *r)
{
    char slave_path[64];
    struct winsize size = {.ws_row = r->rows, .ws_col = r->cols};

    e->pty_fd = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (e->pty_fd < 0)
        return -errno;
    if (grantpt(e->pty_fd) < 0 || unlockpt(e->pty_fd) < 0)
        return -errno;
    int rc = ptsname_r(e->pty_fd, slave_path, sizeof(slave_path));
    if (rc != 0)
        return -rc;
    if (ioctl(e->pty_fd, TIOCSWINSZ, &size) < 0)
        return -errno;

    /* Opened here rather than in the child, so the terminal is never without
     * a slave (a master then reads EIO) before the child has it. */
    plan->pty_slave = open(slave_path, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (plan->pty_slave < 0)
        return -errno;
    return set_nonblocking(e->pty_fd);
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

static int open_pipes(execution_t *e, child_plan_t *plan, bool stdin_pipe)
{
    int rc = open_pipe(&e->stdout_fd, &plan->stdout_fd, true);
    if (rc == 0)
        rc = open_pipe(&e->stderr_fd, &plan->stderr_fd, true);
    if (rc < 0)
        return rc;
    if (stdin_pipe)
        return open_pipe(&e->stdin_fd, &plan->stdin_fd, false);

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

static void close_parent_ends(execution_t *e)
{
    close_fd(&e->pty_fd);
    close_fd(&e->stdout_fd);
    close_fd(&e->stderr_fd);
    close_fd(&e->stdin_fd);
}

/* Tells the host, on the execution's stderr, why its program did not run. */
static void send_child_failure(execution_t *e, const exec_request_t *r,
                               const child_failure_t *failure)
{
    char message[PATH_MAX + 256];
    size_t len;

    if (failure->stage == STAGE_EXEC)
        len = format_text_args(message, sizeof(message), "blink-guest: cannot execute `%s`: %s\n",
                               r->argv[0], errno_text(failure->err));
    else if (failure->stage == STAGE_CHDIR)
        len = format_text_args(message, sizeof(message),
                               "blink-guest: cannot change directory to `%s`: %s\n", r->cwd,
                               errno_text(failure->err));
    else
        len = format_text_args(message, sizeof(message),
                               "blink-guest: cannot set up the process: %s\n",
                               errno_text(failure->err));
    control_send(BLIN_STDERR, e->id, message, len);
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

static void start_execution(execution_t *e, uint64_t id, const exec_request_t *r)
{
    child_plan_t plan = {
        .request = r,
        .stdin_fd = -1,
        .stdout_fd = -1,
        .stderr_fd = -1,
        .pty_slave = -1,
        .report_fd = -1,
        .join_cgroup = agents_cgroup_ready,
    };
    int report[2] = {-1, -1};
    int rc;

    if (r->flags & EXEC_FLAG_PTY)
        rc = open_terminal(e, &plan, r);
    else
        rc = open_pipes(e, &plan, r->flags & EXEC_FLAG_STDIN_PIPE);
    if (rc == 0 && pipe2(report, O_CLOEXEC) < 0)
        rc = -errno;
    if (rc < 0) {
        close_child_ends(&plan);
        close_parent_ends(e);
        close_fd(&report[0]);
        control_reply_error(id, -rc, "set up stdio of `%s`", r->argv[0]);
        return;
    }
    plan.report_fd = report[1];
    e->oom_kills_at_start = agents_cgroup_ready ? agents_oom_kills() : 0;

    pid_t pid = fork();
    if (pid == 0)
        run_child(&plan);
    int fork_err = errno;
    close_child_ends(&plan);
    if (pid < 0) {
        close_parent_ends(e);
        close_fd(&report[0]);
        control_reply_error(id, fork_err, "fork for `%s`", r->argv[0]);
        return;
    }

    e->used = true;
    e->id = id;
    e->pid = pid;

    child_failure_t failure;
    bool failed = await_exec(report[0], &failure);
    close_fd(&report[0]);

    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_u32(&w, (uint32_t)pid);
    control_send_writer(BLIN_CTL_STARTED, id, &w);
    blin_writer_free(&w);
    if (failed)
        send_child_failure(e, r, &failure);
    log_debug("execution %llu: pid %d runs `%s`", (unsigned long long)id, (int)pid, r->argv[0]);
}

void exec_handle_exec(uint64_t id, const uint8_t *payload, size_t len)
{
    exec_request_t request;

    const char *problem = parse_exec_request(payload, len, &request);
    if (problem != NULL) {
        control_reply_error(id, EINVAL, "%s", problem);
    } else if (find_execution(id) != NULL) {
        control_reply_error(id, EEXIST, "execution %llu is already running",
                            (unsigned long long)id);
    } else {
        execution_t *e = claim_free_slot();
        if (e == NULL)
            control_reply_error(id, EAGAIN, "%u executions already running",
                                GUEST_MAX_EXECUTIONS);
        else
            start_execution(e, id, &request);
    }
    exec_request_free(&request);
}

/* ---- output ---- */

static int *stream_fd(execution_t *e, stream_t stream)
{
    switch (stream) {
    case STREAM_STDOUT:
        return &e->stdout_fd;
    case STREAM_STDERR:
        return &e->stderr_fd;
    case STREAM_STDIN:
        return &e->stdin_fd;
    case STREAM_PTY:
        break;
    }
    return &e->pty_fd;
}

static void drop_input(execution_t *e)
{
    stdin_queued_total -= e->input_len;
    free(e->input);
    e->input = NULL;
    e->input_start = e->input_len = e->input_capacity = 0;
}

/* Reads one chunk and sends it. Returns the bytes sent, 0 when nothing was
 * waiting, -1 at the end of the stream (the fd is then closed). */
static ssize_t forward_output(execution_t *e, stream_t stream)
{
    int *fd = stream_fd(e, stream);
    ssize_t n = read(*fd, output_frame + BLIN_HEADER_SIZE, OUTPUT_READ_MAX);

    if (n > 0) {
        uint8_t type = stream == STREAM_STDERR ? BLIN_STDERR : BLIN_STDOUT;
        control_send_in_place(output_frame, type, e->id, (size_t)n);
        return n;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;

    /* EIO from a PTY master: no process holds the terminal now. The master
     * stays open until the main process has exited, because closing it hangs
     * up the terminal and that sends SIGHUP to a process still exiting. */
    if (stream == STREAM_PTY) {
        e->pty_idle = true;
        drop_input(e);
        return -1;
    }
    /* End of file: every writer of the pipe is gone. */
    close_fd(fd);
    return -1;
}

/* Sends what the exited process left in a stream, within a bound (see
 * DRAIN_SLACK), without waiting for writers that are still alive. */
static void drain_output(execution_t *e, stream_t stream)
{
    int queued = 0;
    size_t sent = 0;

    if (*stream_fd(e, stream) < 0 || (stream == STREAM_PTY && e->pty_idle))
        return;
    if (ioctl(*stream_fd(e, stream), FIONREAD, &queued) < 0 || queued < 0)
        queued = 0;
    size_t budget = (size_t)queued + DRAIN_SLACK;

    while (sent < budget) {
        ssize_t n = forward_output(e, stream);
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
}

static void send_exit(execution_t *e)
{
    int32_t code = -1;
    uint32_t term_signal = 0;
    uint32_t flags = 0;
    blin_writer_t w;

    if (WIFEXITED(e->wait_status)) {
        code = WEXITSTATUS(e->wait_status);
    } else if (WIFSIGNALED(e->wait_status)) {
        term_signal = (uint32_t)WTERMSIG(e->wait_status);
    }
    if (agents_cgroup_ready && agents_oom_kills() > e->oom_kills_at_start)
        flags |= 1u;

    blin_writer_init(&w);
    blin_put_u32(&w, (uint32_t)code);
    blin_put_u32(&w, term_signal);
    blin_put_u32(&w, flags);
    control_send_writer(BLIN_CTL_EXIT, e->id, &w);
    blin_writer_free(&w);
    log_debug("execution %llu: pid %d ended, code %d, signal %u, flags %u",
              (unsigned long long)e->id, (int)e->pid, (int)code, term_signal, flags);
}

/* Exit comes after the output: everything the process wrote is already in
 * its pipes when it has exited, so draining them first is enough. */
static void finish_execution(execution_t *e)
{
    drain_output(e, STREAM_PTY);
    drain_output(e, STREAM_STDOUT);
    drain_output(e, STREAM_STDERR);
    close_parent_ends(e);
    drop_input(e);
    send_exit(e);
    e->used = false;
}

void exec_reap_children(void)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            break;

        execution_t *e = find_execution_by_pid(pid);
        if (e == NULL) {
            /* An orphan re-parented to PID 1, or a grandchild. */
            log_debug("reaped pid %d", (int)pid);
            continue;
        }
        e->exited = true;
        e->wait_status = status;
    }

    for (size_t i = 0; i < GUEST_MAX_EXECUTIONS; i++)
        if (executions[i].used && executions[i].exited)
            finish_execution(&executions[i]);
}

/* ---- input ---- */

static int input_fd(const execution_t *e)
{
    return e->pty_fd >= 0 ? e->pty_fd : e->stdin_fd;
}

/* Writes queued Stdin until the process stops taking it. */
static void flush_input(execution_t *e)
{
    int fd = input_fd(e);

    while (e->input_len > 0) {
        ssize_t n = write(fd, e->input + e->input_start, e->input_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n < 0) {
            /* EPIPE: the process closed its stdin; EIO: the terminal is gone. */
            log_debug("execution %llu: stdin closed: %s", (unsigned long long)e->id,
                      errno_text(errno));
            drop_input(e);
            close_fd(&e->stdin_fd);
            return;
        }
        e->input_start += (size_t)n;
        e->input_len -= (size_t)n;
        stdin_queued_total -= (size_t)n;
    }

    /* Nothing is pending: give the buffer back, close stdin if asked to. */
    drop_input(e);
    if (e->stdin_eof_pending)
        close_fd(&e->stdin_fd);
}

static bool queue_input(execution_t *e, const uint8_t *data, size_t len)
{
    if (len > GUEST_STDIN_QUEUE_MAX - e->input_len ||
        len > GUEST_STDIN_QUEUE_TOTAL_MAX - stdin_queued_total)
        return false;

    if (e->input_start > 0) {
        memmove(e->input, e->input + e->input_start, e->input_len);
        e->input_start = 0;
    }
    if (e->input_len + len > e->input_capacity) {
        size_t capacity = e->input_capacity ? e->input_capacity : 4096;
        while (capacity < e->input_len + len)
            capacity *= 2;
        uint8_t *grown = realloc(e->input, capacity);
        if (grown == NULL)
            return false;
        e->input = grown;
        e->input_capacity = capacity;
    }
    memcpy(e->input + e->input_len, data, len);
    e->input_len += len;
    stdin_queued_total += len;
    return true;
}

void exec_handle_stdin(uint64_t id, const uint8_t *payload, size_t len)
{
    execution_t *e = find_execution(id);

    if (e == NULL) {
        control_reply_error(id, ESRCH, "stdin for execution %llu, which is not running",
                            (unsigned long long)id);
        return;
    }
    if (input_fd(e) < 0 || e->stdin_eof_pending || e->pty_idle) {
        control_reply_error(id, EPIPE, "stdin of execution %llu is closed",
                            (unsigned long long)id);
        return;
    }

    if (len == 0 && e->pty_fd < 0) {
        e->stdin_eof_pending = true;
    } else {
        const uint8_t eof = TERMINAL_EOF_CHAR;
        bool queued = len == 0 ? queue_input(e, &eof, 1) : queue_input(e, payload, len);
        if (!queued) {
            control_reply_error(id, ENOBUFS, "stdin of execution %llu: %zu bytes not read yet",
                                (unsigned long long)id, e->input_len);
            return;
        }
    }
    flush_input(e);
}

/* ---- signals and terminal size ---- */

void exec_handle_signal(uint64_t id, const uint8_t *payload, size_t len)
{
    blin_cursor_t c;

    blin_cursor_init(&c, payload, len);
    uint32_t sig = blin_get_u32(&c);
    if (c.failed || c.pos != c.len) {
        control_reply_error(id, EINVAL, "malformed signal payload");
        return;
    }
    if (sig == 0 || sig >= NSIG) {
        control_reply_error(id, EINVAL, "signal %u out of range 1-%d", sig, NSIG - 1);
        return;
    }

    execution_t *e = find_execution(id);
    if (e == NULL) {
        control_reply_error(id, ESRCH, "signal for execution %llu, which is not running",
                            (unsigned long long)id);
        return;
    }
    /* The process leads its own group (setsid), so -pid is its group. */
    if (kill(-e->pid, (int)sig) < 0)
        control_reply_error(id, errno, "send signal %u to process group %d", sig, (int)e->pid);
}

void exec_handle_resize(uint64_t id, const uint8_t *payload, size_t len)
{
    blin_cursor_t c;

    blin_cursor_init(&c, payload, len);
    struct winsize size = {.ws_row = blin_get_u16(&c), .ws_col = blin_get_u16(&c)};
    if (c.failed || c.pos != c.len) {
        control_reply_error(id, EINVAL, "malformed tty resize payload");
        return;
    }

    execution_t *e = find_execution(id);
    if (e == NULL || e->pty_fd < 0) {
        control_reply_error(id, ENOTTY, "execution %llu has no terminal",
                            (unsigned long long)id);
        return;
    }
    /* The kernel sends SIGWINCH to the terminal's foreground group. */
    if (ioctl(e->pty_fd, TIOCSWINSZ, &size) < 0)
        control_reply_error(id, errno, "resize terminal of execution %llu",
                            (unsigned long long)id);
}

/* ---- polling ---- */

static size_t add_poll(struct pollfd *fds, size_t count, execution_t *e, stream_t stream,
                       short events)
{
    int fd = *stream_fd(e, stream);

    fds[count] = (struct pollfd){.fd = fd, .events = events};
    poll_refs[count] = (poll_ref_t){.execution = e, .stream = stream, .fd = fd};
    return count + 1;
}

size_t exec_poll_prepare(struct pollfd *fds, size_t max)
{
    size_t count = 0;

    for (size_t i = 0; i < GUEST_MAX_EXECUTIONS && count + 3 <= max; i++) {
        execution_t *e = &executions[i];
        if (!e->used)
            continue;
        if (e->pty_fd >= 0 && !e->pty_idle)
            count = add_poll(fds, count, e, STREAM_PTY,
                             (short)(POLLIN | (e->input_len ? POLLOUT : 0)));
        if (e->stdout_fd >= 0)
            count = add_poll(fds, count, e, STREAM_STDOUT, POLLIN);
        if (e->stderr_fd >= 0)
            count = add_poll(fds, count, e, STREAM_STDERR, POLLIN);
        if (e->stdin_fd >= 0 && e->input_len > 0)
            count = add_poll(fds, count, e, STREAM_STDIN, POLLOUT);
    }
    return count;
}

void exec_poll_handle(const struct pollfd *fds, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const poll_ref_t *ref = &poll_refs[i];
        execution_t *e = ref->execution;
        short revents = fds[i].revents;

        /* Skip fds closed earlier in this pass. */
        if (revents == 0 || !e->used || *stream_fd(e, ref->stream) != ref->fd)
            continue;
        if ((revents & (POLLOUT | POLLERR)) && e->input_len > 0)
            flush_input(e);
        if (ref->stream != STREAM_STDIN && (revents & (POLLIN | POLLHUP | POLLERR)) &&
            *stream_fd(e, ref->stream) == ref->fd)
            forward_output(e, ref->stream);
    }
}
