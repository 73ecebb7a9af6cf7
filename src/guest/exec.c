/* Executions: the processes the host starts with Exec, their output, input,
 * signals, terminal size and exit. See docs/protocol.md, "Exec". */
#include "guest.h"
#include "caps.h"
#include "log.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

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

typedef struct execution {
    bool used;
    uint64_t id;
    pid_t pid;
    int pty_fd;    /* PTY master, output and input; -1 without a PTY */
    bool pty_idle; /* no process holds the terminal any more (EIO) */
    int stdout_fd; /* read ends of the output pipes; -1 once closed */
    int stderr_fd;
    int stdin_fd;           /* write end of the stdin pipe; -1 for /dev/null or closed */
    bool stdin_eof_pending; /* close the stdin pipe once the queue drains */
    uint8_t *input;         /* Stdin bytes the process has not read yet */
    size_t input_start;
    size_t input_len;
    size_t input_capacity;
    uint64_t oom_kills_at_start;
    bool exited;
    int wait_status;
    char run_agent[256]; /* a session run's agent file on /run, removed at exit */
} execution_t;

/* Where hosts put agent files that live only as long as their execution
 * (session runs; docs/cli.md). Anything else is left alone. */
#define RUN_AGENTS_DIR "/run/blink/agents/"

/* Removes a session run's agent file and its own folder: on a warm VM they
 * would otherwise fill the /run tmpfs run after run. */
static void remove_run_agent(execution_t *e)
{
    if (e->run_agent[0] == '\0')
        return;
    if (unlink(e->run_agent) == 0) {
        char *slash = strrchr(e->run_agent, '/');
        if (slash != NULL && slash > e->run_agent + strlen(RUN_AGENTS_DIR)) {
            *slash = '\0';
            rmdir(e->run_agent);
        }
    }
    e->run_agent[0] = '\0';
}

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

static void close_parent_ends(execution_t *e)
{
    close_fd(&e->pty_fd);
    close_fd(&e->stdout_fd);
    close_fd(&e->stderr_fd);
    close_fd(&e->stdin_fd);
}

/* ---- starting ---- */

static void start_execution(execution_t *e, uint64_t id, const exec_request_t *r)
{
    char failure[PATH_MAX + 256];
    spawned_t process;

    e->oom_kills_at_start = agents_cgroup_ready ? agents_oom_kills() : 0;
    int rc = spawn_process(r, agents_cgroup_ready, &process, failure, sizeof(failure));
    if (rc < 0) {
        control_reply_error(id, -rc, "start `%s`", r->argv[0]);
        return;
    }
    e->used = true;
    e->id = id;
    e->pid = process.pid;
    e->pty_fd = process.pty_fd;
    e->stdout_fd = process.stdout_fd;
    e->stderr_fd = process.stderr_fd;
    e->stdin_fd = process.stdin_fd;
    e->run_agent[0] = '\0';
    if (strncmp(r->argv[0], RUN_AGENTS_DIR, strlen(RUN_AGENTS_DIR)) == 0 &&
        strlen(r->argv[0]) < sizeof(e->run_agent) && strstr(r->argv[0], "/..") == NULL)
        memcpy(e->run_agent, r->argv[0], strlen(r->argv[0]) + 1);

    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_u32(&w, (uint32_t)process.pid);
    control_send_writer(BLIN_CTL_STARTED, id, &w);
    blin_writer_free(&w);

    /* A program that could not run says why on its stderr, as with a shell;
     * its Exit (126 or 127) follows when the child is reaped. */
    if (failure[0] != '\0')
        control_send(BLIN_STDERR, id, failure, strlen(failure));
    log_debug("execution %llu: pid %d runs `%s`", (unsigned long long)id, (int)process.pid,
              r->argv[0]);
}

void exec_handle_exec(uint64_t id, const uint8_t *payload, size_t len)
{
    exec_request_t request;

    const char *problem = exec_request_parse(payload, len, &request);
    if (problem != NULL) {
        control_reply_error(id, EINVAL, "%s", problem);
    } else if (find_execution(id) != NULL) {
        control_reply_error(id, EEXIST, "execution %llu is already running",
                            (unsigned long long)id);
    } else {
        execution_t *e = claim_free_slot();
        if (e == NULL)
            control_reply_error(id, EAGAIN, "%u executions already running", GUEST_MAX_EXECUTIONS);
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
 * waiting, -1 at the end of the stream (a pipe is then closed, a PTY marked
 * idle). */
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
    remove_run_agent(e);
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
        control_reply_error(id, EPIPE, "stdin of execution %llu is closed", (unsigned long long)id);
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
        control_reply_error(id, ENOTTY, "execution %llu has no terminal", (unsigned long long)id);
        return;
    }
    /* The kernel sends SIGWINCH to the terminal's foreground group. */
    if (ioctl(e->pty_fd, TIOCSWINSZ, &size) < 0)
        control_reply_error(id, errno, "resize terminal of execution %llu", (unsigned long long)id);
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
            count =
                add_poll(fds, count, e, STREAM_PTY, (short)(POLLIN | (e->input_len ? POLLOUT : 0)));
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
