/* blink-shim entry point: boot the session's VM, tell the starter it is up,
 * serve clients until the VM ends, and record how it ended.
 *
 * usage: blink-shim --home H --name N --memory MIB --cpus N --ready-fd FD
 *
 * Started by libblink (session.c) in a new session, detached from the
 * starter. QEMU is our child and dies with us (PR_SET_PDEATHSIG). The
 * starter waits on --ready-fd for one line: "ok BOOT_ID" or "error TEXT". */
#include "context.h"
#include "shim.h"
#include "shim_client.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int signo)
{
    (void)signo;
    stop_requested = 1;
}

typedef struct shim_args {
    const char *home;
    const char *name;
    unsigned memory_mib;
    unsigned cpus;
    int ready_fd;
    const char *loadvm; /* resume from this memory checkpoint instead of booting */
    bool cold;          /* stop when the clients are gone */
} shim_args_t;

static int parse_args(int argc, char **argv, shim_args_t *a)
{
    static const struct option options[] = {
        {"home", required_argument, NULL, 'h'},
        {"name", required_argument, NULL, 'n'},
        {"memory", required_argument, NULL, 'm'},
        {"cpus", required_argument, NULL, 'c'},
        {"ready-fd", required_argument, NULL, 'r'},
        {"loadvm", required_argument, NULL, 'l'},
        {"cold", no_argument, NULL, 'C'},     {"warm", no_argument, NULL, 'W'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    *a = (shim_args_t){.memory_mib = 512, .cpus = 1, .ready_fd = -1};
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        char *end = NULL;
        unsigned long v = optarg ? strtoul(optarg, &end, 10) : 0;
        bool number = optarg && *optarg && end && *end == '\0';
        switch (opt) {
        case 'h':
            a->home = optarg;
            break;
        case 'n':
            a->name = optarg;
            break;
        case 'm':
            if (!number || v < 128 || v > 65536)
                return -1;
            a->memory_mib = (unsigned)v;
            break;
        case 'c':
            if (!number || v < 1 || v > 64)
                return -1;
            a->cpus = (unsigned)v;
            break;
        case 'r':
            if (!number || v > 1024)
                return -1;
            a->ready_fd = (int)v;
            break;
        case 'l':
            if (!blink_name_valid(optarg))
                return -1;
            a->loadvm = optarg;
            break;
        case 'C':
        case 'W':
            a->cold = opt == 'C';
            break;
        default:
            return -1;
        }
    }
    return a->home && a->name ? 0 : -1;
}

static void report_ready(int *fd, const char *status, const char *text)
{
    if (*fd < 0)
        return;
    dprintf(*fd, "%s %s\n", status, text);
    close(*fd);
    *fd = -1;
}

static int listen_on(const char *path, blink_error_t *err)
{
    struct sockaddr_un addr;
    int dir_fd;
    if (blink_unix_address(path, &addr, &dir_fd, err) < 0)
        return -1;

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = fd < 0 ? -1 : 0;
    unlink(path);
    if (rc == 0 && (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 64) < 0))
        rc = -1;
    int e = errno;
    if (dir_fd >= 0)
        close(dir_fd);
    if (rc < 0) {
        if (fd >= 0)
            close(fd);
        return blink_fail(err, BLINK_E_IO, e, "listen on `%s`", path);
    }
    return fd;
}

static void record_state(shim_t *shim, const char *state, const char *last_end)
{
    blink_session_row_t row;
    blink_error_t err;
    if (blink_catalog_session_get(shim->catalog, shim->name, &row, &err) < 0) {
        log_warn("shim", "read session: %s", err.message);
        return;
    }
    snprintf(row.state, sizeof(row.state), "%s", state);
    bool running = strcmp(state, BLINK_STATE_RUNNING) == 0;
    bool starting = strcmp(state, BLINK_STATE_STARTING) == 0;
    row.shim_pid = running || starting ? getpid() : 0;
    row.qemu_pid = running ? shim->vm->pid : 0;
    snprintf(row.boot_id, sizeof(row.boot_id), "%s", running ? shim->boot_id : "");
    row.started_at = running ? (int64_t)(blink_wall_ns() / 1000000) : 0;
    if (last_end)
        snprintf(row.last_end, sizeof(row.last_end), "%s", last_end);
    if (blink_catalog_session_set_state(shim->catalog, &row, &err) < 0)
        log_warn("shim", "record session state: %s", err.message);
}

static int boot(shim_t *shim, const shim_args_t *a, blink_t *blink, blink_error_t *err)
{
    cleanup_free char *qemu = blink_qemu_path(err);
    cleanup_free char *kernel = NULL;
    cleanup_free char *initrd = NULL;
    cleanup_free char *disk = blink_strdup_printf("%s/sessions/%s/disk.qcow2", a->home, a->name);
    cleanup_free char *dir = blink_strdup_printf("%s/sessions/%s", a->home, a->name);
    /* The hub recorded when the session was opened, never the environment
     * of whichever command happened to start this VM. */
    cleanup_free char *hub = dir ? blink_vhub_load(dir) : NULL;
    cleanup_free char *vm_disk = shim_vm_disk_name(shim, 0, err);
    const char *accel = NULL;
    if (qemu == NULL || vm_disk == NULL || blink_kernel_paths(blink, &kernel, &initrd, err) < 0 ||
        (accel = blink_accel(blink, err)) == NULL)
        return -1;
    if (link(disk, vm_disk) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "link `%s` for the vm", disk);

    blink_vm_config_t config = {
        .qemu_path = qemu,
        .accel = accel,
        .kernel_path = kernel,
        .initrd_path = initrd,
        .memory_mib = a->memory_mib,
        .cpus = a->cpus,
        .disk_path = vm_disk,
        .control_port = true,
        .tmp_dir = blink->tmp_dir,
        .loadvm = a->loadvm,
        .vhub_socket = hub,
        .vhub_kind = "session",
        .vhub_name = a->name,
    };
    if (blink_vm_start(&config, &shim->vm, err) < 0)
        return -1;
    shim->vm->on_frame = shim_on_guest_frame;
    shim->vm->userdata = shim;

    /* A resumed guest is past its Ready: it runs where the checkpoint left
     * it and only needs the time. */
    if (a->loadvm) {
        shim->ready = true;
        return shim_send_init(shim, err);
    }

    uint64_t deadline = blink_now_ms() + 60000;
    const char *env = getenv("BLINK_BOOT_TIMEOUT");
    if (env && strtoul(env, NULL, 10) > 0)
        deadline = blink_now_ms() + strtoul(env, NULL, 10) * 1000;
    while (!shim->ready) {
        if (shim->vm->exited || shim->vm->control_closed) {
            char why[1024];
            blink_vm_wait_exit(shim->vm, blink_now_ms() + 2000);
            blink_vm_describe_end(shim->vm, why, sizeof(why));
            return blink_fail(err, BLINK_E_VM, 0, "boot vm: %s", why);
        }
        if (blink_now_ms() >= deadline)
            return blink_fail(err, BLINK_E_TIMEOUT, 0,
                              "boot vm: the guest did not report ready in time");
        if (blink_vm_pump(shim->vm, 200, err) < 0)
            return -1;
    }
    return 0;
}

/* A cold VM is idle when no client is connected and nothing runs. */
static bool cold_idle(const shim_t *shim)
{
    for (int i = 0; i < SHIM_MAX_CLIENTS; i++)
        if (shim->clients[i])
            return false;
    return shim_executions_running(shim) == 0;
}

/* Serves until the VM is gone. Returns how it ended, for the catalog. */
static void serve(shim_t *shim, char *last_end, size_t size)
{
    struct pollfd pfds[BLINK_VM_POLLFDS + 1 + SHIM_MAX_CLIENTS];
    shim_client_t *owners[SHIM_MAX_CLIENTS];

    while (!shim->vm->exited) {
        if (stop_requested || (shim->cold && shim->had_client && cold_idle(shim)))
            shim_begin_stop(shim);
        if (shim->stopping && blink_now_ms() >= shim->stop_deadline_ms) {
            log_warn("shim", "guest did not power off in time; killing the vm");
            blink_vm_kill(shim->vm);
            break;
        }

        int n = blink_vm_fill_pollfds(shim->vm, pfds);
        int vm_count = n;
        /* Read clients only while the guest keeps up with what they send. */
        bool take_input = blink_vm_send_queued(shim->vm) < BLINK_CAP_SEND_QUEUE / 2;
        if (!shim->stopping)
            pfds[n++] = (struct pollfd){.fd = shim->listen_fd, .events = POLLIN};
        int first_client = n;
        for (int i = 0; i < SHIM_MAX_CLIENTS; i++) {
            shim_client_t *c = shim->clients[i];
            if (c == NULL)
                continue;
            owners[n - first_client] = c;
            short events =
                (short)((take_input ? POLLIN : 0) | (c->out.len > c->out_offset ? POLLOUT : 0));
            pfds[n++] = (struct pollfd){.fd = c->fd, .events = events};
        }

        int rc = poll(pfds, (nfds_t)n, 200);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc > 0) {
            blink_error_t err;
            if (blink_vm_dispatch(shim->vm, pfds, vm_count, &err) < 0) {
                log_error("shim", "%s; stopping the vm", err.message);
                blink_vm_kill(shim->vm);
                snprintf(last_end, size, "crash: %.400s", err.message);
                return;
            }
            if (!shim->stopping && (pfds[vm_count].revents & POLLIN))
                shim_accept(shim);
            for (int i = first_client; i < n; i++)
                if (pfds[i].revents)
                    shim_client_io(shim, owners[i - first_client], pfds[i].revents);
        }
        shim_enforce_timeouts(shim);
        blink_vm_check_panic(shim->vm);
    }

    blink_vm_wait_exit(shim->vm, blink_now_ms() + 5000);
    if (shim->stopping) {
        snprintf(last_end, size, "clean stop");
    } else {
        char why[512];
        blink_vm_describe_end(shim->vm, why, sizeof(why));
        snprintf(last_end, size, "crash: %.400s", why);
    }
}

int main(int argc, char **argv)
{
    shim_args_t args;
    shim_t shim = {.listen_fd = -1, .next_guest_id = 1000};
    blink_error_t err = {0};

    signal(SIGPIPE, SIG_IGN);
    struct sigaction stop = {.sa_handler = on_stop_signal};
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGINT, &stop, NULL);
    sigaction(SIGHUP, &stop, NULL);

    if (parse_args(argc, argv, &args) < 0) {
        fprintf(stderr, "usage: blink-shim --home H --name N [--memory MIB] [--cpus N] "
                        "[--ready-fd FD]\n");
        return 2;
    }
    shim.name = args.name;
    shim.cold = args.cold;
    shim.exec_buffer = shim_exec_buffer_from_env();
    shim.client_queue_cap = SHIM_CLIENT_QUEUE_CAP + shim.exec_buffer;

    blink_t *blink = blink_open(args.home, &err);
    cleanup_free char *db = blink_strdup_printf("%s/blink.db", args.home);
    cleanup_free char *sock = blink_strdup_printf("%s/sessions/%s/shim.sock", args.home, args.name);
    cleanup_free char *disk =
        blink_strdup_printf("%s/sessions/%s/disk.qcow2", args.home, args.name);
    cleanup_free char *vm_dir = blink_strdup_printf("%s/sessions/%s/vm", args.home, args.name);
    shim.socket_path = sock;
    shim.disk_path = disk;
    shim.vm_dir = vm_dir;
    /* Our pid goes in the row before the boot: should the command that
     * started us die meanwhile, the next one sees a live shim booting, not
     * a crash, and waits for it instead of starting a second VM. */
    bool booting = blink != NULL && db != NULL && sock != NULL &&
                   blink_catalog_open(db, &shim.catalog, &err) == 0;
    if (booting)
        record_state(&shim, BLINK_STATE_STARTING, NULL);
    if (!booting || (shim.listen_fd = listen_on(sock, &err)) < 0 ||
        boot(&shim, &args, blink, &err) < 0) {
        char text[1400];
        blink_error_format(&err, text, sizeof(text));
        log_error("shim", "%s", text);
        report_ready(&args.ready_fd, "error", text);
        if (shim.catalog)
            record_state(&shim, BLINK_STATE_CRASHED, text);
        goto out;
    }

    if (blink_catalog_execution_abandon(shim.catalog, args.name, &err) < 0)
        log_warn("shim", "close out old executions: %s", err.message);
    record_state(&shim, BLINK_STATE_RUNNING, NULL);
    log_info("shim", "session %s running (qemu pid %d)", args.name, (int)shim.vm->pid);
    report_ready(&args.ready_fd, "ok", shim.boot_id);

    char last_end[600];
    serve(&shim, last_end, sizeof(last_end));
    shim_fail_all(&shim, "the vm stopped");
    record_state(&shim, shim.stopping ? BLINK_STATE_STOPPED : BLINK_STATE_CRASHED, last_end);
    log_info("shim", "session %s: %s", args.name, last_end);

out:
    for (int i = 0; i < SHIM_MAX_CLIENTS; i++)
        if (shim.clients[i])
            shim_client_close(&shim, shim.clients[i]);
    if (shim.listen_fd >= 0) {
        close(shim.listen_fd);
        unlink(sock);
    }
    blink_vm_free(shim.vm);
    if (vm_dir)
        blink_remove_tree(vm_dir); /* the VM's names of its disks */
    blink_catalog_close(shim.catalog);
    blink_close(blink);
    return 0;
}
