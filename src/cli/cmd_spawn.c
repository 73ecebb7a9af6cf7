/* blink-cli session spawn --name N [--tty] [--rows R --cols C] [--env K=V]...
 *                         [--workdir D] [--timeout S] -- CMD...
 *
 * An interactive process in a session: our stdin goes to it, its stdout and
 * stderr come to ours, SIGWINCH resizes its terminal, Ctrl-C reaches it (as
 * a byte through the raw terminal with --tty, as SIGINT otherwise). The last
 * line on stdout is the exec_finished event. */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

static int signal_pipe[2] = {-1, -1};

static void on_signal(int signo)
{
    int saved = errno;
    unsigned char byte = (unsigned char)signo;
    if (write(signal_pipe[1], &byte, 1) < 0) {
        /* The pipe is full: signals are already pending there. */
    }
    errno = saved;
}

static void write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

/* The event must start a line of its own after the process's output. */
static char last_stdout_byte = '\n';

static void copy_output(blink_stream_t stream, const char *data, size_t len, void *userdata)
{
    (void)userdata;
    write_all(stream == BLINK_STDOUT ? STDOUT_FILENO : STDERR_FILENO, data, len);
    if (stream == BLINK_STDOUT && len > 0)
        last_stdout_byte = data[len - 1];
}

typedef struct spawn_args {
    const char *name;
    blink_spawn_options_t options;
    const char *env[CLI_MAX_ENV];
} spawn_args_t;

static int parse(int argc, char **argv, spawn_args_t *a, int *status)
{
    enum { OPT_NAME = 256, OPT_TTY, OPT_ROWS, OPT_COLS, OPT_ENV, OPT_WORKDIR, OPT_TIMEOUT };
    static const struct option options[] = {
        {"name", required_argument, NULL, OPT_NAME},
        {"tty", no_argument, NULL, OPT_TTY},
        {"rows", required_argument, NULL, OPT_ROWS},
        {"cols", required_argument, NULL, OPT_COLS},
        {"env", required_argument, NULL, OPT_ENV},
        {"workdir", required_argument, NULL, OPT_WORKDIR},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {NULL, 0, NULL, 0},
    };
    const char *command = "session spawn";
    unsigned long long n;
    size_t env_count = 0;
    int opt;

    a->options.struct_size = sizeof(a->options);
    opterr = 0;
    optind = 1;
    /* "+": stop at the first non-option, so the command keeps its own flags. */
    while ((opt = getopt_long(argc, argv, "+", options, NULL)) != -1) {
        switch (opt) {
        case OPT_NAME:
            a->name = optarg;
            break;
        case OPT_TTY:
            a->options.tty = true;
            break;
        case OPT_ROWS:
        case OPT_COLS:
            if (!cli_parse_number(optarg, 1, 10000, &n)) {
                *status = cli_usage_error(command, "--rows/--cols `%s`: use 1-10000", optarg);
                return 1;
            }
            if (opt == OPT_ROWS)
                a->options.rows = (unsigned)n;
            else
                a->options.cols = (unsigned)n;
            break;
        case OPT_ENV:
            if (strchr(optarg, '=') == NULL || optarg[0] == '=' || env_count == CLI_MAX_ENV) {
                *status = cli_usage_error(command, "--env `%s`: use KEY=VALUE", optarg);
                return 1;
            }
            a->env[env_count++] = optarg;
            break;
        case OPT_WORKDIR:
            a->options.workdir = optarg;
            break;
        case OPT_TIMEOUT:
            if (!cli_parse_number(optarg, 1, 7 * 86400, &n)) {
                *status = cli_usage_error(command, "--timeout `%s`", optarg);
                return 1;
            }
            a->options.timeout_sec = (unsigned)n;
            break;
        default:
            *status = cli_usage_error(command, "unknown option `%s`", argv[optind - 1]);
            return 1;
        }
    }
    if (a->name == NULL) {
        *status = cli_usage_error(command, "missing --name");
        return 1;
    }
    if (optind >= argc) {
        *status = cli_usage_error(command, "missing the command (after --)");
        return 1;
    }
    a->options.argv = (const char *const *)argv + optind;
    a->options.argc = (size_t)(argc - optind);
    a->options.env = a->env;
    a->options.env_count = env_count;
    return 0;
}

/* Pumps until the process exits, forwarding stdin, resizes and signals. */
static int interact(blink_execution_t *x, bool tty, blink_error_t *err)
{
    bool stdin_open = true;
    for (;;) {
        struct pollfd pfds[3] = {
            {.fd = blink_execution_fd(x), .events = POLLIN},
            {.fd = signal_pipe[0], .events = POLLIN},
            {.fd = stdin_open ? STDIN_FILENO : -1, .events = POLLIN},
        };
        if (poll(pfds, 3, -1) < 0 && errno != EINTR)
            return -1;

        if (pfds[1].revents & POLLIN) {
            unsigned char signo;
            while (read(signal_pipe[0], &signo, 1) == 1) {
                struct winsize ws;
                if (signo == SIGWINCH && ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0)
                    blink_execution_resize(x, ws.ws_row, ws.ws_col, err);
                else if (signo != SIGWINCH && !tty)
                    blink_execution_kill(x, signo, err);
            }
        }
        if (pfds[2].revents & (POLLIN | POLLHUP | POLLERR)) {
            char buf[16384];
            ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
            if (n > 0 && blink_execution_write(x, buf, (size_t)n, err) < 0)
                return -1;
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
                stdin_open = false;
                if (blink_execution_write(x, "", 0, err) < 0)
                    return -1;
            }
        }
        int rc = blink_execution_pump(x, 0, err);
        if (rc != 0)
            return rc < 0 ? -1 : 0;
    }
}

int cmd_spawn(int argc, char **argv)
{
    spawn_args_t a = {0};
    int status;
    if (parse(argc, argv, &a, &status))
        return status;

    bool terminal = a.options.tty && isatty(STDIN_FILENO);
    struct winsize ws;
    if (terminal && a.options.rows == 0 && ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0) {
        a.options.rows = ws.ws_row;
        a.options.cols = ws.ws_col;
    }
    a.options.on_output = copy_output;

    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        blink_error_t err = {.code = BLINK_E_IO, .sys_errno = errno, .message = "signal pipe"};
        return cli_fail(&err);
    }
    struct sigaction forward = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    int forwarded[] = {SIGWINCH, SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
        sigaction(forwarded[i], &forward, NULL);

    blink_error_t err = {0};
    blink_t *blink = blink_open(NULL, &err);
    blink_execution_t *x = NULL;
    if (blink == NULL || blink_session_spawn(blink, a.name, &a.options, &x, &err) < 0) {
        blink_close(blink);
        return cli_fail(&err);
    }

    struct termios saved;
    bool raw = terminal && tcgetattr(STDIN_FILENO, &saved) == 0;
    if (raw) {
        struct termios t = saved;
        cfmakeraw(&t);
        tcsetattr(STDIN_FILENO, TCSANOW, &t);
    }
    int rc = interact(x, terminal, &err);
    if (raw)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);

    int code = blink_execution_exit_code(x);
    int signo = blink_execution_exit_signal(x);
    bool timed_out = blink_execution_timed_out(x);
    blink_execution_free(x);
    blink_close(blink);
    if (rc < 0)
        return cli_fail(&err);

    if (last_stdout_byte != '\n')
        write_all(STDOUT_FILENO, "\n", 1);
    json_t *event = json_pack("{s:s, s:s, s:i, s:b}", "event", "exec_finished", "name", a.name,
                              "exit_code", code, "timed_out", timed_out);
    if (signo) {
        const char *abbrev = sigabbrev_np(signo);
        char name[32];
        snprintf(name, sizeof(name), "SIG%s", abbrev ? abbrev : "UNKNOWN");
        json_object_set_new(event, "signal", json_string(name));
    } else {
        json_object_set_new(event, "signal", json_null());
    }
    cli_print_event(event);
    if (timed_out)
        return CLI_EXIT_TIMEOUT;
    return signo ? CLI_EXIT_SIGNAL_BASE + signo : code & 0xff;
}
