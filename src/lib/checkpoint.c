/* Checkpoints of a session: qcow2 internal snapshots of its disk, taken by
 * qemu-img when the VM is stopped and by the shim (QMP) when it runs. The
 * qcow2 file is the truth of which checkpoints exist; the catalog adds what
 * qcow2 does not keep (our creation time and size). */
#include "session.h"
#include "shim_client.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

static int qemu_img(session_ctx_t *s, const char *op, const char *snapshot, blink_error_t *err)
{
    cleanup_free char *tool = blink_find_program("qemu-img");
    if (tool == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img: install the Debian package `qemu-utils`");
    char *argv[] = {tool, "snapshot", (char *)op, (char *)snapshot, s->disk, NULL};
    return blink_run_program(argv, err);
}

/* Reads the disk's snapshots (qemu-img info; -U since a running QEMU holds
 * the image's write lock) and joins the catalog's metadata. */
static int list_checkpoints(session_ctx_t *s, blink_checkpoint_info_t **list, size_t *count,
                            blink_error_t *err)
{
    cleanup_free char *tool = blink_find_program("qemu-img");
    cleanup_free char *text = NULL;
    *list = NULL;
    *count = 0;
    if (tool == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img: install the Debian package `qemu-utils`");
    char *argv[] = {tool, "info", "-U", "--output=json", s->disk, NULL};
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

static int find_checkpoint(session_ctx_t *s, const char *snapshot, blink_checkpoint_info_t *found,
                           blink_error_t *err)
{
    blink_checkpoint_info_t *list;
    size_t count;
    if (list_checkpoints(s, &list, &count, err) < 0)
        return -1;
    int rc = blink_fail(err, BLINK_E_NOT_FOUND, 0, "session `%s` has no checkpoint `%s`", s->name,
                        snapshot);
    for (size_t i = 0; i < count; i++)
        if (strcmp(list[i].name, snapshot) == 0) {
            *found = list[i];
            rc = 0;
        }
    free(list);
    return rc;
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
        rc = qemu_img(&s, "-c", snapshot, err);
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
        rc = list_checkpoints(&s, list, count, err);
    session_ctx_close(&s);
    return rc;
}

int blink_session_restore(blink_t *blink, const char *name, const char *snapshot,
                          blink_error_t *err)
{
    session_ctx_t s;
    blink_session_row_t row;
    blink_checkpoint_info_t cp;
    int rc = -1;

    if (begin(blink, name, snapshot, &s, &row, err) < 0 ||
        find_checkpoint(&s, snapshot, &cp, err) < 0)
        goto out;

    bool running = session_is_running(&s, &row);
    if (running && cp.memory) {
        rc = blink_shim_request(s.socket, BLIN_SHIM_RESTORE, snapshot, false, 0, err);
        goto out;
    }

    /* Everything else works on the stopped disk: a disk checkpoint restored
     * into a running VM reboots it onto that disk. */
    if (running && session_stop_vm(&s, &row, err) < 0)
        goto out;
    if (qemu_img(&s, "-a", snapshot, err) < 0)
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

int blink_session_delete_checkpoint(blink_t *blink, const char *name, const char *snapshot,
                                    blink_error_t *err)
{
    session_ctx_t s;
    blink_session_row_t row;
    blink_checkpoint_info_t cp;
    int rc = -1;

    if (begin(blink, name, snapshot, &s, &row, err) < 0 ||
        find_checkpoint(&s, snapshot, &cp, err) < 0)
        goto out;
    if (session_is_running(&s, &row))
        rc = blink_shim_request(s.socket, BLIN_SHIM_DELETE, snapshot, false, 0, err);
    else
        rc = qemu_img(&s, "-d", snapshot, err);
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
