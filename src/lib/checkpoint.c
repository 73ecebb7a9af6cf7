/* Checkpoints of a session: qcow2 internal snapshots of its disk, taken by
 * qemu-img when the VM is stopped and by the shim (QMP) when it runs. The
 * qcow2 file is the truth of which checkpoints exist; the catalog adds what
 * qcow2 does not keep (our creation time and size). After a fork, older
 * checkpoints live in a layer under the disk (layers.h); their rows say so. */
#include "layers.h"
#include "session.h"
#include "shim_client.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

static int qemu_img(const char *disk, const char *op, const char *snapshot, blink_error_t *err)
{
    cleanup_free char *tool = blink_find_program("qemu-img");
    if (tool == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img: install the Debian package `qemu-utils`");
    char *argv[] = {tool, "snapshot", (char *)op, (char *)snapshot, (char *)disk, NULL};
    return blink_run_program(argv, err);
}

static bool listed(const blink_checkpoint_info_t *list, size_t count, const char *name)
{
    for (size_t i = 0; i < count; i++)
        if (strcmp(list[i].name, name) == 0)
            return true;
    return false;
}

/* Appends the checkpoints that layers hold for the session. */
static int add_layered(session_ctx_t *s, blink_checkpoint_info_t **list, size_t *count,
                       blink_error_t *err)
{
    blink_checkpoint_row_t *rows = NULL;
    size_t n = 0;
    if (blink_catalog_checkpoint_layered(s->catalog, s->name, &rows, &n, err) < 0)
        return -1;
    blink_checkpoint_info_t *grown = realloc(*list, (*count + n + 1) * sizeof(**list));
    if (grown == NULL) {
        free(rows);
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "list checkpoints");
    }
    *list = grown;
    for (size_t i = 0; i < n; i++) {
        if (listed(*list, *count, rows[i].name))
            continue; /* the active disk has it after all: the disk is the truth */
        blink_checkpoint_info_t *c = &(*list)[(*count)++];
        memset(c, 0, sizeof(*c));
        snprintf(c->name, sizeof(c->name), "%s", rows[i].name);
        c->created_at = rows[i].created_at;
        c->size_bytes = (uint64_t)rows[i].size_bytes;
        c->memory = rows[i].memory;
    }
    free(rows);
    return 0;
}

/* Reads the disk's snapshots (qemu-img info; -U since a running QEMU holds
 * the image's write lock) and joins the catalog's metadata. */
static int list_disk_checkpoints(session_ctx_t *s, const char *disk,
                                 blink_checkpoint_info_t **list, size_t *count,
                                 blink_error_t *err)
{
    cleanup_free char *tool = blink_find_program("qemu-img");
    cleanup_free char *text = NULL;
    *list = NULL;
    *count = 0;
    if (tool == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img: install the Debian package `qemu-utils`");
    char *argv[] = {tool, "info", "-U", "--output=json", (char *)disk, NULL};
    if (blink_run_program_output(argv, &text, 16 << 20, err) < 0)
        return blink_wrap(err, "list checkpoints of `%s`", s->name);

    json_t *info = json_loads(text, 0, NULL);
    json_t *snapshots = json_object_get(info, "snapshots");
    size_t n = json_array_size(snapshots);
    blink_checkpoint_info_t *out = calloc(n ? n : 1, sizeof(*out));
    if (out == NULL) {
        json_decref(info);
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "list checkpoints");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *snap = json_array_get(snapshots, i);
        blink_checkpoint_info_t *c = &out[i];
        const char *name = json_string_value(json_object_get(snap, "name"));
        const char *id = json_string_value(json_object_get(snap, "id"));
        snprintf(c->name, sizeof(c->name), "%s", name ? name : "");
        snprintf(c->id, sizeof(c->id), "%s", id ? id : "");
        json_int_t vm_state = json_integer_value(json_object_get(snap, "vm-state-size"));
        c->memory = vm_state > 0;
        c->size_bytes = (uint64_t)vm_state;
        c->created_at = json_integer_value(json_object_get(snap, "date-sec")) * 1000;

        blink_checkpoint_row_t row;
        if (blink_catalog_checkpoint_get(s->catalog, s->name, c->name, &row, NULL) == 0) {
            c->created_at = row.created_at;
            c->size_bytes = (uint64_t)row.size_bytes;
        }
    }
    json_decref(info);
    *list = out;
    *count = n;
    return 0;
}

/* The active disk's checkpoints (the first *disk_count), then the layers'. */
static int list_checkpoints(session_ctx_t *s, blink_checkpoint_info_t **list, size_t *count,
                            size_t *disk_count, blink_error_t *err)
{
    if (list_disk_checkpoints(s, s->disk, list, count, err) < 0)
        return -1;
    if (disk_count)
        *disk_count = *count;
    if (add_layered(s, list, count, err) < 0) {
        free(*list);
        *list = NULL;
        *count = 0;
        return -1;
    }
    return 0;
}

int checkpoint_find(session_ctx_t *s, const char *snapshot, blink_checkpoint_info_t *found,
                    char layer[256], blink_error_t *err)
{
    blink_checkpoint_info_t *list;
    size_t count, disk_count;
    if (list_checkpoints(s, &list, &count, &disk_count, err) < 0)
        return -1;
    int rc = blink_fail(err, BLINK_E_NOT_FOUND, 0, "session `%s` has no checkpoint `%s`", s->name,
                        snapshot);
    for (size_t i = 0; i < count; i++)
        if (strcmp(list[i].name, snapshot) == 0) {
            *found = list[i];
            layer[0] = '\0';
            rc = 0;
            blink_checkpoint_row_t row;
            if (i >= disk_count &&
                blink_catalog_checkpoint_get(s->catalog, s->name, snapshot, &row, err) == 0)
                snprintf(layer, 256, "%s", row.layer);
        }
    free(list);
    return rc;
}

static int find_checkpoint(session_ctx_t *s, const char *snapshot, blink_checkpoint_info_t *found,
                           blink_error_t *err)
{
    char layer[256];
    return checkpoint_find(s, snapshot, found, layer, err);
}

/* Opens and locks the session, and checks the snapshot name. */
static int begin(blink_t *blink, const char *name, const char *snapshot, session_ctx_t *s,
                 blink_session_row_t *row, blink_error_t *err)
{
    if (session_ctx_open(blink, name, s, err) < 0)
        return -1;
    if (snapshot && !blink_name_valid(snapshot))
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "checkpoint name `%.40s`: use 3-32 of [A-Za-z0-9_-]", snapshot);
    if (session_ctx_lock(s, err) < 0 || blink_catalog_session_get(s->catalog, name, row, err) < 0)
        return -1;
    return 0;
}

int blink_session_checkpoint(blink_t *blink, const char *name, const char *snapshot,
                             blink_checkpoint_kind_t kind, blink_checkpoint_info_t *info,
                             blink_error_t *err)
{
    session_ctx_t s;
    blink_session_row_t row;
    blink_checkpoint_info_t existing;
    int rc = -1;

    if (begin(blink, name, snapshot, &s, &row, err) < 0)
        goto out;
    if (find_checkpoint(&s, snapshot, &existing, NULL) == 0) {
        blink_fail(err, BLINK_E_EXISTS, 0, "session `%s` already has a checkpoint `%s`", name,
                   snapshot);
        goto out;
    }

    bool running = session_is_running(&s, &row);
    bool memory = kind == BLINK_CHECKPOINT_MEMORY || (kind == BLINK_CHECKPOINT_AUTO && running);
    if (memory && !running) {
        blink_fail(err, BLINK_E_INVALID, 0,
                   "a memory checkpoint needs the session's vm running (open it --warm)");
        goto out;
    }
    int64_t created_at = (int64_t)(blink_wall_ns() / 1000000);
    if (running)
        rc =
            blink_shim_request(s.socket, BLIN_SHIM_CHECKPOINT, snapshot, true, memory ? 1 : 0, err);
    else
        rc = qemu_img(s.disk, "-c", snapshot, err);
    if (rc < 0) {
        blink_wrap(err, "checkpoint `%s` of `%s`", snapshot, name);
        goto out;
    }

    rc = find_checkpoint(&s, snapshot, info, err);
    if (rc == 0) {
        struct stat st;
        if (!info->memory && stat(s.disk, &st) == 0)
            info->size_bytes = (uint64_t)st.st_blocks * 512;
        info->created_at = created_at;
        blink_checkpoint_row_t meta = {.created_at = created_at,
                                       .size_bytes = (int64_t)info->size_bytes,
                                       .memory = info->memory};
        snprintf(meta.session, sizeof(meta.session), "%s", name);
        snprintf(meta.name, sizeof(meta.name), "%s", snapshot);
        blink_error_t ignored;
        blink_catalog_checkpoint_put(s.catalog, &meta, &ignored);
    }
out:
    session_ctx_close(&s);
    return rc;
}

int blink_session_checkpoints(blink_t *blink, const char *name, blink_checkpoint_info_t **list,
                              size_t *count, blink_error_t *err)
{
    session_ctx_t s;
    blink_session_row_t row;
    int rc = -1;
    *list = NULL;
    *count = 0;
    if (session_ctx_open(blink, name, &s, err) == 0 &&
        blink_catalog_session_get(s.catalog, name, &row, err) == 0)
        rc = list_checkpoints(&s, list, count, NULL, err);
    session_ctx_close(&s);
    return rc;
}

/* Drops from `disk` (a copy of a shared layer) the snapshots that are not
 * this session's checkpoints in `layer`: deleted ones, or stale namesakes. */
static int prune_copy(session_ctx_t *s, const char *disk, const char *layer, blink_error_t *err)
{
    blink_checkpoint_info_t *list;
    size_t count;
    if (list_disk_checkpoints(s, disk, &list, &count, err) < 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        blink_checkpoint_row_t row;
        if (blink_catalog_checkpoint_get(s->catalog, s->name, list[i].name, &row, NULL) < 0 ||
            strcmp(row.layer, layer) != 0)
            rc = qemu_img(disk, "-d", list[i].name, err);
    }
    free(list);
    return rc;
}

/* Makes the file holding `layer`'s checkpoints the session's disk: a file
 * the session parked moves back; a shared layer, read-only for the sessions
 * standing on it, is copied. The disk it replaces is parked if it holds
 * checkpoints. The VM is stopped and the lock held. */
static int adopt_layer(session_ctx_t *s, const char *layer, blink_error_t *err)
{
    cleanup_free char *source = blink_strdup_printf("%s/%s", s->blink->home, layer);
    cleanup_free char *parked_dir = blink_strdup_printf("%s/layers", s->dir);
    cleanup_free char *staged = blink_strdup_printf("%s.adopt", s->disk);
    cleanup_free char *parked = NULL;
    blink_checkpoint_info_t *own = NULL;
    size_t own_count = 0;
    if (source == NULL || parked_dir == NULL || staged == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "restore");

    bool private = layers_is_private(s, layer);
    if (!private) {
        unlink(staged);
        if (blink_copy_file(source, staged, err) < 0 || prune_copy(s, staged, layer, err) < 0)
            goto fail;
    }
    if (list_disk_checkpoints(s, s->disk, &own, &own_count, err) < 0)
        goto fail;
    free(own);
    if (own_count > 0) {
        if (blink_mkdir_p(parked_dir, 0700, err) < 0 ||
            (parked = layers_new_path(parked_dir, err)) == NULL)
            goto fail;
        if (rename(s->disk, parked) < 0) {
            blink_fail(err, BLINK_E_IO, errno, "park `%s`", s->disk);
            goto fail;
        }
        if (blink_catalog_checkpoint_move(s->catalog, s->name, NULL,
                                          layers_relative(s->blink, parked), err) < 0)
            goto fail;
    }
    if (rename(private ? source : staged, s->disk) < 0) {
        blink_fail(err, BLINK_E_IO, errno, "restore layer `%s`", layer);
        goto fail;
    }
    return blink_catalog_checkpoint_move(s->catalog, s->name, layer, NULL, err);
fail:
    unlink(staged);
    if (parked && access(s->disk, F_OK) != 0 && rename(parked, s->disk) == 0)
        blink_catalog_checkpoint_move(s->catalog, s->name, layers_relative(s->blink, parked), NULL,
                                      NULL);
    return -1;
}

int blink_session_restore(blink_t *blink, const char *name, const char *snapshot,
                          blink_error_t *err)
{
    session_ctx_t s;
    blink_session_row_t row;
    blink_checkpoint_info_t cp;
    char layer[256] = "";
    int rc = -1;

    if (begin(blink, name, snapshot, &s, &row, err) < 0 ||
        checkpoint_find(&s, snapshot, &cp, layer, err) < 0)
        goto out;

    bool running = session_is_running(&s, &row);
    if (running && cp.memory && layer[0] == '\0') {
        rc = blink_shim_request(s.socket, BLIN_SHIM_RESTORE, snapshot, false, 0, err);
        goto out;
    }

    /* Everything else works on the stopped disk: a disk checkpoint restored
     * into a running VM reboots it onto that disk. */
    if (running && session_stop_vm(&s, &row, err) < 0)
        goto out;
    if (layer[0]) {
        if (adopt_layer(&s, layer, err) < 0)
            goto out;
        layers_collect(blink, s.catalog);
    }
    if (qemu_img(s.disk, "-a", snapshot, err) < 0)
        goto out;
    rc = 0;
    /* A warm session's VM runs: restored from memory when the checkpoint
     * has it, booted on the restored disk otherwise. */
    if (running || row.warm) {
        s.loadvm = cp.memory ? snapshot : NULL;
        rc = session_ensure_running(&s, &row, err);
    }
out:
    if (rc < 0)
        blink_wrap(err, "restore `%s` to `%s`", name, snapshot ? snapshot : "");
    session_ctx_close(&s);
    return rc;
}

/* A checkpoint in a layer: a parked file of the session loses the snapshot
 * (and goes when it holds no other); a shared layer is read-only, so only
 * the row goes and the layer's space returns once no one uses it. */
static int delete_layered(session_ctx_t *s, const char *snapshot, const char *layer,
                          blink_error_t *err)
{
    if (layers_is_private(s, layer)) {
        cleanup_free char *path = blink_strdup_printf("%s/%s", s->blink->home, layer);
        if (path == NULL)
            return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "delete checkpoint");
        if (qemu_img(path, "-d", snapshot, err) < 0 ||
            blink_catalog_checkpoint_delete(s->catalog, s->name, snapshot, err) < 0)
            return -1;
        blink_checkpoint_row_t *rows = NULL;
        size_t count = 0;
        bool others = true;
        if (blink_catalog_checkpoint_layered(s->catalog, s->name, &rows, &count, NULL) == 0) {
            others = false;
            for (size_t i = 0; i < count; i++)
                others = others || strcmp(rows[i].layer, layer) == 0;
        }
        free(rows);
        if (!others)
            unlink(path);
        return 0;
    }
    if (blink_catalog_checkpoint_delete(s->catalog, s->name, snapshot, err) < 0)
        return -1;
    layers_collect(s->blink, s->catalog);
    return 0;
}

int blink_session_delete_checkpoint(blink_t *blink, const char *name, const char *snapshot,
                                    blink_error_t *err)
{
    session_ctx_t s;
    blink_session_row_t row;
    blink_checkpoint_info_t cp;
    char layer[256] = "";
    int rc = -1;

    if (begin(blink, name, snapshot, &s, &row, err) < 0 ||
        checkpoint_find(&s, snapshot, &cp, layer, err) < 0)
        goto out;
    if (layer[0]) {
        rc = delete_layered(&s, snapshot, layer, err);
        goto out;
    }
    if (session_is_running(&s, &row))
        rc = blink_shim_request(s.socket, BLIN_SHIM_DELETE, snapshot, false, 0, err);
    else
        rc = qemu_img(s.disk, "-d", snapshot, err);
    if (rc == 0) {
        blink_error_t ignored;
        blink_catalog_checkpoint_delete(s.catalog, name, snapshot, &ignored);
    }
out:
    session_ctx_close(&s);
    return rc;
}

int blink_checkpoint_session(const char *name, const char *snapshot, blink_error_t *err)
{
    blink_t *blink = blink_open(NULL, err);
    if (blink == NULL)
        return -1;
    blink_checkpoint_info_t info;
    int rc = blink_session_checkpoint(blink, name, snapshot, BLINK_CHECKPOINT_AUTO, &info, err);
    blink_close(blink);
    return rc;
}

int blink_restore_session(const char *name, const char *snapshot, blink_error_t *err)
{
    blink_t *blink = blink_open(NULL, err);
    if (blink == NULL)
        return -1;
    int rc = blink_session_restore(blink, name, snapshot, err);
    blink_close(blink);
    return rc;
}
