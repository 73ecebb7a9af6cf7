/* blink-guest: PID 1 of a Blink VM. Internal interfaces between its files.
 *
 * Error convention: a function that can fail returns 0 (or a non-negative
 * value) on success and a negative errno on failure, and logs what failed,
 * naming the object, because the console is where a guest failure is read.
 * The caller decides whether the failure is fatal (power off), reported to
 * the host (an Error frame) or only a warning. */
#ifndef BLINK_GUEST_H
#define BLINK_GUEST_H

#include "blin.h"

#include <poll.h>
#include <stdarg.h>
#include "caps.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define AGENTS_CGROUP "/sys/fs/cgroup/agents"

/* ---- io.c: small file helpers ---- */

/* write(2) until done, retrying EINTR. 0 or -errno. */
int write_all(int fd, const void *data, size_t len);
/* Reads a whole small file into buf (NUL-terminated). Length or -errno;
 * -EFBIG when it does not fit. Does not log. */
ssize_t read_small_file(const char *path, char *buf, size_t size);
/* Writes a string to an existing file such as a sysfs or cgroup knob. */
int write_small_file(const char *path, const char *text);
/* mkdir that accepts an existing directory. */
int ensure_directory(const char *path, mode_t mode);
/* Creates every missing parent directory of `path` with `mode`. */
int make_parent_directories(const char *path, mode_t mode);
/* Closes *fd if open and marks it closed (-1). */
void close_fd(int *fd);
int set_nonblocking(int fd);
/* Milliseconds of CLOCK_MONOTONIC, for deadlines. */
uint64_t monotonic_ms(void);
void sleep_ms(unsigned ms);

/* ---- system.c: boot steps and power off ---- */

typedef struct boot_options {
    bool probe;     /* blink.mode=probe: report and power off */
    bool debug;     /* blink.debug=1 */
    bool root_ro;   /* blink.root_ro=1: mount the root disk read-only */
} boot_options_t;

int mount_early_filesystems(void);
void read_boot_options(boot_options_t *options);
void load_modules(void);
/* Waits for /dev/vda and the control port; fills `port_path`. */
int wait_for_devices(char *port_path, size_t size);
/* Finds the virtio-serial port called `name` and writes its device node's
 * path; -ENOENT until the port has been probed. */
int find_virtio_port(const char *name, char *port_path, size_t size);
int switch_to_root_disk(bool read_only);
int mount_runtime_filesystems(void);
void configure_system(void);
/* Grows the root ext4 to the size of its disk (sessions opened larger). */
void grow_root_filesystem(void);
/* Stops every process, syncs, makes the root read-only and powers off. */
_Noreturn void power_off(void);

/* ---- agents.c: the agents control group ---- */

/* Creates the agents control group; false when agents run unconfined. */
bool setup_agents_cgroup(void);
/* Processes of the group the kernel's OOM killer or the memory watch
 * killed so far; compared before and after an execution. */
uint64_t agents_oom_kills(void);
/* An fd that polls POLLPRI when the group's memory events change, or -1. */
int agents_watch_open(void);
/* Kills the group's largest process when the group is at its limit with
 * almost nothing left to reclaim (see agents.c). False when the fd is no
 * longer usable and is to be closed. */
bool agents_watch_handle(int fd);

/* ---- control.c: the control port ---- */

/* Sends Ready, then serves the port until the host asks to shut down or goes
 * away. Never returns. */
_Noreturn void control_serve(int port_fd, bool agents_cgroup);
/* Undoes a checkpoint's filesystem freeze, if one is in force. */
void control_thaw_root(void);

/* Sends one frame. A failed write means the host is unreachable, so this
 * powers the VM off rather than returning an error. */
void control_send(uint8_t type, uint64_t request_id, const void *payload, size_t len);
/* Sends a frame whose payload already sits at frame + BLIN_HEADER_SIZE; the
 * header is written in place so the frame leaves in one write(2). */
void control_send_in_place(uint8_t *frame, uint8_t type, uint64_t request_id, size_t len);
void control_send_writer(uint8_t type, uint64_t request_id, blin_writer_t *w);
/* Sends Error (errno and message) for a request and logs it as a warning. */
void control_reply_error(uint64_t request_id, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- spawn.c: starting one process for an Exec ---- */

#define EXEC_FLAG_PTY 0x1u        /* allocate a terminal */
#define EXEC_FLAG_STDIN_PIPE 0x2u /* stdin fed by Stdin, else /dev/null */

typedef struct exec_request {
    uint32_t flags;
    uint16_t rows;
    uint16_t cols;
    char *cwd;
    char **argv; /* NULL-terminated, at least one */
    char **envp; /* NULL-terminated */
} exec_request_t;

/* Fills `r` from an Exec payload. NULL on success, else what is wrong;
 * exec_request_free is needed either way. */
const char *exec_request_parse(const uint8_t *payload, size_t len, exec_request_t *r);
void exec_request_free(exec_request_t *r);

/* The parent's side of a started process; fds not used are -1, the others
 * are non-blocking and close-on-exec. */
typedef struct spawned {
    pid_t pid;
    int pty_fd;    /* PTY master */
    int stdout_fd; /* read ends */
    int stderr_fd;
    int stdin_fd;  /* write end of the stdin pipe */
} spawned_t;

/* Forks and runs `r` in a new session, inside the agents group when
 * `join_cgroup`. Returns 0 once the child has exec'd or given up; in the
 * latter case `failure` holds the reason, a line for the execution's stderr
 * (else it is empty), and the child exits 126 or 127. -errno when nothing was
 * started. */
int spawn_process(const exec_request_t *r, bool join_cgroup, spawned_t *out, char *failure,
                  size_t failure_size);

/* ---- exec.c: executions ---- */

void exec_init(bool agents_cgroup);
void exec_handle_exec(uint64_t id, const uint8_t *payload, size_t len);
void exec_handle_stdin(uint64_t id, const uint8_t *payload, size_t len);
void exec_handle_signal(uint64_t id, const uint8_t *payload, size_t len);
void exec_handle_resize(uint64_t id, const uint8_t *payload, size_t len);
/* Fills pollfds for the executions' fds; returns how many were used. */
size_t exec_poll_prepare(struct pollfd *fds, size_t max);
void exec_poll_handle(const struct pollfd *fds, size_t count);
/* Reaps every exited child and reports the executions that ended. */
void exec_reap_children(void);

/* ---- vhub.c: the guest-local V-Hub endpoint (docs/vhub.md) ---- */

/* Before the switch to the root disk: keeps hold of the blink-vhub tool in
 * the initramfs, which vhub_init then copies onto /run. */
void vhub_keep_tool(void);
/* After /run is mounted: installs the tool, opens the org.blink.vhub port
 * and listens on /run/blink/vhub.sock. Failures are logged; programs then
 * have no hub, and nothing else changes. */
void vhub_init(void);
#define VHUB_POLLFDS (2 + VHUB_MAX_CONNECTIONS)
/* Fills at most VHUB_POLLFDS entries; returns how many. */
size_t vhub_poll_prepare(struct pollfd *fds, size_t max);
void vhub_poll_handle(const struct pollfd *fds, size_t count);

/* ---- files.c: file transfers ---- */

void files_handle_begin(uint64_t id, const uint8_t *payload, size_t len);
void files_handle_data(uint64_t id, const uint8_t *payload, size_t len);

#endif
