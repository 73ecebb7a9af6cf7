/* blink-server [--port N] [--bind ADDR] [--workers N]: the REST API.
 *
 * Address from --bind/--port, else $BLINK_BIND/$BLINK_PORT, else
 * 127.0.0.1:8787. SIGTERM or SIGINT stops it gracefully: no new
 * connections, requests in progress and running jobs finish, queued jobs
 * wait for the next start, warm VMs keep running; then exit 0. A second
 * signal ends it at once. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/socket.h>

#define DEFAULT_BIND "127.0.0.1"
#define DEFAULT_PORT 8787
#define DEFAULT_WORKERS 2
#define MAX_WORKERS 64
/* Seconds an idle keep-alive connection is kept. */
#define IDLE_TIMEOUT_SEC 60

typedef struct config {
    const char *bind;
    unsigned port;
    unsigned workers;
} config_t;

static bool parse_uint(const char *text, unsigned min, unsigned max, unsigned *out)
{
    if (text == NULL || *text < '0' || *text > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long n = strtoul(text, &end, 10);
    if (errno || *end != '\0' || n < min || n > max)
        return false;
    *out = (unsigned)n;
    return true;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: blink-server [--port N] [--bind ADDR] [--workers N] [--vhub SOCKET]\n"
                 "  env: BLINK_BIND (default " DEFAULT_BIND "), BLINK_PORT (default 8787),\n"
                 "       BLINK_WORKERS (default 2), BLINK_HOME, BLINK_LOG (default info),\n"
                 "       BLINK_VHUB_SOCKET (the V-Hub of runs and new sessions)\n");
}

/* Returns 0 to go on, else the exit status. */
static int parse_args(int argc, char **argv, config_t *c)
{
    static const struct option options[] = {
        {"port", required_argument, NULL, 'p'}, {"bind", required_argument, NULL, 'b'},
        {"workers", required_argument, NULL, 'w'}, {"help", no_argument, NULL, 'h'},
        {"vhub", required_argument, NULL, 'v'},
        {NULL, 0, NULL, 0},
    };
    const char *port = getenv("BLINK_PORT");
    const char *workers = getenv("BLINK_WORKERS");
    c->bind = getenv("BLINK_BIND") ? getenv("BLINK_BIND") : DEFAULT_BIND;
    c->port = DEFAULT_PORT;
    c->workers = DEFAULT_WORKERS;

    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'p': port = optarg; break;
        case 'b': c->bind = optarg; break;
        case 'w': workers = optarg; break;
        /* libblink reads it for every run and new session; set before any
         * thread starts. */
        case 'v': setenv("BLINK_VHUB_SOCKET", optarg, 1); break;
        case 'h': usage(stdout); return -1;
        default:
            fprintf(stderr, "blink-server: unknown option `%s`\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "blink-server: unexpected argument `%s`\n", argv[optind]);
        return 2;
    }
    if (port && !parse_uint(port, 1, 65535, &c->port)) {
        fprintf(stderr, "blink-server: port `%s`: use 1-65535\n", port);
        return 2;
    }
    if (workers && !parse_uint(workers, 0, MAX_WORKERS, &c->workers)) {
        fprintf(stderr, "blink-server: workers `%s`: use 0-%d\n", workers, MAX_WORKERS);
        return 2;
    }
    return 0;
}

/* Binds the listening socket ourselves, so that a taken address is a clear
 * error (MHD would only say that it did not start). */
static int listen_on(const config_t *c, blink_error_t *err)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", c->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(c->bind, port, &hints, &ai);
    if (rc != 0)
        return blink_fail(err, BLINK_E_INVALID, 0, "bind address `%s`: %s", c->bind,
                          gai_strerror(rc));

    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    /* SO_REUSEADDR lets a restart bind past old connections in TIME_WAIT;
     * on Linux it does not let two servers listen on one address. */
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return blink_fail(err, e == EACCES ? BLINK_E_PERMISSION : BLINK_E_IO, e,
                          "listen on %s port %u", c->bind, c->port);
    }
    freeaddrinfo(ai);
    return fd;
}

/* ---- signals: the handler only wakes main through a pipe ---- */

static int wake_pipe[2] = {-1, -1};
static volatile sig_atomic_t signals_seen;

static void on_stop_signal(int signo)
{
    (void)signo;
    if (signals_seen++ > 0)
        _exit(1);
    int saved = errno;
    ssize_t w = write(wake_pipe[1], "x", 1);
    (void)w;
    errno = saved;
}

/* A handler, not SIG_IGN: handlers are reset by exec, so programs that
 * libblink starts (QEMU, the shim) still get the default SIGPIPE. */
static void on_sigpipe(int signo)
{
    (void)signo;
}

static int install_signals(blink_error_t *err)
{
    if (pipe2(wake_pipe, O_CLOEXEC) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "create the signal pipe");

    struct sigaction sa = {0};
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "install signal handlers");
    sa.sa_handler = on_sigpipe;
    if (sigaction(SIGPIPE, &sa, NULL) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "install signal handlers");
    return 0;
}

static void wait_for_signal(void)
{
    char byte;
    while (read(wake_pipe[0], &byte, 1) < 0 && errno == EINTR)
        ;
}

/* ---- the server's life ---- */

/* One server per BLINK_HOME: at start a server fails the jobs it finds
 * running, which would be another server's. The lock lasts as long as the
 * process (the fd is never closed). */
static int lock_home(server_t *server, blink_error_t *err)
{
    cleanup_free char *dir = blink_strdup_printf("%s/locks", server->home);
    cleanup_free char *path = blink_strdup_printf("%s/locks/server.lock", server->home);
    if (dir == NULL || path == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "lock the blink home");
    if (blink_mkdir_p(dir, 0700, err) < 0)
        return -1;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return blink_fail(err, BLINK_E_IO, errno, "open `%s`", path);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            return blink_fail(err, BLINK_E_BUSY, 0,
                              "another blink-server serves BLINK_HOME `%s`", server->home);
        return blink_fail(err, BLINK_E_IO, e, "lock `%s`", path);
    }
    server->home_lock_fd = fd;
    return 0;
}

static int server_init(server_t *server, blink_error_t *err)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* runs.c waits on this clock */
    int rc = pthread_mutex_init(&server->lock, NULL);
    if (rc == 0)
        rc = pthread_cond_init(&server->changed, &attr);
    if (rc == 0)
        rc = pthread_cond_init(&server->idle, NULL);
    if (rc == 0)
        rc = pthread_cond_init(&server->logs_changed, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0)
        return blink_fail(err, BLINK_E_IO, rc, "initialize the server");
    server->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (server->stop_fd < 0)
        return blink_fail(err, BLINK_E_IO, errno, "initialize the server");

    server->blink = blink_open(NULL, err);
    if (server->blink == NULL)
        return -1;
    server->home = blink_home(server->blink);
    return lock_home(server, err);
}

/* Percent-decoding as libmicrohttpd does it, except that a URL or query
 * with an encoded NUL stays undecoded: decoded, the NUL would end the name
 * early ("a%00b" would name session "a"); undecoded, the name is invalid. */
static size_t unescape(void *cls, struct MHD_Connection *connection, char *text)
{
    (void)cls;
    (void)connection;
    if (strstr(text, "%00") != NULL)
        return strlen(text);
    return MHD_http_unescape(text);
}

static struct MHD_Daemon *start_http(server_t *server, int listen_fd, blink_error_t *err)
{
    /* Thread per connection: a synchronous session run or a long-poll
     * blocks its own connection only. MHD_USE_ITC lets a stop quiesce. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ITC | MHD_ALLOW_UPGRADE;
    struct MHD_Daemon *daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, http_access, server, MHD_OPTION_LISTEN_SOCKET, listen_fd,
        MHD_OPTION_NOTIFY_COMPLETED, http_completed, server, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)SERVER_CAP_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)IDLE_TIMEOUT_SEC, MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
        MHD_OPTION_END);
    if (daemon == NULL)
        blink_fail(err, BLINK_E_IO, 0, "[http] start the http daemon");
    return daemon;
}

static void stop_http(server_t *server, struct MHD_Daemon *daemon, int listen_fd)
{
    /* 1. No new connections. 2. Long-polls return and workers take no new
     * job. 3. Requests in progress finish. 4. Idle connections close. */
    MHD_quiesce_daemon(daemon);
    jobs_begin_stop(server);
    uint64_t one = 1;
    if (write(server->stop_fd, &one, sizeof(one)) < 0)
        log_warn("http", "wake attached clients: %s", strerror(errno));
    http_wait_idle(server);
    MHD_stop_daemon(daemon);
    close(listen_fd); /* after MHD_stop_daemon, as MHD_quiesce_daemon asks */
}

int main(int argc, char **argv)
{
    config_t config;
    int status = parse_args(argc, argv, &config);
    if (status != 0)
        return status < 0 ? 0 : status;

    blink_log_init();
    if (getenv("BLINK_LOG") == NULL)
        blink_log_threshold = BLINK_LOG_INFO; /* one line per request by default */

    server_t server = {0};
    blink_error_t err = {0};
    char text[1400];
    int listen_fd = -1;
    if (install_signals(&err) < 0 || server_init(&server, &err) < 0 ||
        (listen_fd = listen_on(&config, &err)) < 0 ||
        jobs_start(&server, config.workers, &err) < 0) {
        fprintf(stderr, "blink-server: error: %s\n", blink_error_format(&err, text, sizeof(text)));
        return 1;
    }

    struct MHD_Daemon *daemon = start_http(&server, listen_fd, &err);
    if (daemon == NULL) {
        fprintf(stderr, "blink-server: error: %s\n", blink_error_format(&err, text, sizeof(text)));
        return 1;
    }
    log_info("server", "listening on %s port %u (%u workers, home `%s`)", config.bind,
             config.port, config.workers, server.home);

    wait_for_signal();
    log_info("server", "stopping: finishing requests in progress and running jobs");
    stop_http(&server, daemon, listen_fd);
    jobs_join(&server);
    blink_close(server.blink);
    log_info("server", "stopped");
    return 0;
}
