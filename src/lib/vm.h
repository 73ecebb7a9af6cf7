/* One QEMU microvm: started as our child with its monitor, control port and
 * console on file descriptors we hold (no socket files on disk), pumped by a
 * poll loop, and ended by a guest power-off, a QMP quit or SIGKILL. */
#ifndef BLINK_VM_H
#define BLINK_VM_H

#include "internal.h"
#include "qmp.h"

#include "blin.h"
#include "caps.h"
#include "vhub_carrier.h"

typedef struct blink_vm_config {
    const char *qemu_path;
    const char *accel;         /* "kvm" or "tcg" */
    const char *kernel_path;
    const char *initrd_path;
    const char *extra_cmdline; /* appended to the kernel command line; may be NULL */
    unsigned memory_mib;
    unsigned cpus;
    const char *disk_path;     /* qcow2 root disk; NULL for none */
    bool disk_read_only;
    bool control_port;         /* attach the org.blink.ctl virtio-serial port */
    const char *tmp_dir;       /* QEMU's TMPDIR */
    const char *loadvm;        /* start from this internal snapshot (-loadvm); may be NULL */
    /* With the control port comes the V-Hub port (docs/vhub.md): guest
     * programs' connections go to the hub at `vhub_socket` (NULL: answered
     * "no hub"), which is told they come from `vhub_kind` `vhub_name`. */
    const char *vhub_socket;
    const char *vhub_kind;     /* "session" or "run" */
    const char *vhub_name;
} blink_vm_config_t;

struct blink_vm;

/* Called for every complete frame from the guest. Return -1 (with err set)
 * to stop the pump with that error. */
typedef int (*blink_frame_fn)(struct blink_vm *vm, const blin_header_t *header,
                              const uint8_t *payload, void *userdata, blink_error_t *err);

typedef struct blink_vm {
    pid_t pid;
    int pidfd;          /* readable when QEMU exits */
    int control_fd;     /* our end of the control port, non-blocking */
    int console_fd;     /* QEMU's stdout and stderr: serial console and errors */
    blink_qmp_t qmp;
    bool exited;
    uint64_t panic_seen_ms; /* when the console showed a kernel panic; 0: never */
    int exit_status;    /* waitpid status once exited */
    uint64_t started_ms;

    blin_decoder_t decoder;
    blink_buf_t send_queue; /* bytes for the guest not yet written */
    size_t send_offset;
    bool control_closed;

    char console_tail[BLINK_CAP_CONSOLE_TAIL + 1];
    size_t console_tail_len;

    blink_frame_fn on_frame;
    void *userdata;

    blink_vhub_t *vhub;  /* the V-Hub port's host end; NULL without a control port */
    int own_pollfds;     /* entries of the last fill that are not the vhub's */
} blink_vm_t;

/* Starts QEMU and negotiates QMP. On failure nothing is left running. */
int blink_vm_start(const blink_vm_config_t *config, blink_vm_t **out, blink_error_t *err);

/* Queues a frame for the guest. Fails when the queue is over its cap. */
int blink_vm_send(blink_vm_t *vm, uint8_t type, uint64_t request_id, const void *payload,
                  size_t len, blink_error_t *err);
size_t blink_vm_send_queued(const blink_vm_t *vm);

/* Waits for activity up to `timeout_ms` (-1: forever) and handles it: frames
 * go to on_frame, console output to the tail, QMP events to vm->qmp, QEMU's
 * exit to vm->exited. Returns 0, or -1 on a protocol error or callback error. */
int blink_vm_pump(blink_vm_t *vm, int timeout_ms, blink_error_t *err);

/* For callers with their own poll loop (the shim): fills at most
 * BLINK_VM_POLLFDS entries and returns how many; after poll, hand the same
 * entries to blink_vm_dispatch. */
#define BLINK_VM_POLLFDS (4 + BLINK_VHUB_POLLFDS)
struct pollfd;
int blink_vm_fill_pollfds(blink_vm_t *vm, struct pollfd *pfds);
int blink_vm_dispatch(blink_vm_t *vm, const struct pollfd *pfds, int count, blink_error_t *err);

/* Kills QEMU a moment after the guest kernel panicked (the reboot that
 * should end it can fail and spin). For callers with their own loop. */
void blink_vm_check_panic(blink_vm_t *vm);

/* Ends QEMU now (QMP quit, then SIGKILL) and reaps it. Safe to call twice. */
void blink_vm_kill(blink_vm_t *vm);

/* Waits until QEMU exits or `deadline_ms` passes; returns 0 if it exited. */
int blink_vm_wait_exit(blink_vm_t *vm, uint64_t deadline_ms);

/* The console tail as a string (NUL-terminated copy inside the vm). */
const char *blink_vm_console(blink_vm_t *vm);

/* Why the VM ended, as a sentence for an error message ("the guest kernel
 * panicked", "qemu exited with status 1: …"). */
void blink_vm_describe_end(blink_vm_t *vm, char *buf, size_t size);

/* Kills if needed, reaps, closes everything and frees. */
void blink_vm_free(blink_vm_t *vm);

#endif
