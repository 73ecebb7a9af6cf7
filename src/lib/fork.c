/* Forking a session (docs/fork.md): the source's disk becomes a shared,
 * read-only layer; the source goes on in a new overlay over it (moved there
 * live by its shim when the VM runs) and the fork gets an overlay of its
 * own. No disk data is copied. A fork from a checkpoint stores, in its
 * overlay, only the clusters where the checkpoint differs from the layer.
 *
 * Order, so that a crash leaves a usable source: link the disk under its
 * layer name, create the overlay, rename it over the disk, move the VM (if
 * one runs) onto it, record the checkpoints' new home, then build the fork.
 * A layer name left by a crash before the rename is only a second name of
 * the source's disk, and the next collection drops it. */
#include "layers.h"
#include "session.h"
#include "shim_client.h"
#include "vhub_carrier.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* Freezes the source's disk into a new shared layer, returned (absolute). */
static char *freeze_disk(session_ctx_t *src, bool running, blink_error_t *err)
{
    cleanup_free char *layers_dir = blink_strdup_printf("%s/layers", src->blink->home);
    cleanup_free char *overlay = blink_strdup_printf("%s.fork-%d", src->disk, (int)getpid());
    /* Overlays of forks killed before their rename. */
    blink_reap_orphans(src->dir, ".fork-", false);
    char *layer = NULL, *backing = NULL;
    uint64_t size = 0;
    if (layers_dir == NULL || overlay == NULL)
        return blink_fail_null(err, BLINK_E_NO_MEMORY, ENOMEM, "fork");
    if (blink_mkdir_p(layers_dir, 0700, err) < 0 ||
        layers_read_header(src->disk, &backing, &size, err) < 0 ||
        (layer = layers_new_path(layers_dir, err)) == NULL)
        goto fail;
    if (link(src->disk, layer) < 0) {
        blink_fail(err, BLINK_E_IO, errno, "link `%s` as a layer", src->disk);
        goto fail;
    }
    unlink(overlay);
    if (layers_create_overlay(overlay, layer, size, err) < 0)
        goto fail_linked;
    /* The disk's name moves to the overlay first: a running VM writes to
     * the layer's inode until its shim moves it, and a VM started from the
     * new disk reads that inode through it, so no moment loses a write. */
    if (rename(overlay, src->disk) < 0) {
        blink_fail(err, BLINK_E_IO, errno, "move `%s` onto its overlay", src->name);
        unlink(overlay);
        goto fail_linked;
    }
    if (running &&
        blink_shim_request(src->socket, BLIN_SHIM_LAYER, src->disk, false, 0, err) < 0) {
        /* The VM stays on the old inode: give it its name back. */
        if (rename(layer, src->disk) < 0)
            log_error("fork", "`%s` runs on %s: %s", src->name, layer, strerror(errno));
        goto fail;
    }
    /* The layer is read-only from now on, for everyone. */
    chmod(layer, 0400);
    if (blink_catalog_checkpoint_move(src->catalog, src->name, NULL,
                                      layers_relative(src->blink, layer), err) < 0)
        log_error("fork", "`%s`: %s; its earlier checkpoints are in %s", src->name, err->message,
                  layer);
    free(backing);
    return layer;

fail_linked:
    unlink(layer);
fail:
    free(backing);
    free(layer);
    return NULL;
}

/* A stopped source that has written nothing since it last froze (its
 * overlay holds no data and no checkpoints) forks from that same layer:
 * forking one session many times does not stack layers. *layer stays NULL
 * when there is no such layer. */
static int idle_layer(session_ctx_t *src, char **layer, blink_error_t *err)
{
    bool empty = false;
    char *backing = NULL;
    uint64_t size = 0;
    *layer = NULL;
    if (layers_overlay_empty(src->disk, &empty, err) < 0 ||
        (empty && layers_read_header(src->disk, &backing, &size, err) < 0))
        return -1;
    const char *relative = backing ? layers_relative(src->blink, backing) : NULL;
    if (relative && strncmp(relative, "layers/", 7) == 0 && !strchr(relative + 7, '/'))
        *layer = backing;
    else
        free(backing); /* it stands on its image: freeze it once */
    return 0;
}

/* Every fork of a running or busy source adds a layer under it. */
static int check_depth(session_ctx_t *src, blink_error_t *err)
{
    int depth = layers_chain_depth(src->disk, err);
    if (depth < 0)
        return -1;
    if (depth >= LAYERS_MAX_FORK_DEPTH) /* depth - 1 layers and the image; one more */
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "session `%s` stands on %d layers, the most a fork allows: fork "
                          "it while it is stopped and unchanged since its last fork, or fork "
                          "one of its forks",
                          src->name, depth - 1);
    return 0;
}

static int create_fork_disk(session_ctx_t *dst, const char *source_dir, const char *layer,
                            const char *snapshot, const char *snapshot_layer, blink_error_t *err)
{
    cleanup_free char *tmp = blink_strdup_printf("%s.tmp", dst->disk);
    cleanup_free char *held = NULL;
    if (tmp == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "fork");
    blink_remove_tree(dst->dir); /* debris without a row */
    if (blink_mkdir_p(dst->dir, 0700, err) < 0)
        return -1;

    int rc;
    if (snapshot == NULL) {
        char *backing = NULL;
        uint64_t size = 0;
        rc = layers_read_header(layer, &backing, &size, err);
        free(backing);
        if (rc == 0)
            rc = layers_create_overlay(tmp, layer, size, err);
    } else {
        /* The checkpoint is in the new layer, or in an older one. */
        const char *base = layer;
        if (snapshot_layer[0]) {
            held = blink_strdup_printf("%s/%s", dst->blink->home, snapshot_layer);
            base = held;
        }
        rc = base ? layers_overlay_at_snapshot(dst->blink, tmp, base, snapshot, err)
                  : blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "fork");
    }
    if (rc == 0 && rename(tmp, dst->disk) < 0)
        rc = blink_fail(err, BLINK_E_IO, errno, "create disk `%s`", dst->disk);
    /* The fork talks to the source's V-Hub, if it has one (docs/vhub.md). */
    cleanup_free char *hub = rc == 0 ? blink_vhub_load(source_dir) : NULL;
    if (hub && blink_vhub_save(dst->dir, hub, err) < 0)
        rc = -1;
    if (rc < 0)
        blink_remove_tree(dst->dir);
    return rc;
}

/* A checkpoint in the source's parked files can only be the base of a fork
 * once it is in a shared layer; a fork from one is refused for now. */
static int check_snapshot(session_ctx_t *src, const char *snapshot, char layer[256],
                          blink_error_t *err)
{
    blink_checkpoint_info_t found;
    if (checkpoint_find(src, snapshot, &found, layer, err) < 0)
        return -1;
    if (layer[0] && layers_is_private(src, layer))
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "checkpoint `%s` was set aside by a restore: restore it first, then "
                          "fork",
                          snapshot);
    return 0;
}

int blink_session_fork(blink_t *blink, const char *source, const char *target,
                       const char *snapshot, blink_error_t *err)
{
    session_ctx_t src, dst;
    blink_session_row_t row, existing;
    char snapshot_layer[256] = "";
    char *layer = NULL;
    int layers_fd = -1, rc = -1;

    memset(&dst, 0, sizeof(dst));
    dst.lock_fd = -1;
    if (session_ctx_open(blink, source, &src, err) < 0)
        goto out;
    if (session_ctx_open(blink, target, &dst, err) < 0)
        goto out;
    if (strcmp(source, target) == 0) {
        blink_fail(err, BLINK_E_INVALID, 0, "a session cannot be forked onto itself");
        goto out;
    }
    if (snapshot && !blink_name_valid(snapshot)) {
        blink_fail(err, BLINK_E_INVALID, 0, "checkpoint name `%.40s`: use 3-32 of [A-Za-z0-9_-]",
                   snapshot);
        goto out;
    }
    /* Two sessions' locks, always source first: a fork the other way round
     * waits for the source's lock, which it cannot hold (the target of a
     * fork does not exist yet). */
    if (session_ctx_lock(&src, err) < 0 || session_ctx_lock(&dst, err) < 0 ||
        blink_catalog_session_get(src.catalog, source, &row, err) < 0)
        goto out;
    if (blink_catalog_session_get(dst.catalog, target, &existing, NULL) == 0) {
        blink_fail(err, BLINK_E_EXISTS, 0, "a session `%s` exists", target);
        goto out;
    }
    if (snapshot && check_snapshot(&src, snapshot, snapshot_layer, err) < 0)
        goto out;

    if ((layers_fd = layers_lock(blink, err)) < 0)
        goto out;
    bool running = session_is_running(&src, &row);
    if (!running && idle_layer(&src, &layer, err) < 0)
        goto out;
    if (layer == NULL && check_depth(&src, err) < 0)
        goto out;
    if (layer == NULL && (layer = freeze_disk(&src, running, err)) == NULL)
        goto out;
    if (create_fork_disk(&dst, src.dir, layer, snapshot, snapshot_layer, err) < 0)
        goto out;

    blink_session_row_t fork_row = row;
    snprintf(fork_row.name, sizeof(fork_row.name), "%s", target);
    snprintf(fork_row.state, sizeof(fork_row.state), "%s", BLINK_STATE_STOPPED);
    fork_row.shim_pid = fork_row.qemu_pid = 0;
    fork_row.created_at = 0;
    fork_row.last_end[0] = fork_row.boot_id[0] = '\0';
    if (blink_catalog_session_insert(dst.catalog, &fork_row, err) < 0) {
        blink_remove_tree(dst.dir);
        goto out;
    }
    log_info("fork", "`%s` forked from `%s`%s%s", target, source, snapshot ? " at " : "",
             snapshot ? snapshot : "");
    rc = 0;
out:
    if (layers_fd >= 0)
        close(layers_fd);
    free(layer);
    session_ctx_close(&dst);
    session_ctx_close(&src);
    if (rc < 0)
        blink_wrap(err, "fork `%s` to `%s`", source ? source : "", target ? target : "");
    return rc;
}
