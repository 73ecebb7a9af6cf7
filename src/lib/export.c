/* Exporting a session as a .boxlite archive (boxlite.h, docs/archive.md). */
#include "boxlite.h"
#include "layers.h"
#include "session.h"
#include "shim_client.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define COPY_CHUNK (1u << 20)

struct blink_sha256 {
    EVP_MD_CTX *ctx;
};

blink_sha256_t *blink_sha256_new(void)
{
    blink_sha256_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->ctx = EVP_MD_CTX_new();
    if (h->ctx == NULL || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(h->ctx);
        free(h);
        return NULL;
    }
    return h;
}

void blink_sha256_update(blink_sha256_t *h, const void *data, size_t len)
{
    EVP_DigestUpdate(h->ctx, data, len);
}

void blink_sha256_final(blink_sha256_t *h, char hex[65])
{
    unsigned char digest[32];
    unsigned int len = 0;
    EVP_DigestFinal_ex(h->ctx, digest, &len);
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

int blink_sha256_file(const char *path, char hex[65], blink_progress_fn progress, void *userdata,
                      uint64_t *done, uint64_t total, blink_error_t *err)
{
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC);
    cleanup_free char *buf = malloc(COPY_CHUNK);
    blink_sha256_t *h = blink_sha256_new();
    if (fd < 0 || buf == NULL || h == NULL) {
        int e = errno;
        if (h)
            blink_sha256_final(h, hex);
        return blink_fail(err, BLINK_E_IO, e, "read `%s`", path);
    }
    for (;;) {
        ssize_t n = read(fd, buf, COPY_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            blink_sha256_final(h, hex);
            return blink_fail(err, BLINK_E_IO, e, "read `%s`", path);
        }
        if (n == 0)
            break;
        blink_sha256_update(h, buf, (size_t)n);
        *done += (uint64_t)n;
        if (progress)
            progress(*done, total, userdata);
    }
    blink_sha256_final(h, hex);
    return 0;
}

typedef struct member {
    char name[64];  /* path in the archive */
    char *path;     /* file on the host */
    uint64_t size;
    char sha256[65];
    int backing;    /* index of the member it stands on; -1: none */
    bool is_copy;   /* `path` is a temporary file of this export */
} member_t;

/* The members a session needs: its disk, every layer under it or holding
 * one of its checkpoints, and the image at the bottom. */
typedef struct member_list {
    member_t items[2 + BOXLITE_LAYERS_MAX];
    size_t count;
} member_list_t;

/* The archive name of the layer file `path`, adding it (and what it stands
 * on) when new; the image's backing index is 1. Returns the index or -1. */
static int add_layer(member_list_t *list, const char *path, const char *image, int depth,
                     blink_error_t *err)
{
    cleanup_free char *real = realpath(path, NULL);
    if (real == NULL)
        return blink_fail(err, BLINK_E_IO, errno, "find layer `%s`", path);
    if (strcmp(real, image) == 0)
        return 1;
    for (size_t i = 2; i < list->count; i++)
        if (strcmp(list->items[i].path, real) == 0)
            return (int)i;
    char *backing = NULL;
    uint64_t size;
    if (depth >= LAYERS_MAX_DEPTH || list->count >= 2 + BOXLITE_LAYERS_MAX)
        return blink_fail(err, BLINK_E_INVALID, 0, "the disk stands on too many layers");
    if (layers_read_header(real, &backing, &size, err) < 0)
        return -1;
    if (backing == NULL)
        return blink_fail(err, BLINK_E_INVALID, 0, "layer `%s` does not stand on the image", real);
    int under = add_layer(list, backing, image, depth + 1, err);
    free(backing);
    if (under < 0)
        return -1;
    member_t *m = &list->items[list->count];
    const char *base = strrchr(real, '/');
    snprintf(m->name, sizeof(m->name), "layers/%.40s", base + 1);
    m->path = strdup(real);
    m->backing = under;
    if (m->path == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "export");
    return (int)list->count++;
}

/* Fills the list after the disk (0) and image (1); `layered` are the
 * session's checkpoints held by layers. */
static int collect_layers(session_ctx_t *s, member_list_t *list, const char *disk,
                          const blink_checkpoint_row_t *layered, size_t layered_count,
                          blink_error_t *err)
{
    cleanup_free char *image = realpath(list->items[1].path, NULL);
    char *backing = NULL;
    uint64_t size;
    if (image == NULL)
        return blink_fail(err, BLINK_E_IO, errno, "find image `%s`", list->items[1].path);
    if (layers_read_header(disk, &backing, &size, err) < 0)
        return -1;
    list->items[0].backing = backing ? add_layer(list, backing, image, 0, err) : -2;
    free(backing);
    if (list->items[0].backing == -2)
        return blink_fail(err, BLINK_E_INVALID, 0, "the disk of `%s` has no image", s->name);
    if (list->items[0].backing < 0)
        return -1;
    for (size_t i = 0; i < layered_count; i++) {
        cleanup_free char *path = blink_strdup_printf("%s/%s", s->blink->home, layered[i].layer);
        if (path == NULL || add_layer(list, path, image, 0, err) < 0)
            return -1;
    }
    return 0;
}

static bool holds_checkpoint_of(const member_t *m, const blink_checkpoint_row_t *layered,
                                size_t count)
{
    for (size_t i = 0; i < count; i++) {
        const char *base = strrchr(layered[i].layer, '/');
        if (base && strcmp(base, strrchr(m->name, '/')) == 0)
            return true;
    }
    return false;
}

/* A layer this session only stands on may hold snapshots of the session it
 * was frozen from, memory included: those are not this session's to give
 * away. Such a layer goes out as a copy of its current content alone
 * (`qemu-img convert -B`: only the layer's own clusters, no snapshots). */
static int strip_foreign_snapshots(session_ctx_t *s, member_t *m, const member_t *under,
                                   const blink_checkpoint_row_t *layered, size_t count,
                                   blink_error_t *err)
{
    if (holds_checkpoint_of(m, layered, count))
        return 0;
    cleanup_free char *tool = blink_find_program("qemu-img");
    cleanup_free char *text = NULL;
    if (tool == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img: install the Debian package `qemu-utils`");
    char *info[] = {tool, "info", "-U", "--output=json", "-f", "qcow2", m->path, NULL};
    if (blink_run_program_output(info, &text, 16 << 20, err) < 0)
        return -1;
    json_t *parsed = json_loads(text, 0, NULL);
    size_t snapshots = json_array_size(json_object_get(parsed, "snapshots"));
    json_decref(parsed);
    if (snapshots == 0)
        return 0;

    char *copy = blink_strdup_printf("%s/export-%d-%s-%s", s->blink->tmp_dir, (int)getpid(),
                                     s->name, strrchr(m->name, '/') + 1);
    if (copy == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "export");
    unlink(copy);
    char *convert[] = {tool, "convert", "-U", "-f", "qcow2", "-O", "qcow2", "-B", under->path,
                       "-F", "qcow2", m->path, copy, NULL};
    if (blink_run_program(convert, err) < 0) {
        unlink(copy);
        free(copy);
        return -1;
    }
    free(m->path);
    m->path = copy;
    m->is_copy = true;
    return 0;
}

static json_t *build_manifest(const blink_session_row_t *row, const member_t *members, size_t count,
                              const blink_checkpoint_info_t *checkpoints, size_t checkpoint_count,
                              const blink_checkpoint_row_t *layered, size_t layered_count)
{
    json_t *list = json_array();
    for (size_t i = 0; i < count; i++)
        json_array_append_new(list,
                              json_pack("{s:s, s:I, s:s}", "path", members[i].name, "size",
                                        (json_int_t)members[i].size, "sha256", members[i].sha256));
    json_t *snaps = json_array();
    for (size_t i = 0; i < checkpoint_count; i++) {
        json_t *snap = json_pack("{s:s, s:I, s:I, s:b}", "name", checkpoints[i].name, "created_at",
                                 (json_int_t)checkpoints[i].created_at, "size_bytes",
                                 (json_int_t)checkpoints[i].size_bytes, "memory",
                                 checkpoints[i].memory);
        /* Where a layer holds it, the archive name of that layer. */
        for (size_t j = 0; snap && j < layered_count; j++) {
            cleanup_free char *real = strcmp(layered[j].name, checkpoints[i].name) == 0
                                          ? blink_strdup_printf("%s", layered[j].layer)
                                          : NULL;
            const char *base = real ? strrchr(real, '/') : NULL;
            for (size_t k = 2; base && k < count; k++)
                if (strcmp(strrchr(members[k].name, '/'), base) == 0)
                    json_object_set_new(snap, "layer", json_string(members[k].name));
        }
        json_array_append_new(snaps, snap);
    }
    json_t *layers = json_array();
    for (size_t i = 2; i < count; i++)
        json_array_append_new(layers, json_pack("{s:s, s:s}", "path", members[i].name, "backing",
                                                members[members[i].backing].name));
    int version = count > 2 ? BOXLITE_FORMAT_VERSION : 1;
    json_t *manifest = json_pack(
        "{s:s, s:i, s:s, s:s, s:s, s:{s:i, s:i, s:b}, s:o, s:o, s:I, s:I}", "format",
                     BOXLITE_FORMAT, "format_version", version, "blink_version",
                     BLINK_VERSION_STRING, "name", row->name, "image", row->image, "resources",
                     "memory_mib", (int)row->memory_mib, "cpus", (int)row->cpus, "warm", row->warm,
                     "checkpoints", snaps, "members", list, "created_at",
                     (json_int_t)row->created_at, "exported_at",
                     (json_int_t)(blink_wall_ns() / 1000000));
    if (manifest && count > 2) {
        json_object_set_new(manifest, "layers", layers);
        json_object_set_new(manifest, "disk_backing",
                            json_string(members[members[0].backing].name));
    } else {
        json_decref(layers);
    }
    return manifest;
}

static int write_entry_header(struct archive *a, const char *name, uint64_t size,
                              blink_error_t *err)
{
    struct archive_entry *entry = archive_entry_new();
    if (entry == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "archive entry");
    archive_entry_set_pathname(entry, name);
    archive_entry_set_filetype(entry, AE_IFREG);
    archive_entry_set_perm(entry, 0600);
    archive_entry_set_size(entry, (la_int64_t)size);
    archive_entry_set_mtime(entry, time(NULL), 0);
    int rc = archive_write_header(a, entry);
    archive_entry_free(entry);
    if (rc != ARCHIVE_OK)
        return blink_fail(err, BLINK_E_IO, 0, "write archive: %s", archive_error_string(a));
    return 0;
}

static int write_member(struct archive *a, const member_t *m, char *buf, uint64_t *done,
                        uint64_t total, const blink_transfer_options_t *o, blink_error_t *err)
{
    if (write_entry_header(a, m->name, m->size, err) < 0)
        return -1;
    cleanup_close int fd = open(m->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return blink_fail(err, BLINK_E_IO, errno, "read `%s`", m->path);

    uint64_t left = m->size;
    while (left > 0) {
        ssize_t n = read(fd, buf, left < COPY_CHUNK ? left : COPY_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return blink_fail(err, BLINK_E_IO, n < 0 ? errno : 0,
                              "read `%s`: it changed during the export", m->path);
        if (archive_write_data(a, buf, (size_t)n) != n)
            return blink_fail(err, BLINK_E_IO, 0, "write archive: %s", archive_error_string(a));
        left -= (uint64_t)n;
        *done += (uint64_t)n;
        if (o->on_progress)
            o->on_progress(*done, total, o->userdata);
    }
    return 0;
}

static int write_archive(const char *target, const json_t *manifest, const member_t *members,
                         size_t count, const blink_transfer_options_t *o, blink_error_t *err)
{
    char *text = json_dumps(manifest, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    cleanup_free char *buf = malloc(COPY_CHUNK);
    struct archive *a = archive_write_new();
    int rc = -1;
    if (text == NULL || buf == NULL || a == NULL) {
        blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "write archive");
        goto out;
    }
    /* Level 1: as fast as `zstd -1`; disks compress well even so. */
    if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
        archive_write_add_filter_zstd(a) != ARCHIVE_OK ||
        archive_write_set_filter_option(a, "zstd", "compression-level", "1") != ARCHIVE_OK ||
        archive_write_open_filename(a, target) != ARCHIVE_OK) {
        blink_fail(err, BLINK_E_IO, archive_errno(a), "create archive `%s`: %s", target,
                   archive_error_string(a));
        goto out;
    }

    size_t text_len = strlen(text);
    uint64_t total = 0, done = 0;
    for (size_t i = 0; i < count; i++)
        total += members[i].size;
    if (write_entry_header(a, BOXLITE_MANIFEST, text_len, err) < 0)
        goto out;
    if (archive_write_data(a, text, text_len) != (la_ssize_t)text_len) {
        blink_fail(err, BLINK_E_IO, 0, "write archive: %s", archive_error_string(a));
        goto out;
    }
    for (size_t i = 0; i < count; i++)
        if (write_member(a, &members[i], buf, &done, total, o, err) < 0)
            goto out;
    if (archive_write_close(a) != ARCHIVE_OK) {
        blink_fail(err, BLINK_E_IO, 0, "finish archive: %s", archive_error_string(a));
        goto out;
    }
    rc = 0;
out:
    if (a)
        archive_write_free(a);
    free(text);
    return rc;
}

/* A consistent copy of the session disk: from the shim (the VM pauses for
 * the copy) when it runs; the disk itself, under the lock, when stopped. */
static char *stable_disk(session_ctx_t *s, blink_session_row_t *row, bool *is_copy,
                         blink_error_t *err)
{
    *is_copy = false;
    if (!session_is_running(s, row))
        return strdup(s->disk);

    char *copy =
        blink_strdup_printf("%s/export-%d-%s.qcow2", s->blink->tmp_dir, (int)getpid(), s->name);
    if (copy == NULL)
        return blink_fail_null(err, BLINK_E_NO_MEMORY, ENOMEM, "export");
    unlink(copy);

    int rc = blink_shim_request(s->socket, BLIN_SHIM_EXPORT, copy, false, 0, err);
    if (rc < 0) {
        blink_wrap(err, "copy the running disk");
        unlink(copy);
        free(copy);
        return NULL;
    }
    *is_copy = true;
    return copy;
}

static char *default_output(blink_t *blink, const char *name, blink_error_t *err)
{
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
    cleanup_free char *dir = blink_strdup_printf("%s/exports", blink->home);
    if (dir == NULL || blink_mkdir_p(dir, 0700, err) < 0)
        return NULL;
    return blink_strdup_printf("%s/%s-%s.boxlite", dir, name, stamp);
}

int blink_session_export(blink_t *blink, const char *name, const blink_transfer_options_t *options,
                         char **path, uint64_t *size, blink_error_t *err)
{
    blink_transfer_options_t defaults = {.struct_size = sizeof(defaults)};
    const blink_transfer_options_t *o = options ? options : &defaults;
    session_ctx_t s;
    blink_session_row_t row;
    member_list_t list = {.count = 2};
    member_t *members = list.items;
    blink_checkpoint_info_t *checkpoints = NULL;
    blink_checkpoint_row_t *layered = NULL;
    size_t checkpoint_count = 0, layered_count = 0;
    bool disk_is_copy = false;
    char *output = NULL, *partial = NULL;
    json_t *manifest = NULL;
    int rc = -1;

    *path = NULL;
    if (session_ctx_open(blink, name, &s, err) < 0 || session_ctx_lock(&s, err) < 0 ||
        blink_catalog_session_get(s.catalog, name, &row, err) < 0)
        goto out;
    output = o->output ? strdup(o->output) : default_output(blink, name, err);
    if (output) {
        cleanup_free char *out_dir = strdup(output);
        char *slash = out_dir ? strrchr(out_dir, '/') : NULL;
        if (slash)
            *slash = '\0';
        /* Leftovers of killed exports: archives not yet renamed, disk copies. */
        blink_reap_orphans(slash ? out_dir : ".", ".partial-", false);
        blink_reap_orphans(blink->tmp_dir, "export-", true);
    }
    partial = output ? blink_strdup_printf("%s.partial-%d", output, (int)getpid()) : NULL;
    if (partial == NULL) {
        blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "export");
        goto out;
    }

    if (blink_session_checkpoints(blink, name, &checkpoints, &checkpoint_count, err) < 0 ||
        (members[0].path = stable_disk(&s, &row, &disk_is_copy, err)) == NULL ||
        (members[1].path = blink_image_disk(blink, row.image, err)) == NULL ||
        blink_catalog_checkpoint_layered(s.catalog, name, &layered, &layered_count, err) < 0 ||
        collect_layers(&s, &list, members[0].path, layered, layered_count, err) < 0)
        goto out;
    snprintf(members[0].name, sizeof(members[0].name), "%s", BOXLITE_DISK);
    snprintf(members[1].name, sizeof(members[1].name), "%s", BOXLITE_IMAGE);
    members[1].backing = -1;
    /* Top down: a layer comes after the one under it in the list, and its
     * copy names that one's real file as its backing. */
    for (size_t i = list.count; i-- > 2;)
        if (strip_foreign_snapshots(&s, &members[i], &members[members[i].backing], layered,
                                    layered_count, err) < 0)
            goto out;

    /* The copy of a running disk is ours alone: let the session go on. */
    if (disk_is_copy) {
        close(s.lock_fd);
        s.lock_fd = -1;
    }

    /* 1. sizes and checksums, so that the manifest can lead the archive */
    uint64_t total = 0, done = 0;
    for (size_t i = 0; i < list.count; i++) {
        struct stat st;
        if (stat(members[i].path, &st) < 0) {
            blink_fail(err, BLINK_E_IO, errno, "stat `%s`", members[i].path);
            goto out;
        }
        members[i].size = (uint64_t)st.st_size;
        total += members[i].size;
    }
    for (size_t i = 0; i < list.count; i++)
        if (blink_sha256_file(members[i].path, members[i].sha256, NULL, NULL, &done, total, err) <
            0)
            goto out;

    /* 2. the archive, under a temporary name until it is whole */
    manifest = build_manifest(&row, members, list.count, checkpoints, checkpoint_count, layered,
                              layered_count);
    if (manifest == NULL) {
        blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "build manifest");
        goto out;
    }
    if (write_archive(partial, manifest, members, list.count, o, err) < 0)
        goto out;
    struct stat st;
    if (stat(partial, &st) < 0 || rename(partial, output) < 0) {
        blink_fail(err, BLINK_E_IO, errno, "finish archive `%s`", output);
        goto out;
    }
    *size = (uint64_t)st.st_size;
    *path = output;
    output = NULL;
    rc = 0;
out:
    if (rc < 0 && partial)
        unlink(partial);
    if (disk_is_copy && members[0].path)
        unlink(members[0].path);
    for (size_t i = 0; i < list.count; i++) {
        if (members[i].is_copy)
            unlink(members[i].path);
        free(members[i].path);
    }
    free(checkpoints);
    free(layered);
    json_decref(manifest);
    free(output);
    free(partial);
    session_ctx_close(&s);
    if (rc < 0)
        blink_wrap(err, "export `%s`", name ? name : "");
    return rc;
}
