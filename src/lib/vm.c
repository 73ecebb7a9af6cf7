/* QEMU microvm lifecycle. QEMU runs in the foreground as our child (the
 * seccomp sandbox's spawn=deny forbids -daemonize), in its own process group
 * so a terminal's Ctrl-C reaches Blink and not QEMU, and with a parent-death
 * signal so it never outlives the process that owns it. */
#include "vm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

extern char **environ;

/* File descriptor numbers QEMU sees for the sockets we pass it. */
enum { QEMU_FD_QMP = 3, QEMU_FD_CONTROL = 4, QEMU_FD_VHUB = 5, QEMU_FD_FIRST_FREE = 6 };

/* The kernel arguments every guest gets. `quiet` matters: under TCG every
 * byte on the emulated UART costs time. panic=-1 with -no-reboot turns a
 * guest panic into QEMU exiting instead of a hang. */
static const char base_cmdline[] = "console=ttyS0 quiet panic=-1 8250.nr_uarts=1";

/* microvm has no HPET or ACPI PM timer, and under TCG the kernel cannot
 * calibrate the TSC against the PIT either: without a given frequency it
 * stalls with "tsc: Marking TSC unstable". The value only has to be sane;
 * guest wall time comes from the host (Init message). KVM guests use
 * kvm-clock and need none of this. */
static const char tcg_cmdline[] = " tsc_early_khz=2000000 tsc=reliable";

typedef struct argv_builder {
    char **items;
    size_t count;
    size_t capacity;
    bool failed;
} argv_builder_t;

static void argv_add(argv_builder_t *b, const char *fmt, ...) BLINK_PRINTF(2, 3);
static void argv_add(argv_builder_t *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    if (b->count + 2 > b->capacity) {
        size_t cap = b->capacity ? b->capacity * 2 : 64;
        char **grown = realloc(b->items, cap * sizeof(*grown));
        if (grown == NULL) {
            b->failed = true;
            return;
        }
        b->items = grown;
        b->capacity = cap;
    }
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (s == NULL) {
        b->failed = true;
        return;
    }
    b->items[b->count++] = s;
    b->items[b->count] = NULL;
}

static void argv_free(argv_builder_t *b)
{
    for (size_t i = 0; i < b->count; i++)
        free(b->items[i]);
    free(b->items);
    memset(b, 0, sizeof(*b));
}

/* QEMU's option syntax separates properties with commas; a comma inside a
 * value is written twice (docs/system/invocation: "-blockdev"). Without this,
 * a path could add options of its own. */
static char *escape_option_value(const char *value)
{
    size_t commas = 0;
    for (const char *p = value; *p; p++)
        commas += *p == ',';
    char *out = malloc(strlen(value) + commas + 1);
    if (out == NULL)
        return NULL;
    char *q = out;
    for (const char *p = value; *p; p++) {
        *q++ = *p;
        if (*p == ',')
            *q++ = ',';
    }
    *q = '\0';
    return out;
}

static void build_qemu_argv(const blink_vm_config_t *c, unsigned vsock_cid, argv_builder_t *a)
{
    bool kvm = strcmp(c->accel, "kvm") == 0;

    argv_add(a, "%s", c->qemu_path);
    argv_add(a, "-M");
    argv_add(a, "microvm,isa-serial=on,rtc=on,x-option-roms=off");
    argv_add(a, "-accel");
    argv_add(a, "%s", kvm ? "kvm" : "tcg");
    argv_add(a, "-cpu");
    argv_add(a, "%s", kvm ? "host" : "max");
    argv_add(a, "-m");
    argv_add(a, "%u", c->memory_mib);
    argv_add(a, "-smp");
    argv_add(a, "%u", c->cpus);
    argv_add(a, "-nodefaults");
    argv_add(a, "-no-user-config");
    argv_add(a, "-display");
    argv_add(a, "none");
    argv_add(a, "-no-reboot");
    argv_add(a, "-kernel");
    argv_add(a, "%s", c->kernel_path);
    argv_add(a, "-initrd");
    argv_add(a, "%s", c->initrd_path);
    argv_add(a, "-append");
    argv_add(a, "%s%s%s%s", base_cmdline, kvm ? "" : tcg_cmdline, c->extra_cmdline ? " " : "",
             c->extra_cmdline ? c->extra_cmdline : "");
    argv_add(a, "-chardev");
    argv_add(a, "stdio,id=console,signal=off");
    argv_add(a, "-serial");
    argv_add(a, "chardev:console");
    argv_add(a, "-chardev");
    argv_add(a, "socket,id=qmp,fd=%d", QEMU_FD_QMP);
    argv_add(a, "-mon");
    argv_add(a, "chardev=qmp,mode=control");
    argv_add(a, "-device");
    argv_add(a, "virtio-rng-device");
    if (c->control_port) {
        argv_add(a, "-device");
        argv_add(a, "virtio-serial-device,id=vser");
        argv_add(a, "-chardev");
        argv_add(a, "socket,id=control,fd=%d", QEMU_FD_CONTROL);
        argv_add(a, "-device");
        argv_add(a, "virtserialport,bus=vser.0,chardev=control,name=org.blink.ctl");
        /* The V-Hub carrier: guest programs' hub connections (docs/vhub.md). */
        argv_add(a, "-chardev");
        argv_add(a, "socket,id=vhub,fd=%d", QEMU_FD_VHUB);
        argv_add(a, "-device");
        argv_add(a, "virtserialport,bus=vser.0,chardev=vhub,name=org.blink.vhub");
    }
    if (vsock_cid) {
        argv_add(a, "-device");
        argv_add(a, "vhost-vsock-device,guest-cid=%u", vsock_cid);
    }
    if (c->disk_path) {
        char *disk = escape_option_value(c->disk_path);
        if (disk == NULL)
            a->failed = true;
        argv_add(a, "-blockdev");
        argv_add(a,
                 "driver=qcow2,node-name=root,read-only=%s,discard=unmap,"
                 "file.driver=file,file.filename=%s,file.aio=threads",
                 c->disk_read_only ? "on" : "off", disk ? disk : "");
        free(disk);
        argv_add(a, "-device");
        argv_add(a, "virtio-blk-device,drive=root");
    }
    if (c->loadvm) {
        argv_add(a, "-loadvm");
        argv_add(a, "%s", c->loadvm);
    }
    /* QEMU's seccomp filter: no obsolete syscalls, no setuid, no fork/exec,
     * no scheduler or resource changes (qemu-options.hx, -sandbox). */
    argv_add(a, "-sandbox");
    argv_add(a, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
}

/* The environment QEMU gets: ours, with TMPDIR pointing into BLINK_HOME. */
static char **build_env(const char *tmp_dir)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof(*env));
    if (env == NULL)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "TMPDIR=", 7) != 0)
            env[j++] = environ[i];
    if (tmp_dir)
        env[j++] = blink_strdup_printf("TMPDIR=%s", tmp_dir);
    return env;
}

/* Runs in the forked child: only async-signal-safe calls until execve. */
static void exec_qemu(char **argv, char **env, int console_w, int qmp_fd, int control_fd,
                      int vhub_fd, pid_t parent)
{
    int devnull = open("/dev/null", O_RDONLY);

    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);

    /* Move the descriptors to fixed numbers above 2 first so the dup2 calls
     * below never overwrite one another. */
    int q = fcntl(qmp_fd, F_DUPFD, 16);
    int c = control_fd >= 0 ? fcntl(control_fd, F_DUPFD, 16) : -1;
    int h = vhub_fd >= 0 ? fcntl(vhub_fd, F_DUPFD, 16) : -1;
    int w = fcntl(console_w, F_DUPFD, 16);
    if (devnull < 0 || q < 0 || w < 0 || dup2(devnull, 0) < 0 || dup2(w, 1) < 0 || dup2(w, 2) < 0 ||
        dup2(q, QEMU_FD_QMP) < 0)
        _exit(127);
    if ((c >= 0 && dup2(c, QEMU_FD_CONTROL) < 0) || (h >= 0 && dup2(h, QEMU_FD_VHUB) < 0))
        _exit(127);
    syscall(SYS_close_range, QEMU_FD_FIRST_FREE, ~0u, 0);

    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    execve(argv[0], argv, env);
    _exit(127);
}

static int spawn_qemu(const blink_vm_config_t *config, blink_vm_t *vm, int qmp_peer,
                      int control_peer, int vhub_peer, unsigned vsock_cid, blink_error_t *err)
{
    argv_builder_t argv = {0};
    build_qemu_argv(config, vsock_cid, &argv);
    char **env = build_env(config->tmp_dir);
    int console[2] = {-1, -1};

    if (argv.failed || env == NULL) {
        blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "build qemu command line");
        goto out;
    }
    if (pipe2(console, O_CLOEXEC) < 0) {
        blink_fail(err, BLINK_E_IO, errno, "create console pipe");
        goto out;
    }

    if (blink_log_threshold >= BLINK_LOG_DEBUG)
        for (size_t i = 0; i < argv.count; i++)
            log_debug("vm", "qemu argv[%zu] = %s", i, argv.items[i]);

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        blink_fail(err, BLINK_E_IO, errno, "fork qemu");
        goto out;
    }
    if (pid == 0)
        exec_qemu(argv.items, env, console[1], qmp_peer, control_peer, vhub_peer, parent);

    vm->pid = pid;
    vm->console_fd = console[0];
    console[0] = -1;
    blink_set_nonblocking(vm->console_fd);
    vm->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (vm->pidfd < 0)
        blink_fail(err, BLINK_E_IO, errno, "watch qemu process");

out:
    if (console[0] >= 0)
        close(console[0]);
    if (console[1] >= 0)
        close(console[1]);
    if (env) {
        for (size_t i = 0; env[i]; i++)
            if (strncmp(env[i], "TMPDIR=", 7) == 0)
                free(env[i]);
        free(env);
    }
    argv_free(&argv);
    return vm->pid > 0 && vm->pidfd >= 0 ? 0 : -1;
}

/* What the kernel prints when it panics; with panic=-1 it then reboots and
 * QEMU (-no-reboot) exits, but a reboot can also fail and leave the vCPU
 * spinning, so the host does not wait for it. */
#define PANIC_LINE "Kernel panic - not syncing"
#define PANIC_GRACE_MS 1000

void blink_vm_check_panic(blink_vm_t *vm)
{
    if (vm->panic_seen_ms == 0 || vm->exited || vm->pid <= 0)
        return;
    if (blink_now_ms() - vm->panic_seen_ms < PANIC_GRACE_MS)
        return;
    log_info("vm", "guest kernel panicked; killing qemu pid %d", (int)vm->pid);
    kill(vm->pid, SIGKILL);
    blink_vm_wait_exit(vm, UINT64_MAX);
}

static void drain_console(blink_vm_t *vm)
{
    char chunk[4096];
    for (;;) {
        ssize_t n = read(vm->console_fd, chunk, sizeof(chunk));
        if (n > 0) {
            blink_tail_append(vm->console_tail, &vm->console_tail_len, BLINK_CAP_CONSOLE_TAIL,
                              chunk, (size_t)n);
            if (vm->panic_seen_ms == 0 &&
                memmem(vm->console_tail, vm->console_tail_len, PANIC_LINE, strlen(PANIC_LINE)))
                vm->panic_seen_ms = blink_now_ms();
            if (blink_log_threshold >= BLINK_LOG_DEBUG)
                log_debug("console", "%.*s", (int)n, chunk);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0) {
            close(vm->console_fd);
            vm->console_fd = -1;
        }
        return;
    }
}

int blink_vm_start(const blink_vm_config_t *config, blink_vm_t **out, blink_error_t *err)
{
    blink_vm_t *vm = calloc(1, sizeof(*vm));
    int qmp_pair[2] = {-1, -1};
    int control_pair[2] = {-1, -1};
    int vhub_peer = -1;
    unsigned vsock_cid = 0;

    if (vm == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "allocate vm");
    vm->pidfd = vm->control_fd = vm->console_fd = -1;
    vm->qmp.fd = -1;
    vm->started_ms = blink_now_ms();
    blin_decoder_init(&vm->decoder, BLINK_CAP_BLIN_PAYLOAD);

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qmp_pair) < 0 ||
        (config->control_port &&
         socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, control_pair) < 0)) {
        blink_fail(err, BLINK_E_IO, errno, "create vm sockets");
        goto fail;
    }
    if (config->control_port) {
        blink_vhub_config_t hub = {.hub_path = config->vhub_socket,
                                   .kind = config->vhub_kind,
                                   .name = config->vhub_name,
                                   .vsock = true};
        if (blink_vhub_new(&hub, &vm->vhub, &vhub_peer, &vsock_cid, err) < 0)
            goto fail;
    }

    if (spawn_qemu(config, vm, qmp_pair[1], control_pair[1], vhub_peer, vsock_cid, err) < 0)
        goto fail;
    if (vhub_peer >= 0)
        close(vhub_peer);
    vhub_peer = -1;
    close(qmp_pair[1]);
    qmp_pair[1] = -1;
    if (control_pair[1] >= 0)
        close(control_pair[1]);
    control_pair[1] = -1;

    vm->control_fd = control_pair[0];
    control_pair[0] = -1;
    if (vm->control_fd >= 0)
        blink_set_nonblocking(vm->control_fd);

    int qmp_fd = qmp_pair[0];
    qmp_pair[0] = -1;
    if (blink_qmp_connect(&vm->qmp, qmp_fd, blink_now_ms() + 10000, err) < 0) {
        /* QEMU usually failed on its command line; its own words are the
         * useful part of the error. */
        blink_vm_wait_exit(vm, blink_now_ms() + 2000);
        char why[1024];
        blink_vm_describe_end(vm, why, sizeof(why));
        blink_fail(err, BLINK_E_VM, 0, "start qemu: %s", why);
        goto fail;
    }

    log_info("vm", "qemu pid %d started (%s, %u MiB, %u cpu)", (int)vm->pid, config->accel,
             config->memory_mib, config->cpus);
    *out = vm;
    return 0;

fail:
    for (int i = 0; i < 2; i++) {
        if (qmp_pair[i] >= 0)
            close(qmp_pair[i]);
        if (control_pair[i] >= 0)
            close(control_pair[i]);
    }
    if (vhub_peer >= 0)
        close(vhub_peer);
    blink_vm_free(vm);
    return -1;
}

int blink_vm_send(blink_vm_t *vm, uint8_t type, uint64_t request_id, const void *payload,
                  size_t len, blink_error_t *err)
{
    if (vm->control_fd < 0 || vm->control_closed)
        return blink_fail(err, BLINK_E_VM, EPIPE, "send to guest: control port closed");
    if (len > BLINK_CAP_BLIN_PAYLOAD)
        return blink_fail(err, BLINK_E_INTERNAL, EMSGSIZE, "send %s to guest: %zu bytes",
                          blin_type_name(type), len);
    if (blink_vm_send_queued(vm) + len > BLINK_CAP_SEND_QUEUE)
        return blink_fail(err, BLINK_E_BUSY, 0, "send to guest: queue full");

    /* Compact the queue before growing it. */
    if (vm->send_offset > 0) {
        memmove(vm->send_queue.data, vm->send_queue.data + vm->send_offset,
                vm->send_queue.len - vm->send_offset);
        vm->send_queue.len -= vm->send_offset;
        vm->send_offset = 0;
    }

    uint8_t header[BLIN_HEADER_SIZE];
    blin_header_t h = {.type = type, .length = (uint32_t)len, .request_id = request_id};
    blin_header_encode(&h, header);
    if (blink_buf_append(&vm->send_queue, header, sizeof(header)) < 0 ||
        blink_buf_append(&vm->send_queue, payload, len) < 0)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "queue frame for guest");
    return 0;
}

size_t blink_vm_send_queued(const blink_vm_t *vm)
{
    return vm->send_queue.len - vm->send_offset;
}

static int flush_send_queue(blink_vm_t *vm, blink_error_t *err)
{
    while (blink_vm_send_queued(vm) > 0) {
        ssize_t n = send(vm->control_fd, vm->send_queue.data + vm->send_offset,
                         blink_vm_send_queued(vm), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n < 0) {
            vm->control_closed = true;
            return blink_fail(err, BLINK_E_VM, errno, "write to guest control port");
        }
        vm->send_offset += (size_t)n;
    }
    vm->send_queue.len = 0;
    vm->send_offset = 0;
    return 0;
}

static int read_control(blink_vm_t *vm, blink_error_t *err)
{
    uint8_t chunk[65536];
    ssize_t n = recv(vm->control_fd, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0) {
        vm->control_closed = true;
        return 0;
    }

    size_t off = 0;
    while (off < (size_t)n) {
        bool ready = false;
        long used = blin_decoder_feed(&vm->decoder, chunk + off, (size_t)n - off, &ready);
        if (used < 0)
            return blink_fail(err, BLINK_E_PROTOCOL, 0, "[guest] bad frame: %s",
                              blin_decode_strerror((blin_decode_status_t)used));
        off += (size_t)used;
        if (ready && vm->on_frame &&
            vm->on_frame(vm, &vm->decoder.header, vm->decoder.payload, vm->userdata, err) < 0)
            return -1;
    }
    return 0;
}

static void reap(blink_vm_t *vm)
{
    int status;
    if (vm->exited || vm->pid <= 0)
        return;
    if (waitpid(vm->pid, &status, WNOHANG) == vm->pid) {
        vm->exited = true;
        vm->exit_status = status;
        log_info("vm", "qemu pid %d exited (status %d)", (int)vm->pid, status);
    }
}

int blink_vm_fill_pollfds(blink_vm_t *vm, struct pollfd *pfds)
{
    int n = 0;

    if (vm->control_fd >= 0 && !vm->control_closed)
        pfds[n++] = (struct pollfd){
            .fd = vm->control_fd,
            .events = (short)(POLLIN | (blink_vm_send_queued(vm) ? POLLOUT : 0))};
    if (vm->qmp.fd >= 0)
        pfds[n++] = (struct pollfd){.fd = vm->qmp.fd, .events = POLLIN};
    if (vm->console_fd >= 0)
        pfds[n++] = (struct pollfd){.fd = vm->console_fd, .events = POLLIN};
    if (vm->pidfd >= 0 && !vm->exited)
        pfds[n++] = (struct pollfd){.fd = vm->pidfd, .events = POLLIN};
    vm->own_pollfds = n;
    if (vm->vhub && !vm->exited)
        n += blink_vhub_fill_pollfds(vm->vhub, pfds + n);
    return n;
}

int blink_vm_dispatch(blink_vm_t *vm, const struct pollfd *pfds, int count, blink_error_t *err)
{
    int own = count < vm->own_pollfds ? count : vm->own_pollfds;
    if (vm->vhub && count > own)
        blink_vhub_dispatch(vm->vhub, pfds + own, count - own);
    for (int i = 0; i < own; i++) {
        short revents = pfds[i].revents;
        int fd = pfds[i].fd;
        if (revents == 0)
            continue;

        if (fd == vm->console_fd) {
            drain_console(vm);
        } else if (fd == vm->qmp.fd) {
            blink_error_t ignored;
            if (blink_qmp_pump(&vm->qmp, &ignored) < 0)
                blink_qmp_close(&vm->qmp);
        } else if (fd == vm->control_fd) {
            if ((revents & POLLOUT) && flush_send_queue(vm, err) < 0)
                return -1;
            if ((revents & (POLLIN | POLLHUP | POLLERR)) && read_control(vm, err) < 0)
                return -1;
        } else if (fd == vm->pidfd) {
            reap(vm);
        }
    }
    return 0;
}

int blink_vm_pump(blink_vm_t *vm, int timeout_ms, blink_error_t *err)
{
    struct pollfd pfds[BLINK_VM_POLLFDS];
    int n = blink_vm_fill_pollfds(vm, pfds);

    if (vm->panic_seen_ms && (timeout_ms < 0 || timeout_ms > PANIC_GRACE_MS))
        timeout_ms = PANIC_GRACE_MS;
    int rc = poll(pfds, (nfds_t)n, timeout_ms);
    if (rc < 0 && errno != EINTR)
        return blink_fail(err, BLINK_E_IO, errno, "poll vm");
    if (rc > 0 && blink_vm_dispatch(vm, pfds, n, err) < 0)
        return -1;
    blink_vm_check_panic(vm);
    return 0;
}

int blink_vm_wait_exit(blink_vm_t *vm, uint64_t deadline_ms)
{
    while (!vm->exited) {
        reap(vm);
        if (vm->exited)
            break;
        uint64_t now = blink_now_ms();
        if (now >= deadline_ms)
            return -1;
        if (vm->console_fd >= 0 || vm->pidfd >= 0) {
            struct pollfd pfds[2];
            int n = 0;
            if (vm->pidfd >= 0)
                pfds[n++] = (struct pollfd){.fd = vm->pidfd, .events = POLLIN};
            if (vm->console_fd >= 0)
                pfds[n++] = (struct pollfd){.fd = vm->console_fd, .events = POLLIN};
            poll(pfds, (nfds_t)n, (int)(deadline_ms - now));
            if (vm->console_fd >= 0)
                drain_console(vm);
        }
    }
    if (vm->console_fd >= 0)
        drain_console(vm);
    return 0;
}

void blink_vm_kill(blink_vm_t *vm)
{
    if (vm->pid <= 0 || vm->exited)
        return;
    if (vm->qmp.fd >= 0) {
        blink_error_t ignored;
        blink_qmp_execute(&vm->qmp, "quit", NULL, NULL, blink_now_ms() + 1000, &ignored);
    }
    if (blink_vm_wait_exit(vm, blink_now_ms() + 2000) == 0)
        return;
    kill(vm->pid, SIGKILL);
    blink_vm_wait_exit(vm, UINT64_MAX);
}

const char *blink_vm_console(blink_vm_t *vm)
{
    vm->console_tail[vm->console_tail_len] = '\0';
    return vm->console_tail;
}

/* The last non-empty line of the console, where QEMU and the kernel put the
 * reason they stopped. */
static void last_console_line(blink_vm_t *vm, char *buf, size_t size)
{
    const char *text = blink_vm_console(vm);
    size_t end = strlen(text);
    while (end > 0 && (text[end - 1] == '\n' || text[end - 1] == '\r'))
        end--;
    size_t start = end;
    while (start > 0 && text[start - 1] != '\n')
        start--;
    snprintf(buf, size, "%.*s", (int)(end - start), text + start);
}

void blink_vm_describe_end(blink_vm_t *vm, char *buf, size_t size)
{
    const char *console = blink_vm_console(vm);
    char line[512];
    last_console_line(vm, line, sizeof(line));

    if (vm->qmp.guest_panicked || vm->panic_seen_ms || strstr(console, "Kernel panic") != NULL) {
        const char *panic = strstr(console, "Kernel panic");
        snprintf(buf, size, "the guest kernel panicked%s%.200s", panic ? ": " : "",
                 panic ? panic : "");
        buf[strcspn(buf, "\r\n")] = '\0';
        return;
    }
    if (!vm->exited) {
        snprintf(buf, size, "qemu is still running");
        return;
    }
    if (WIFSIGNALED(vm->exit_status))
        snprintf(buf, size, "qemu was killed by signal %d%s%s", WTERMSIG(vm->exit_status),
                 line[0] ? "; last output: " : "", line);
    else if (WEXITSTATUS(vm->exit_status) != 0)
        snprintf(buf, size, "qemu exited with status %d%s%s", WEXITSTATUS(vm->exit_status),
                 line[0] ? ": " : "", line);
    else if (vm->qmp.shutdown_seen)
        snprintf(buf, size, "the vm stopped (%s)%s%s", vm->qmp.shutdown_reason,
                 line[0] ? "; last output: " : "", line);
    else
        snprintf(buf, size, "the vm stopped%s%s", line[0] ? "; last output: " : "", line);
}

void blink_vm_free(blink_vm_t *vm)
{
    if (vm == NULL)
        return;
    blink_vm_kill(vm);
    blink_qmp_close(&vm->qmp);
    if (vm->pidfd >= 0)
        close(vm->pidfd);
    if (vm->control_fd >= 0)
        close(vm->control_fd);
    if (vm->console_fd >= 0)
        close(vm->console_fd);
    blink_vhub_free(vm->vhub);
    blin_decoder_free(&vm->decoder);
    blink_buf_free(&vm->send_queue);
    free(vm);
}
