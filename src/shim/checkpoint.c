/* Checkpoints of a running VM, taken by the shim that owns its monitor.
 *
 * - Memory checkpoints use HMP `savevm`/`loadvm`/`delvm` through QMP's
 *   human-monitor-command: the disk's internal snapshot and the VM's memory
 *   and device state in one qcow2 snapshot. The VM pauses while it saves.
 * - Disk-only checkpoints of a running VM: the guest syncs and freezes its
 *   root filesystem (FIFREEZE), QMP blockdev-snapshot-internal-sync takes the
 *   qcow2 snapshot, and the guest thaws.
 * - A fork moves the VM onto a new overlay (QMP blockdev-snapshot-sync) the
 *   same way frozen, so that the disk under it can be shared. */
#include "shim.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MONITOR_TIMEOUT_MS 300000
#define FREEZE_TIMEOUT_MS  30000

/* Runs an HMP command; HMP reports failure as text where success is silent. */
static int hmp(shim_t *shim, const char *what, const char *name, blink_error_t *err)
{
    char line[128];
    snprintf(line, sizeof(line), "%s %s", what, name);
    json_t *args = json_pack("{s:s}", "command-line", line);
    json_t *reply = NULL;
    int rc = blink_qmp_execute(&shim->vm->qmp, "human-monitor-command", args, &reply,
                               blink_now_ms() + MONITOR_TIMEOUT_MS, err);
    json_decref(args);
    if (rc < 0)
        return -1;

    const char *text = json_string_value(reply);
    char message[512] = "";
    if (text)
        snprintf(message, sizeof(message), "%s", text);
    json_decref(reply);
    message[strcspn(message, "\r\n")] = '\0';
    if (message[0])
        return blink_fail(err, BLINK_E_VM, 0, "%s `%s`: %s", what, name, message);
    return 0;
}

/* Asks the guest to freeze (or thaw) its root filesystem and waits for the
 * answer, serving only the VM meanwhile. */
static int guest_freeze(shim_t *shim, bool freeze, blink_error_t *err)
{
    uint8_t payload[4] = {freeze ? 1 : 0, 0, 0, 0};
    shim->freeze_reply = -1;
    if (blink_vm_send(shim->vm, BLIN_CTL_FREEZE, 0, payload, sizeof(payload), err) < 0)
        return -1;

    uint64_t deadline = blink_now_ms() + FREEZE_TIMEOUT_MS;
    while (shim->freeze_reply < 0) {
        if (shim->vm->exited || blink_now_ms() >= deadline)
            return blink_fail(err, BLINK_E_TIMEOUT, 0, "the guest did not %s its filesystem",
                              freeze ? "freeze" : "thaw");
        if (blink_vm_pump(shim->vm, 200, err) < 0)
            return -1;
    }
    if (shim->freeze_reply != 0)
        return blink_fail(err, BLINK_E_VM, shim->freeze_reply, "%s the guest filesystem",
                          freeze ? "freeze" : "thaw");
    return 0;
}

/* The node the VM writes to: "root" until a fork stacked overlays on it. */
static void top_node(const shim_t *shim, char name[16])
{
    if (shim->layers == 0)
        snprintf(name, 16, "root");
    else
        snprintf(name, 16, "top%u", shim->layers);
}

static int disk_only(shim_t *shim, const char *name, blink_error_t *err)
{
    if (guest_freeze(shim, true, err) < 0)
        return -1;
    char node[16];
    top_node(shim, node);
    json_t *args = json_pack("{s:s, s:s}", "device", node, "name", name);
    int rc = blink_qmp_execute(&shim->vm->qmp, "blockdev-snapshot-internal-sync", args, NULL,
                               blink_now_ms() + MONITOR_TIMEOUT_MS, err);
    json_decref(args);
    blink_error_t thaw_err;
    if (guest_freeze(shim, false, &thaw_err) < 0) {
        log_error("shim", "thaw after checkpoint: %s", thaw_err.message);
        if (rc == 0)
            *err = thaw_err;
        return -1;
    }
    return rc;
}

int shim_checkpoint(shim_t *shim, const char *name, bool memory, blink_error_t *err)
{
    log_info("shim", "checkpoint `%s` (%s)", name, memory ? "memory" : "disk");
    return memory ? hmp(shim, "savevm", name, err) : disk_only(shim, name, err);
}

int shim_restore(shim_t *shim, const char *name, blink_error_t *err)
{
    log_info("shim", "restore memory checkpoint `%s`", name);
    if (hmp(shim, "loadvm", name, err) < 0)
        return -1;

    /* The guest is back at the checkpoint: what it had in flight then is
     * all it knows. Executions started since are gone; bytes queued or half
     * decoded belong to the abandoned timeline. */
    shim_fail_all(shim, "the session was restored to a checkpoint");
    blin_decoder_free(&shim->vm->decoder);
    blin_decoder_init(&shim->vm->decoder, BLINK_CAP_BLIN_PAYLOAD);
    shim->vm->send_queue.len = 0;
    shim->vm->send_offset = 0;
    /* Guest connections to the hub belong to the abandoned timeline too. */
    if (shim->vm->vhub)
        blink_vhub_reset(shim->vm->vhub);
    return shim_send_init(shim, err);
}

int shim_delete_checkpoint(shim_t *shim, const char *name, blink_error_t *err)
{
    char node[16];
    top_node(shim, node);
    json_t *args = json_pack("{s:s, s:s}", "device", node, "name", name);
    int rc = blink_qmp_execute(&shim->vm->qmp, "blockdev-snapshot-delete-internal-sync", args, NULL,
                               blink_now_ms() + MONITOR_TIMEOUT_MS, err);
    json_decref(args);
    return rc;
}

/* Copies the disk file while the VM is paused (QMP stop drains and flushes
 * its I/O), after the guest synced and froze its filesystem. */
int shim_copy_disk(shim_t *shim, const char *disk, const char *target, blink_error_t *err)
{
    if (guest_freeze(shim, true, err) < 0)
        return -1;
    int rc = blink_qmp_execute(&shim->vm->qmp, "stop", NULL, NULL,
                               blink_now_ms() + MONITOR_TIMEOUT_MS, err);
    if (rc == 0)
        rc = blink_copy_file(disk, target, err);

    blink_error_t resume_err;
    if (blink_qmp_execute(&shim->vm->qmp, "cont", NULL, NULL, blink_now_ms() + 10000, &resume_err) <
            0 ||
        guest_freeze(shim, false, &resume_err) < 0) {
        log_error("shim", "resume after disk copy: %s", resume_err.message);
        if (rc == 0)
            *err = resume_err;
        return -1;
    }
    return rc;
}

/* QEMU knows each disk file by a name of its own, sessions/NAME/vm/disk-N,
 * a hard link that nothing renames while the VM runs: QEMU reopens files by
 * name (a node put under an overlay is reopened read-only), and the
 * session's disk.qcow2 changes inode when a fork moves it onto an overlay. */
char *shim_vm_disk_name(const shim_t *shim, unsigned index, blink_error_t *err)
{
    if (index == 0) {
        blink_remove_tree(shim->vm_dir); /* names of a VM that is gone */
        if (mkdir(shim->vm_dir, 0700) < 0)
            return blink_fail_null(err, BLINK_E_IO, errno, "create `%s`", shim->vm_dir);
    }
    char *name = blink_strdup_printf("%s/disk-%u.qcow2", shim->vm_dir, index);
    if (name == NULL)
        return blink_fail_null(err, BLINK_E_NO_MEMORY, ENOMEM, "name the vm's disk");
    return name;
}

/* The caller made `overlay` over a link to the disk (so its header already
 * names the shared layer); QEMU opens it as it is ("existing") and puts the
 * current node under it, with the guest's filesystem frozen meanwhile. */
int shim_add_layer(shim_t *shim, const char *overlay, blink_error_t *err)
{
    char node[16], next[16];
    top_node(shim, node);
    snprintf(next, sizeof(next), "top%u", shim->layers + 1);
    cleanup_free char *name = shim_vm_disk_name(shim, shim->layers + 1, err);
    if (name == NULL)
        return -1;
    unlink(name);
    if (link(overlay, name) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "link `%s` for the vm", overlay);
    log_info("shim", "move the disk onto overlay %s", overlay);
    if (guest_freeze(shim, true, err) < 0) {
        unlink(name);
        return -1;
    }
    json_t *args = json_pack("{s:s, s:s, s:s, s:s, s:s}", "node-name", node, "snapshot-file",
                             name, "snapshot-node-name", next, "format", "qcow2", "mode",
                             "existing");
    int rc = blink_qmp_execute(&shim->vm->qmp, "blockdev-snapshot-sync", args, NULL,
                               blink_now_ms() + MONITOR_TIMEOUT_MS, err);
    json_decref(args);
    if (rc == 0)
        shim->layers++;
    else
        unlink(name);
    /* Once moved, the answer must say so whatever the thaw does: the client
     * renames files by it. */
    blink_error_t thaw_err;
    if (guest_freeze(shim, false, &thaw_err) < 0)
        log_error("shim", "thaw after moving onto an overlay: %s", thaw_err.message);
    return rc;
}
