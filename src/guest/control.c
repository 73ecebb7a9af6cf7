/* The control port: Ready, the event loop, and the VM-wide messages
 * (Heartbeat, Init, Shutdown). Executions and file transfers have their own
 * files; this one hands them their frames. See docs/protocol.md. */
#include "guest.h"
#include "caps.h"
#include "log.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL_VERSION 1u
#define HEARTBEAT_MAX    64u
#define HOSTNAME_MAX     64u

/* Guest-to-host payloads are small (output chunks are 32 KiB), so frames are
 * assembled here and leave in one write. */
#define SEND_BUFFER_PAYLOAD (64u << 10)

static int control_fd = -1;
static uint8_t send_buffer[BLIN_HEADER_SIZE + SEND_BUFFER_PAYLOAD];

static _Noreturn void host_unreachable(int err)
{
    log_error_errno(err, "write to control port; powering off");
    power_off();
}

void control_send_in_place(uint8_t *frame, uint8_t type, uint64_t request_id, size_t len)
{
    blin_header_t header = {.type = type, .length = (uint32_t)len, .request_id = request_id};

    blin_header_encode(&header, frame);
    int rc = write_all(control_fd, frame, BLIN_HEADER_SIZE + len);
    if (rc < 0)
        host_unreachable(-rc);
}

void control_send(uint8_t type, uint64_t request_id, const void *payload, size_t len)
{
    if (len <= SEND_BUFFER_PAYLOAD) {
        if (len > 0)
            memcpy(send_buffer + BLIN_HEADER_SIZE, payload, len);
        control_send_in_place(send_buffer, type, request_id, len);
        return;
    }
    int rc = blin_write_frame(control_fd, type, request_id, payload, len);
    if (rc < 0)
        host_unreachable(-rc);
}

void control_send_writer(uint8_t type, uint64_t request_id, blin_writer_t *w)
{
    if (w->failed) {
        /* Only our own replies come through here, and they are small. */
        log_error("encode %s reply for request %llu: out of memory", blin_type_name(type),
                  (unsigned long long)request_id);
        return;
    }
    control_send(type, request_id, w->data, w->len);
}

void control_reply_error(uint64_t request_id, int err, const char *fmt, ...)
{
    char message[512];
    blin_writer_t w;
    va_list ap;

    va_start(ap, fmt);
    size_t len = format_text(message, sizeof(message), fmt, ap);
    va_end(ap);
    if (err != 0)
        format_text_args(message + len, sizeof(message) - len, ": %s", errno_text(err));
    log_warn("request %llu: %s", (unsigned long long)request_id, message);

    blin_writer_init(&w);
    blin_put_u32(&w, (uint32_t)err);
    blin_put_string(&w, message);
    control_send_writer(BLIN_ERROR, request_id, &w);
    blin_writer_free(&w);
}

/* Reads a one-line file such as boot_id into `buf` without its newline; an
 * empty string when it cannot be read. */
static void read_line_file(const char *path, char *buf, size_t size)
{
    ssize_t len = read_small_file(path, buf, size);
    if (len < 0) {
        log_warn_errno((int)-len, "read %s", path);
        buf[0] = '\0';
        return;
    }
    buf[strcspn(buf, "\n")] = '\0';
}

/* Handshake step 2: Ready, protocol 1, kernel release, boot id. The write
 * blocks until the host has connected to the port. */
static void send_ready(void)
{
    struct utsname uts;
    char boot_id[64];
    blin_writer_t w;

    if (uname(&uts) < 0)
        memcpy(uts.release, "unknown", sizeof("unknown"));
    read_line_file("/proc/sys/kernel/random/boot_id", boot_id, sizeof(boot_id));

    blin_writer_init(&w);
    blin_put_u32(&w, PROTOCOL_VERSION);
    blin_put_string(&w, uts.release);
    blin_put_string(&w, boot_id);
    control_send_writer(BLIN_CTL_READY, 0, &w);
    blin_writer_free(&w);

    struct timespec up;
    clock_gettime(CLOCK_BOOTTIME, &up);
    log_info("ready, %lld ms after boot", (long long)up.tv_sec * 1000 + up.tv_nsec / 1000000);
}

static void handle_heartbeat(uint64_t id, const uint8_t *payload, size_t len)
{
    if (len > HEARTBEAT_MAX) {
        control_reply_error(id, EINVAL, "heartbeat payload of %zu bytes exceeds %u", len,
                            HEARTBEAT_MAX);
        return;
    }
    control_send(BLIN_HEARTBEAT, id, payload, len);
}

/* Handshake step 3: the host's clock and the VM's host name. */
static void handle_init(uint64_t id, const uint8_t *payload, size_t len)
{
    blin_cursor_t c;

    blin_cursor_init(&c, payload, len);
    uint64_t unix_time_ns = blin_get_u64(&c);
    char *hostname = blin_get_string(&c, HOSTNAME_MAX);
    if (c.failed || c.pos != c.len) {
        free(hostname);
        control_reply_error(id, EINVAL, "malformed init payload");
        return;
    }

    struct timespec now = {
        .tv_sec = (time_t)(unix_time_ns / 1000000000u),
        .tv_nsec = (long)(unix_time_ns % 1000000000u),
    };
    if (clock_settime(CLOCK_REALTIME, &now) < 0)
        control_reply_error(id, errno, "set clock");
    else if (hostname[0] != '\0' && sethostname(hostname, strlen(hostname)) < 0)
        control_reply_error(id, errno, "set host name `%s`", hostname);
    else
        log_debug("init: clock set, host name `%s`", hostname);
    free(hostname);
}

/* The root filesystem while the host takes a disk checkpoint: FIFREEZE
 * writes out dirty data and holds new writes until FITHAW. If the host goes
 * away meanwhile, the control port closes and power_off thaws first. */
static int frozen_root_fd = -1;

void control_thaw_root(void)
{
    if (frozen_root_fd < 0)
        return;
    if (ioctl(frozen_root_fd, FITHAW, 0) < 0)
        log_warn_errno(errno, "thaw /");
    close(frozen_root_fd);
    frozen_root_fd = -1;
}

static void handle_freeze(uint64_t id, const uint8_t *payload, size_t len)
{
    blin_cursor_t c;

    blin_cursor_init(&c, payload, len);
    uint32_t freeze = blin_get_u32(&c);
    if (c.failed || c.pos != c.len || freeze > 1) {
        control_reply_error(id, EINVAL, "malformed freeze payload");
        return;
    }
    if (freeze && frozen_root_fd < 0) {
        sync();
        int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || ioctl(fd, FIFREEZE, 0) < 0) {
            int err = errno;
            if (fd >= 0)
                close(fd);
            control_reply_error(id, err, "freeze /");
            return;
        }
        frozen_root_fd = fd;
    } else if (!freeze) {
        control_thaw_root();
    }
    uint8_t ok[4] = {0, 0, 0, 0};
    control_send(BLIN_CTL_FREEZE, id, ok, sizeof(ok));
}

static void handle_shutdown(uint64_t id, const uint8_t *payload, size_t len)
{
    blin_cursor_t c;

    blin_cursor_init(&c, payload, len);
    uint32_t mode = blin_get_u32(&c);
    if (c.failed || c.pos != c.len) {
        control_reply_error(id, EINVAL, "malformed shutdown payload");
        return;
    }
    if (mode != 0) {
        control_reply_error(id, EINVAL, "unknown shutdown mode %u", mode);
        return;
    }
    log_debug("shutdown requested");
    power_off();
}

static void dispatch(const blin_header_t *header, const uint8_t *payload)
{
    uint64_t id = header->request_id;
    size_t len = header->length;

    log_debug("received %s, request %llu, %zu bytes", blin_type_name(header->type),
              (unsigned long long)id, len);
    switch (header->type) {
    case BLIN_HEARTBEAT:
        handle_heartbeat(id, payload, len);
        break;
    case BLIN_CTL_INIT:
        handle_init(id, payload, len);
        break;
    case BLIN_CTL_FILE_BEGIN:
        files_handle_begin(id, payload, len);
        break;
    case BLIN_CTL_FILE_DATA:
        files_handle_data(id, payload, len);
        break;
    case BLIN_CTL_EXEC:
        exec_handle_exec(id, payload, len);
        break;
    case BLIN_CTL_STDIN:
        exec_handle_stdin(id, payload, len);
        break;
    case BLIN_CTL_SIGNAL:
        exec_handle_signal(id, payload, len);
        break;
    case BLIN_TTY_RESIZE:
        exec_handle_resize(id, payload, len);
        break;
    case BLIN_CTL_SHUTDOWN:
        handle_shutdown(id, payload, len);
        break;
    case BLIN_CTL_FREEZE:
        handle_freeze(id, payload, len);
        break;
    default:
        control_reply_error(id, ENOTSUP, "unexpected %s message from the host",
                            blin_type_name(header->type));
        break;
    }
}

/* Reads what the port has and dispatches every complete frame. */
static void read_control_port(blin_decoder_t *decoder)
{
    static uint8_t input[64u << 10];

    ssize_t n = read(control_fd, input, sizeof(input));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n < 0) {
        log_error_errno(errno, "read control port; powering off");
        power_off();
    }
    if (n == 0) {
        log_error("control port closed by the host; powering off");
        power_off();
    }

    for (size_t used = 0; used < (size_t)n;) {
        bool frame_ready;
        long taken = blin_decoder_feed(decoder, input + used, (size_t)n - used, &frame_ready);
        if (taken < 0) {
            /* A frame boundary is lost: nothing after this can be trusted. */
            log_error("bad frame on control port: %s; powering off",
                      blin_decode_strerror((blin_decode_status_t)taken));
            power_off();
        }
        used += (size_t)taken;
        if (frame_ready)
            dispatch(&decoder->header, decoder->payload);
    }
}

static int open_child_signal_fd(void)
{
    sigset_t child;

    sigemptyset(&child);
    sigaddset(&child, SIGCHLD);
    int fd = signalfd(-1, &child, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) {
        log_error_errno(errno, "create signalfd for SIGCHLD; powering off");
        power_off();
    }
    return fd;
}

static void drain_signal_fd(int fd)
{
    struct signalfd_siginfo info[8];

    /* The count does not matter: one waitpid loop reaps every child. */
    while (read(fd, info, sizeof(info)) > 0)
        ;
}

_Noreturn void control_serve(int port_fd, bool agents_cgroup)
{
    enum { CONTROL, CHILDREN, MEMORY, FIRST_EXEC };
    static struct pollfd fds[FIRST_EXEC + 3 * GUEST_MAX_EXECUTIONS + VHUB_POLLFDS];
    blin_decoder_t decoder;

    control_fd = port_fd;
    int signal_fd = open_child_signal_fd();
    int memory_fd = agents_cgroup ? agents_watch_open() : -1;
    blin_decoder_init(&decoder, BLINK_CAP_BLIN_PAYLOAD);
    exec_init(agents_cgroup);
    send_ready();

    for (;;) {
        fds[CONTROL] = (struct pollfd){.fd = control_fd, .events = POLLIN};
        fds[CHILDREN] = (struct pollfd){.fd = signal_fd, .events = POLLIN};
        fds[MEMORY] = (struct pollfd){.fd = memory_fd, .events = POLLPRI};
        size_t exec_count = exec_poll_prepare(fds + FIRST_EXEC, 3 * GUEST_MAX_EXECUTIONS);
        struct pollfd *vhub_fds = fds + FIRST_EXEC + exec_count;
        size_t vhub_count = vhub_poll_prepare(vhub_fds, VHUB_POLLFDS);

        if (poll(fds, FIRST_EXEC + exec_count + vhub_count, -1) < 0) {
            if (errno == EINTR)
                continue;
            log_error_errno(errno, "poll; powering off");
            power_off();
        }

        /* An agents group out of memory first, as it soon slows everything
         * else; then output, then exits, so an Exit follows the output the
         * poll saw; then the host's requests. */
        if ((fds[MEMORY].revents & (POLLPRI | POLLERR | POLLNVAL)) &&
            !agents_watch_handle(memory_fd)) {
            close(memory_fd);
            memory_fd = -1;
        }
        exec_poll_handle(fds + FIRST_EXEC, exec_count);
        vhub_poll_handle(vhub_fds, vhub_count);
        if (fds[CHILDREN].revents) {
            drain_signal_fd(signal_fd);
            exec_reap_children();
        }
        if (fds[CONTROL].revents & POLLIN) {
            read_control_port(&decoder);
        } else if (fds[CONTROL].revents & (POLLHUP | POLLERR | POLLNVAL)) {
            log_error("control port hung up by the host; powering off");
            power_off();
        }
    }
}
