/* Ephemeral runs: a fresh VM on a throwaway overlay of the image, one agent,
 * its output and exit status, then nothing left behind.
 *
 * Steps, as the guest sees them (docs/protocol.md "Handshake"):
 *   1. boot      QEMU starts; the guest sends Ready within the boot bound
 *   2. init      the host sends Init (clock) and the agent file
 *   3. exec      once the file is written, the host sends Exec
 *   4. stream    Stdout/Stderr frames until Exit, within the run timeout
 *   5. shutdown  the host sends Shutdown; QEMU exits when the guest powers off
 */
#include "agent.h"
#include "context.h"
#include "result.h"
#include "vm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define AGENT_TRANSFER_ID        1
#define AGENT_EXEC_ID            2
#define DEFAULT_MEMORY_MIB       512
#define DEFAULT_BOOT_TIMEOUT_SEC 60
#define SHUTDOWN_GRACE_MS        10000

typedef enum run_phase {
    PHASE_BOOTING,
    PHASE_SENDING,
    PHASE_RUNNING,
    PHASE_EXITED,
} run_phase_t;

typedef struct run {
    const blink_run_options_t *options;
    blink_vm_t *vm;
    blink_result_t *result;
    run_phase_t phase;
    int agent_fd;
    uint64_t agent_size;
    uint64_t agent_sent;
    bool file_done;
    char guest_error[512]; /* an Error frame from the guest */
} run_t;

/* ---- overlay disks ---- */

static atomic_uint overlay_counter;

static char *create_overlay(blink_t *blink, const char *base, blink_error_t *err)
{
    cleanup_free char *qemu_img = blink_find_program("qemu-img");
    if (qemu_img == NULL)
        return blink_fail_null(err, BLINK_E_MISSING_DEP, 0,
                               "find qemu-img: install the Debian package `qemu-utils`");

    /* Overlays are unlinked once QEMU holds them; only a run killed before
     * that leaves one. */
    blink_reap_orphans(blink->tmp_dir, "run-", true);
    char *overlay = blink_strdup_printf("%s/run-%d-%u.qcow2", blink->tmp_dir, (int)getpid(),
                                        atomic_fetch_add(&overlay_counter, 1));
    cleanup_free char *backing = realpath(base, NULL);
    if (overlay == NULL || backing == NULL) {
        free(overlay);
        return blink_fail_null(err, BLINK_E_IO, errno, "resolve image `%s`", base);
    }

    char *argv[] = {qemu_img, "create", "-q",    "-f",    "qcow2", "-F",
                    "qcow2",  "-b",     backing, overlay, NULL};
    if (blink_run_program(argv, err) < 0) {
        unlink(overlay);
        free(overlay);
        return NULL;
    }
    return overlay;
}

/* ---- guest traffic ---- */

static int on_ready(run_t *run, const uint8_t *payload, uint32_t len, blink_error_t *err)
{
    blin_cursor_t c;
    blin_cursor_init(&c, payload, len);
    uint32_t protocol = blin_get_u32(&c);
    cleanup_free char *release = blin_get_string(&c, 256);
    if (c.failed)
        return blink_fail(err, BLINK_E_PROTOCOL, 0, "[guest] malformed ready message");
    if (protocol != 1)
        return blink_fail(err, BLINK_E_PROTOCOL, 0,
                          "[guest] speaks protocol %u, expected 1: rebuild the initramfs "
                          "(scripts/setup.sh)",
                          protocol);
    log_info("run", "guest ready after %llu ms (kernel %s)",
             (unsigned long long)(blink_now_ms() - run->vm->started_ms), release);
    run->phase = PHASE_SENDING;
    return 0;
}

static int on_exit_frame(run_t *run, const uint8_t *payload, uint32_t len, blink_error_t *err)
{
    blin_cursor_t c;
    blin_cursor_init(&c, payload, len);
    int32_t code = (int32_t)blin_get_u32(&c);
    uint32_t signal = blin_get_u32(&c);
    uint32_t flags = blin_get_u32(&c);
    if (c.failed || signal > 64)
        return blink_fail(err, BLINK_E_PROTOCOL, 0, "[guest] malformed exit message");

    run->result->exit_code = signal ? -1 : code;
    run->result->signal = (int)signal;
    run->result->oom_killed = (flags & 1) != 0;
    run->phase = PHASE_EXITED;
    return 0;
}

static int on_guest_error(run_t *run, const uint8_t *payload, uint32_t len)
{
    blin_cursor_t c;
    blin_cursor_init(&c, payload, len);
    uint32_t code = blin_get_u32(&c);
    cleanup_free char *message = blin_get_string(&c, 400);
    snprintf(run->guest_error, sizeof(run->guest_error), "%s (errno %u)",
             message ? message : "malformed error message", code);
    return 0;
}

static int on_frame(blink_vm_t *vm, const blin_header_t *h, const uint8_t *payload, void *data,
                    blink_error_t *err)
{
    run_t *run = data;
    (void)vm;

    switch (h->type) {
    case BLIN_CTL_READY:
        return run->phase == PHASE_BOOTING ? on_ready(run, payload, h->length, err) : 0;
    case BLIN_CTL_FILE_DONE:
        if (h->request_id == AGENT_TRANSFER_ID)
            run->file_done = true;
        return 0;
    case BLIN_ERROR:
        return on_guest_error(run, payload, h->length);
    case BLIN_STDOUT:
    case BLIN_STDERR: {
        if (h->request_id != AGENT_EXEC_ID || run->phase != PHASE_RUNNING)
            return 0;
        blink_stream_t stream = h->type == BLIN_STDOUT ? BLINK_STDOUT : BLINK_STDERR;
        if (run->options->on_output)
            run->options->on_output(stream, (const char *)payload, h->length,
                                    run->options->userdata);
        if (blink_result_append(run->result, stream, (const char *)payload, h->length) < 0)
            return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "keep agent output");
        return 0;
    }
    case BLIN_CTL_EXIT:
        if (h->request_id != AGENT_EXEC_ID || run->phase != PHASE_RUNNING)
            return 0;
        return on_exit_frame(run, payload, h->length, err);
    default:
        /* Started, Heartbeat and anything a guest has no business sending. */
        log_debug("run", "ignoring %s frame from guest", blin_type_name(h->type));
        return 0;
    }
}

/* ---- host side of the steps ---- */

static int send_init(run_t *run, blink_error_t *err)
{
    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_u64(&w, blink_wall_ns());
    blin_put_string(&w, "blink");
    int rc = w.failed ? blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "encode init")
                      : blink_vm_send(run->vm, BLIN_CTL_INIT, 0, w.data, w.len, err);
    blin_writer_free(&w);
    return rc;
}

static int send_file_begin(run_t *run, const char *guest_path, blink_error_t *err)
{
    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_string(&w, guest_path);
    blin_put_u32(&w, 0755);
    blin_put_u64(&w, run->agent_size);
    int rc = w.failed ? blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "encode file")
                      : blink_vm_send(run->vm, BLIN_CTL_FILE_BEGIN, AGENT_TRANSFER_ID, w.data,
                                      w.len, err);
    blin_writer_free(&w);
    return rc;
}

/* Queues the next chunks of the agent while the send queue has room, so a
 * large agent never sits in host memory whole. */
static int send_file_chunks(run_t *run, const char *host_path, blink_error_t *err)
{
    char *buf = malloc(BLINK_CAP_FILE_CHUNK);
    if (buf == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "read agent");

    int rc = 0;
    while (run->agent_sent < run->agent_size &&
           blink_vm_send_queued(run->vm) + BLINK_CAP_FILE_CHUNK <= BLINK_CAP_SEND_QUEUE) {
        ssize_t n = read(run->agent_fd, buf, BLINK_CAP_FILE_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || (uint64_t)n > run->agent_size - run->agent_sent) {
            rc = blink_fail(err, BLINK_E_IO, n < 0 ? errno : 0,
                            "read agent `%s`: the file changed while it was sent", host_path);
            break;
        }
        if ((rc = blink_vm_send(run->vm, BLIN_CTL_FILE_DATA, AGENT_TRANSFER_ID, buf, (size_t)n,
                                err)) < 0)
            break;
        run->agent_sent += (uint64_t)n;
    }
    free(buf);
    return rc;
}

static int send_exec(run_t *run, const char *guest_path, blink_error_t *err)
{
    blin_writer_t w;
    if (blink_agent_exec_payload(&w, guest_path, run->options, err) < 0)
        return -1;
    int rc = blink_vm_send(run->vm, BLIN_CTL_EXEC, AGENT_EXEC_ID, w.data, w.len, err);
    blin_writer_free(&w);
    return rc;
}

/* Fails the run because the VM ended or the guest reported an error. */
static int vm_failure(run_t *run, const char *doing, blink_error_t *err)
{
    char why[1024];
    if (run->guest_error[0])
        return blink_fail(err, BLINK_E_VM, 0, "%s: guest: %s", doing, run->guest_error);
    blink_vm_describe_end(run->vm, why, sizeof(why));
    return blink_fail(err, BLINK_E_VM, 0, "%s: %s", doing, why);
}

/* Pumps until `done(run)` or a bound passes. Returns 1 when done, 0 on the
 * deadline, -1 on failure (VM gone, protocol error). */
static int pump_until(run_t *run, bool (*done)(const run_t *), uint64_t deadline_ms,
                      const char *doing, blink_error_t *err)
{
    while (!done(run)) {
        if (run->guest_error[0] || run->vm->exited || run->vm->control_closed) {
            blink_vm_wait_exit(run->vm, blink_now_ms() + 2000);
            return vm_failure(run, doing, err);
        }
        uint64_t now = blink_now_ms();
        if (now >= deadline_ms)
            return 0;
        uint64_t wait = deadline_ms - now;
        if (blink_vm_pump(run->vm, wait > 1000 ? 1000 : (int)wait, err) < 0)
            return blink_wrap(err, "%s", doing);
    }
    return 1;
}

static bool is_ready(const run_t *run)
{
    return run->phase != PHASE_BOOTING;
}

static bool is_file_done(const run_t *run)
{
    return run->file_done;
}

static bool is_exited(const run_t *run)
{
    return run->phase == PHASE_EXITED;
}

static bool queue_has_room(const run_t *run)
{
    return blink_vm_send_queued(run->vm) + BLINK_CAP_FILE_CHUNK <= BLINK_CAP_SEND_QUEUE;
}

static uint64_t boot_timeout_ms(const blink_run_options_t *o)
{
    unsigned sec = o->boot_timeout_sec;
    const char *env = getenv("BLINK_BOOT_TIMEOUT");
    if (sec == 0 && env) {
        char *end;
        unsigned long v = strtoul(env, &end, 10);
        if (*env && *end == '\0' && v > 0 && v < 86400)
            sec = (unsigned)v;
    }
    return (uint64_t)(sec ? sec : DEFAULT_BOOT_TIMEOUT_SEC) * 1000;
}

/* Steps 1-4; the caller does step 5 whatever happened here. */
static int run_steps(run_t *run, const char *agent_path, blink_error_t *err)
{
    const blink_run_options_t *o = run->options;
    cleanup_free char *guest_path = blink_agent_guest_path(agent_path, NULL);
    if (guest_path == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "name agent");

    /* 1. boot */
    uint64_t boot_limit = boot_timeout_ms(o);
    int rc = pump_until(run, is_ready, run->vm->started_ms + boot_limit, "boot vm", err);
    if (rc == 0)
        return blink_fail(err, BLINK_E_TIMEOUT, 0,
                          "boot vm: the guest did not report ready within %llu s",
                          (unsigned long long)(boot_limit / 1000));
    if (rc < 0)
        return -1;
    run->result->boot_ms = blink_now_ms() - run->vm->started_ms;

    /* 2. init and the agent file */
    if (send_init(run, err) < 0 || send_file_begin(run, guest_path, err) < 0)
        return -1;
    uint64_t send_deadline = blink_now_ms() + boot_limit;
    while (run->agent_sent < run->agent_size) {
        if (send_file_chunks(run, agent_path, err) < 0)
            return -1;
        rc = pump_until(run, queue_has_room, send_deadline, "send agent", err);
        if (rc <= 0)
            return rc < 0 ? -1 : blink_fail(err, BLINK_E_TIMEOUT, 0, "send agent: guest stalled");
    }
    rc = pump_until(run, is_file_done, send_deadline, "send agent", err);
    if (rc <= 0)
        return rc < 0 ? -1 : blink_fail(err, BLINK_E_TIMEOUT, 0, "send agent: guest stalled");

    /* 3. exec */
    if (send_exec(run, guest_path, err) < 0)
        return -1;
    run->phase = PHASE_RUNNING;
    uint64_t exec_start = blink_now_ms();

    /* 4. stream until exit or timeout */
    uint64_t deadline = o->timeout_sec ? exec_start + (uint64_t)o->timeout_sec * 1000 : UINT64_MAX;
    rc = pump_until(run, is_exited, deadline, "run agent", err);
    run->result->duration_ms = blink_now_ms() - exec_start;
    if (rc < 0)
        return -1;
    if (rc == 0) {
        log_info("run", "agent timed out after %u s; stopping the vm", o->timeout_sec);
        run->result->timed_out = true;
        run->result->exit_code = -1;
        run->result->signal = SIGKILL;
    }
    return 0;
}

/* 5. shutdown: ask the guest to power off; force it if it does not. */
static void shutdown_vm(run_t *run)
{
    blink_vm_t *vm = run->vm;
    if (!vm->exited && !run->result->timed_out && !vm->control_closed) {
        uint32_t mode = 0;
        uint8_t payload[4] = {(uint8_t)mode, 0, 0, 0};
        blink_error_t ignored;
        if (blink_vm_send(vm, BLIN_CTL_SHUTDOWN, 0, payload, sizeof(payload), &ignored) == 0) {
            uint64_t deadline = blink_now_ms() + SHUTDOWN_GRACE_MS;
            while (!vm->exited && blink_now_ms() < deadline)
                if (blink_vm_pump(vm, 200, &ignored) < 0)
                    break;
        }
    }
    blink_vm_kill(vm);
}

int blink_run(blink_t *blink, const char *agent_path, const blink_run_options_t *options,
              blink_result_t **result, blink_error_t *err)
{
    blink_run_options_t defaults = {.struct_size = sizeof(defaults)};
    const blink_run_options_t *o = options ? options : &defaults;
    run_t run = {.options = o, .agent_fd = -1};
    cleanup_free char *qemu = NULL;
    cleanup_free char *kernel = NULL;
    cleanup_free char *initrd = NULL;
    cleanup_free char *base = NULL;
    cleanup_free char *overlay = NULL;
    cleanup_free char *hub = NULL;
    int rc = -1;

    *result = NULL;
    if (agent_path == NULL)
        return blink_fail(err, BLINK_E_INVALID, 0, "run: no agent path");
    if (blink_agent_check_options(o, err) < 0)
        return -1;
    bool has_vhub = o->struct_size >= offsetof(blink_run_options_t, vhub_socket) +
                                          sizeof(o->vhub_socket);
    if (blink_vhub_resolve(has_vhub ? o->vhub_socket : NULL, &hub, err) < 0)
        return -1;
    run.agent_fd = blink_agent_open(agent_path, &run.agent_size, err);
    if (run.agent_fd < 0)
        return -1;

    const char *accel = NULL;
    if ((qemu = blink_qemu_path(err)) == NULL ||
        blink_kernel_paths(blink, &kernel, &initrd, err) < 0 ||
        (base = blink_image_disk(blink, o->image, err)) == NULL ||
        (accel = blink_accel(blink, err)) == NULL)
        goto out;

    run.result = blink_result_new(o->output_cap ? o->output_cap : BLINK_DEFAULT_OUTPUT_CAP);
    if (run.result == NULL) {
        blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "allocate result");
        goto out;
    }
    if ((overlay = create_overlay(blink, base, err)) == NULL)
        goto out;

    /* The hub knows the run by its overlay's name, unique in this home. */
    char run_name[64];
    const char *base_name = strrchr(overlay, '/') + 1;
    snprintf(run_name, sizeof(run_name), "%.*s", (int)strcspn(base_name, "."), base_name);
    blink_vm_config_t config = {
        .qemu_path = qemu,
        .accel = accel,
        .kernel_path = kernel,
        .initrd_path = initrd,
        .memory_mib = o->memory_mib ? o->memory_mib : DEFAULT_MEMORY_MIB,
        .cpus = o->cpus ? o->cpus : 1,
        .disk_path = overlay,
        .control_port = true,
        .tmp_dir = blink->tmp_dir,
        .vhub_socket = hub,
        .vhub_kind = "run",
        .vhub_name = run_name,
    };
    if (blink_vm_start(&config, &run.vm, err) < 0) {
        blink_wrap(err, "run agent `%s`", agent_path);
        goto out;
    }
    /* QEMU holds the overlay open now; unlinking it means that no exit of
     * ours, however abrupt, can leave it behind. */
    unlink(overlay);
    run.vm->on_frame = on_frame;
    run.vm->userdata = &run;

    rc = run_steps(&run, agent_path, err);
    shutdown_vm(&run);
    if (rc == 0) {
        *result = run.result;
        run.result = NULL;
    }

out:
    if (overlay)
        unlink(overlay);
    blink_vm_free(run.vm);
    blink_result_free(run.result);
    close(run.agent_fd);
    return rc;
}

int blink_run_agent_script_default(const char *agent_path, blink_result_t **result,
                                   blink_error_t *err)
{
    blink_t *blink = blink_open(NULL, err);
    if (blink == NULL)
        return -1;
    int rc = blink_run(blink, agent_path, NULL, result, err);
    blink_close(blink);
    return rc;
}
