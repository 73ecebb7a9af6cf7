/* Importing a .boxlite archive. The archive is hostile until proven
 * otherwise: the manifest must come first and be small; every other member
 * must be one the manifest names, a regular file of the announced size (and
 * under a cap), and match its SHA-256. Members are streamed into a staging
 * folder under BLINK_HOME/tmp; only when everything checks out do they move
 * into place, and the catalog row (the commit point) is written last. */
#include "boxlite.h"
#include "layers.h"
#include "session.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#define READ_CHUNK (1u << 20)

typedef struct expected {
    char name[64];
    uint64_t size;
    char sha256[65];
    bool seen;
    char *staged;  /* path in the staging folder */
    int backing;   /* index of the member it stands on (layers and disk) */
    char *placed;  /* layers: where it went under BLINK_HOME/layers */
} expected_t;

typedef struct import {
    blink_t *blink;
    const blink_transfer_options_t *options;
    char *staging;
    json_t *manifest;
    /* BOXLITE_DISK, BOXLITE_IMAGE, then the layers of a version 2 archive */
    expected_t members[2 + BOXLITE_LAYERS_MAX];
    size_t count;
    uint64_t total, done;
} import_t;

/* A layer's archive name: layers/ and 16 hex digits, .qcow2. */
static bool layer_name_valid(const char *name)
{
    size_t prefix = strlen(BOXLITE_LAYER_PREFIX);
    return strncmp(name, BOXLITE_LAYER_PREFIX, prefix) == 0 && strlen(name) == prefix + 22 &&
           strspn(name + prefix, "0123456789abcdef") == 16 &&
           strcmp(name + prefix + 16, ".qcow2") == 0;
}

static int member_index(const import_t *im, const char *name)
{
    for (size_t i = 0; name && i < im->count; i++)
        if (strcmp(im->members[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Version 2: every layer's backing, and the disk's, is the image or another
 * layer, and following them from any layer reaches the image. */
static int read_layer_graph(import_t *im, blink_error_t *err)
{
    json_t *layers = json_object_get(im->manifest, "layers");
    if (json_array_size(layers) != im->count - 2)
        return blink_fail(err, BLINK_E_INVALID, 0, "manifest's layers and members disagree");
    json_t *layer;
    size_t i;
    json_array_foreach(layers, i, layer)
    {
        int self = member_index(im, json_string_value(json_object_get(layer, "path")));
        int under = member_index(im, json_string_value(json_object_get(layer, "backing")));
        if (self < 2 || under < 1 || under == self || im->members[self].backing != 0)
            return blink_fail(err, BLINK_E_INVALID, 0, "manifest layer %zu is malformed", i + 1);
        im->members[self].backing = under;
    }
    int disk_under = member_index(im, json_string_value(json_object_get(im->manifest,
                                                                        "disk_backing")));
    if (disk_under < 1)
        return blink_fail(err, BLINK_E_INVALID, 0, "manifest names no backing for the disk");
    im->members[0].backing = disk_under;
    for (size_t k = 2; k < im->count; k++) {
        int at = (int)k;
        for (size_t steps = 0; at != 1; steps++) {
            if (steps > im->count)
                return blink_fail(err, BLINK_E_INVALID, 0, "manifest's layers form a loop");
            if (steps >= LAYERS_MAX_FORK_DEPTH)
                return blink_fail(err, BLINK_E_INVALID, 0,
                                  "manifest's layers stand more than %d deep",
                                  LAYERS_MAX_FORK_DEPTH);
            at = im->members[at].backing;
        }
    }
    return 0;
}

static int read_manifest(import_t *im, struct archive *a, blink_error_t *err)
{
    struct archive_entry *entry;
    int rc = archive_read_next_header(a, &entry);
    if (rc != ARCHIVE_OK)
        return blink_fail(err, BLINK_E_INVALID, 0, "not a readable .boxlite archive: %s",
                          archive_error_string(a) ? archive_error_string(a) : "empty");
    if (strcmp(archive_entry_pathname(entry), BOXLITE_MANIFEST) != 0 ||
        archive_entry_filetype(entry) != AE_IFREG)
        return blink_fail(err, BLINK_E_INVALID, 0, "the first member is `%.100s`, not %s",
                          archive_entry_pathname(entry), BOXLITE_MANIFEST);
    la_int64_t size = archive_entry_size(entry);
    if (size <= 0 || size > BOXLITE_MANIFEST_MAX)
        return blink_fail(err, BLINK_E_INVALID, 0, "manifest of %lld bytes", (long long)size);

    cleanup_free char *text = malloc((size_t)size);
    if (text == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "read manifest");
    if (archive_read_data(a, text, (size_t)size) != size)
        return blink_fail(err, BLINK_E_INVALID, 0, "manifest is cut short");

    json_error_t jerr;
    im->manifest = json_loadb(text, (size_t)size, 0, &jerr);
    if (!json_is_object(im->manifest))
        return blink_fail(err, BLINK_E_INVALID, 0, "manifest is not a JSON object: %s", jerr.text);
    const char *format = json_string_value(json_object_get(im->manifest, "format"));
    json_int_t version = json_integer_value(json_object_get(im->manifest, "format_version"));
    if (format == NULL || strcmp(format, BOXLITE_FORMAT) != 0)
        return blink_fail(err, BLINK_E_INVALID, 0, "not a blink session archive");
    if (version < 1 || version > BOXLITE_FORMAT_VERSION)
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "archive format version %lld; this blink reads versions 1-%d",
                          (long long)version, BOXLITE_FORMAT_VERSION);

    /* The manifest must list exactly our members, each once: the disk, the
     * image and (version 2) layers with names of the one allowed form. */
    json_t *list = json_object_get(im->manifest, "members");
    size_t listed = json_array_size(list);
    size_t max = version == 1 ? 2 : 2 + BOXLITE_LAYERS_MAX;
    if (listed < 2 || listed > max)
        return blink_fail(err, BLINK_E_INVALID, 0, "manifest lists %zu members, expected 2%s",
                          listed, version == 1 ? "" : " or more (at most 66)");
    snprintf(im->members[0].name, sizeof(im->members[0].name), "%s", BOXLITE_DISK);
    snprintf(im->members[1].name, sizeof(im->members[1].name), "%s", BOXLITE_IMAGE);
    im->count = 2;
    for (size_t i = 0; i < listed; i++) {
        json_t *m = json_array_get(list, i);
        const char *path = json_string_value(json_object_get(m, "path"));
        if (path && layer_name_valid(path) && member_index(im, path) < 0) {
            snprintf(im->members[im->count].name, sizeof(im->members[0].name), "%s", path);
            im->count++;
        }
    }
    if (im->count != listed)
        return blink_fail(err, BLINK_E_INVALID, 0, "manifest lists a member of no known kind");
    for (size_t i = 0; i < listed; i++) {
        json_t *m = json_array_get(list, i);
        const char *path = json_string_value(json_object_get(m, "path"));
        const char *sha = json_string_value(json_object_get(m, "sha256"));
        json_int_t msize = json_integer_value(json_object_get(m, "size"));
        int index = member_index(im, path);
        expected_t *e = index >= 0 ? &im->members[index] : NULL;
        if (e == NULL || e->sha256[0] || sha == NULL || strlen(sha) != 64 ||
            strspn(sha, "0123456789abcdef") != 64 || msize <= 0 ||
            (uint64_t)msize > BOXLITE_MEMBER_MAX)
            return blink_fail(err, BLINK_E_INVALID, 0, "manifest member %zu is malformed", i + 1);
        e->size = (uint64_t)msize;
        memcpy(e->sha256, sha, 65);
        im->total += e->size;
    }
    im->members[0].backing = 1;
    return im->count > 2 ? read_layer_graph(im, err) : 0;
}

/* Writes `len` bytes at the file offset, leaving holes where whole blocks
 * are zero: a member of zeros (compressed to nothing, a cheap way to fill a
 * disk) takes no space. */
static int write_sparse(int fd, const char *data, size_t len)
{
    enum { BLOCK = 4096 };
    static const char zeros[BLOCK];
    while (len > 0) {
        size_t n = len < BLOCK ? len : BLOCK;
        if (n == BLOCK && memcmp(data, zeros, BLOCK) == 0) {
            if (lseek(fd, BLOCK, SEEK_CUR) < 0)
                return -1;
        } else {
            ssize_t w = write(fd, data, n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return -1;
            n = (size_t)w;
        }
        data += n;
        len -= n;
    }
    return 0;
}

/* Streams one member into the staging folder, checking size and digest. */
static int stage_member(import_t *im, struct archive *a, struct archive_entry *entry,
                        blink_error_t *err)
{
    const char *path = archive_entry_pathname(entry);
    int index = member_index(im, path);
    expected_t *e = index >= 0 ? &im->members[index] : NULL;
    if (e == NULL)
        return blink_fail(err, BLINK_E_INVALID, 0, "unexpected member `%.100s`",
                          path ? path : "(no name)");
    if (e->seen)
        return blink_fail(err, BLINK_E_INVALID, 0, "member `%s` appears twice", e->name);
    if (archive_entry_filetype(entry) != AE_IFREG || archive_entry_hardlink(entry) != NULL)
        return blink_fail(err, BLINK_E_INVALID, 0, "member `%s` is not a regular file", e->name);
    if (!archive_entry_size_is_set(entry) || (uint64_t)archive_entry_size(entry) != e->size)
        return blink_fail(err, BLINK_E_INVALID, 0, "member `%s` is not the size the manifest says",
                          e->name);
    e->seen = true;

    e->staged = blink_strdup_printf("%s/member-%d", im->staging, index);
    if (e->staged == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "stage member");
    cleanup_close int fd = open(e->staged, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    cleanup_free char *buf = malloc(READ_CHUNK);
    blink_sha256_t *h = blink_sha256_new();
    char digest[65];
    if (fd < 0 || buf == NULL || h == NULL) {
        int e2 = errno;
        if (h)
            blink_sha256_final(h, digest);
        return blink_fail(err, BLINK_E_IO, e2, "stage member `%s`", e->name);
    }

    uint64_t got = 0;
    for (;;) {
        la_ssize_t n = archive_read_data(a, buf, READ_CHUNK);
        if (n < 0) {
            blink_sha256_final(h, digest);
            return blink_fail(err, BLINK_E_INVALID, 0, "member `%s`: %s (truncated archive?)",
                              e->name, archive_error_string(a));
        }
        if (n == 0)
            break;
        got += (uint64_t)n;
        if (got > e->size) {
            blink_sha256_final(h, digest);
            return blink_fail(err, BLINK_E_INVALID, 0, "member `%s` is longer than announced",
                              e->name);
        }
        blink_sha256_update(h, buf, (size_t)n);
        if (write_sparse(fd, buf, (size_t)n) < 0) {
            int e2 = errno;
            blink_sha256_final(h, digest);
            return blink_fail(err, BLINK_E_IO, e2, "stage member `%s`", e->name);
        }
        im->done += (uint64_t)n;
        if (im->options->on_progress)
            im->options->on_progress(im->done, im->total, im->options->userdata);
    }
    blink_sha256_final(h, digest);
    if (got != e->size)
        return blink_fail(err, BLINK_E_INVALID, 0, "member `%s` is cut short", e->name);
    if (ftruncate(fd, (off_t)got) < 0) /* a trailing hole */
        return blink_fail(err, BLINK_E_IO, errno, "stage member `%s`", e->name);
    if (strcmp(digest, e->sha256) != 0)
        return blink_fail(err, BLINK_E_INVALID, 0, "member `%s` fails its SHA-256 check", e->name);
    if (fsync(fd) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "stage member `%s`", e->name);
    return 0;
}

/* What the manifest announces must fit where it is staged (holes aside). */
static int check_space(import_t *im, blink_error_t *err)
{
    struct statvfs fs;
    if (statvfs(im->staging, &fs) < 0)
        return blink_fail(err, BLINK_E_IO, errno, "check free space in `%s`", im->staging);
    uint64_t free_bytes = (uint64_t)fs.f_bavail * fs.f_frsize;
    if (im->total > free_bytes)
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "the archive announces %llu MiB of members; %llu MiB are free",
                          (unsigned long long)(im->total >> 20),
                          (unsigned long long)(free_bytes >> 20));
    return 0;
}

static int read_members(import_t *im, const char *path, blink_error_t *err)
{
    struct archive *a = archive_read_new();
    int rc = -1;
    if (a == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "read archive");
    archive_read_support_filter_zstd(a);
    archive_read_support_format_tar(a);
    if (archive_read_open_filename(a, path, READ_CHUNK) != ARCHIVE_OK) {
        blink_fail(err, archive_errno(a) == ENOENT ? BLINK_E_NOT_FOUND : BLINK_E_INVALID,
                   archive_errno(a), "open archive `%s`: %s", path, archive_error_string(a));
        goto out;
    }
    if (read_manifest(im, a, err) < 0 || check_space(im, err) < 0)
        goto out;
    for (;;) {
        struct archive_entry *entry;
        int next = archive_read_next_header(a, &entry);
        if (next == ARCHIVE_EOF)
            break;
        if (next != ARCHIVE_OK) {
            blink_fail(err, BLINK_E_INVALID, 0, "read archive: %s (truncated archive?)",
                       archive_error_string(a));
            goto out;
        }
        if (stage_member(im, a, entry, err) < 0)
            goto out;
    }
    for (size_t i = 0; i < im->count; i++)
        if (!im->members[i].seen) {
            blink_fail(err, BLINK_E_INVALID, 0, "archive lacks `%s`", im->members[i].name);
            goto out;
        }
    rc = 0;
out:
    archive_read_free(a);
    return rc;
}

/* The image the session stands on: an existing local image with the same
 * name and digest, or the archive's, installed under a name of its own. */
static char *install_image(import_t *im, blink_error_t *err)
{
    const char *name = json_string_value(json_object_get(im->manifest, "image"));
    if (name == NULL || !blink_image_name_valid(name))
        return blink_fail_null(err, BLINK_E_INVALID, 0, "manifest names no valid image");
    const expected_t *image = &im->members[1];

    char *local = blink_image_disk(im->blink, name, NULL);
    if (local) {
        char digest[65];
        uint64_t done = 0;
        bool same = blink_sha256_file(local, digest, NULL, NULL, &done, 0, NULL) == 0 &&
                    strcmp(digest, image->sha256) == 0;
        free(local);
        if (same)
            return strdup(name);
    }

    /* Not here, or different: install the archive's as NAME-<digest prefix>. */
    char *installed = blink_strdup_printf("%.40s-%.12s", name, image->sha256);
    cleanup_free char *dir = blink_strdup_printf("%s/images/%s", im->blink->home, installed);
    cleanup_free char *disk = blink_strdup_printf("%s/disk.qcow2", dir);
    if (installed == NULL || dir == NULL || disk == NULL) {
        free(installed);
        return blink_fail_null(err, BLINK_E_NO_MEMORY, ENOMEM, "install image");
    }
    if (access(disk, R_OK) == 0)
        return installed; /* an earlier import brought the same image */
    /* Checked before it lands among the images, where it would stay. */
    if (blink_qcow2_check(image->staged, NULL, err) < 0) {
        free(installed);
        return NULL;
    }

    cleanup_free char *staged_dir = blink_strdup_printf("%s/image-dir", im->staging);
    cleanup_free char *staged_disk = blink_strdup_printf("%s/disk.qcow2", staged_dir);
    cleanup_free char *parent = blink_strdup_printf("%s/images", im->blink->home);
    if (staged_dir == NULL || staged_disk == NULL || parent == NULL ||
        blink_mkdir_p(staged_dir, 0755, err) < 0 || blink_mkdir_p(parent, 0755, err) < 0 ||
        rename(image->staged, staged_disk) < 0 || chmod(staged_disk, 0444) < 0 ||
        rename(staged_dir, dir) < 0) {
        blink_fail(err, BLINK_E_IO, errno, "install image `%s`", installed);
        free(installed);
        return NULL;
    }
    return installed;
}

static int check_qcow2_header(const char *path, bool backing_allowed, blink_error_t *err);

static int rebase(const char *disk, const char *backing, blink_error_t *err)
{
    cleanup_free char *tool = blink_find_program("qemu-img");
    if (tool == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img: install the Debian package `qemu-utils`");
    /* -u rewrites only the header: the archive's backing path is replaced
     * before QEMU ever follows it. */
    char *argv[] = {tool, "rebase",        "-u",         "-f", "qcow2", "-F", "qcow2",
                    "-b", (char *)backing, (char *)disk, NULL};
    return blink_run_program(argv, err);
}

/* Checks a staged qcow2 file and points it at `backing` (our path). */
static int adopt_disk_file(const char *staged, const char *backing, blink_error_t *err)
{
    if (check_qcow2_header(staged, true, err) < 0 || rebase(staged, backing, err) < 0 ||
        blink_qcow2_check(staged, backing, err) < 0)
        return -1;
    return 0;
}

/* Moves the layers into BLINK_HOME/layers under fresh names, bottom first,
 * each rebased onto where the one under it went. Layers lock held. */
static int place_layers(import_t *im, const char *image, blink_error_t *err)
{
    cleanup_free char *dir = blink_strdup_printf("%s/layers", im->blink->home);
    if (dir == NULL || blink_mkdir_p(dir, 0700, err) < 0)
        return -1;
    for (bool progress = true; progress;) {
        progress = false;
        for (size_t i = 2; i < im->count; i++) {
            expected_t *e = &im->members[i];
            const expected_t *under = &im->members[e->backing];
            if (e->placed || (e->backing != 1 && under->placed == NULL))
                continue;
            char *target = layers_new_path(dir, err);
            if (target == NULL ||
                adopt_disk_file(e->staged, e->backing == 1 ? image : under->placed, err) < 0) {
                free(target);
                return -1;
            }
            if (chmod(e->staged, 0400) < 0 || rename(e->staged, target) < 0) {
                free(target);
                return blink_fail(err, BLINK_E_IO, errno, "place layer `%s`", e->name);
            }
            e->placed = target;
            progress = true;
        }
    }
    return 0;
}

static void unplace_layers(import_t *im)
{
    for (size_t i = 2; i < im->count; i++)
        if (im->members[i].placed)
            unlink(im->members[i].placed);
}

static void record_checkpoints(import_t *im, session_ctx_t *s, const char *name)
{
    json_t *snap;
    size_t i;
    json_array_foreach(json_object_get(im->manifest, "checkpoints"), i, snap)
    {
        const char *snap_name = json_string_value(json_object_get(snap, "name"));
        if (snap_name == NULL || !blink_name_valid(snap_name))
            continue;
        blink_checkpoint_row_t meta = {
            .created_at = json_integer_value(json_object_get(snap, "created_at")),
            .size_bytes = json_integer_value(json_object_get(snap, "size_bytes")),
            .memory = json_is_true(json_object_get(snap, "memory")),
        };
        snprintf(meta.session, sizeof(meta.session), "%s", name);
        snprintf(meta.name, sizeof(meta.name), "%s", snap_name);
        int layer = member_index(im, json_string_value(json_object_get(snap, "layer")));
        if (layer >= 2 && im->members[layer].placed)
            snprintf(meta.layer, sizeof(meta.layer), "%s",
                     layers_relative(im->blink, im->members[layer].placed));
        else if (layer >= 0)
            continue; /* names no layer of ours */
        blink_error_t ignored;
        blink_catalog_checkpoint_put(s->catalog, &meta, &ignored);
    }
}

static int commit(import_t *im, const char *name, blink_error_t *err)
{
    session_ctx_t s;
    blink_session_row_t row;
    int rc = -1, layers_fd = -1;
    cleanup_free char *image = NULL;
    cleanup_free char *base = NULL;
    cleanup_free char *real_base = NULL;

    if (session_ctx_open(im->blink, name, &s, err) < 0 || session_ctx_lock(&s, err) < 0)
        goto out;
    if (blink_catalog_session_get(s.catalog, name, &row, NULL) == 0) {
        blink_fail(err, BLINK_E_EXISTS, 0, "a session `%s` exists: import with --name NEW", name);
        goto out;
    }
    if ((image = install_image(im, err)) == NULL ||
        (base = blink_image_disk(im->blink, image, err)) == NULL)
        goto out;
    real_base = realpath(base, NULL);
    if (real_base == NULL || blink_qcow2_check(real_base, NULL, err) < 0)
        goto out;
    /* Layers in place are unused until the row exists: keep collection off. */
    if (im->count > 2 && ((layers_fd = layers_lock(im->blink, err)) < 0 ||
                          place_layers(im, real_base, err) < 0))
        goto fail_files;
    int under = im->members[0].backing;
    if (adopt_disk_file(im->members[0].staged, under == 1 ? real_base : im->members[under].placed,
                        err) < 0)
        goto fail_files;

    blink_remove_tree(s.dir); /* debris without a row */
    if (blink_mkdir_p(s.dir, 0700, err) < 0 || rename(im->members[0].staged, s.disk) < 0) {
        blink_fail(err, BLINK_E_IO, errno, "place disk of `%s`", name);
        goto fail_files;
    }

    json_t *resources = json_object_get(im->manifest, "resources");
    json_int_t memory = json_integer_value(json_object_get(resources, "memory_mib"));
    json_int_t cpus = json_integer_value(json_object_get(resources, "cpus"));
    memset(&row, 0, sizeof(row));
    snprintf(row.name, sizeof(row.name), "%s", name);
    snprintf(row.image, sizeof(row.image), "%s", image);
    snprintf(row.state, sizeof(row.state), "%s", BLINK_STATE_STOPPED);
    row.warm = json_is_true(json_object_get(resources, "warm"));
    row.memory_mib = memory >= 128 && memory <= 65536 ? (unsigned)memory : 512;
    row.cpus = cpus >= 1 && cpus <= 64 ? (unsigned)cpus : 1;
    if (blink_catalog_session_insert(s.catalog, &row, err) < 0)
        goto fail_files;

    /* Checkpoint metadata; the snapshots themselves came inside the disks. */
    record_checkpoints(im, &s, name);
    rc = 0;
    goto out;

fail_files:
    unplace_layers(im);
    blink_remove_tree(s.dir);
out:
    if (layers_fd >= 0)
        close(layers_fd);
    session_ctx_close(&s);
    return rc;
}

int blink_session_import(blink_t *blink, const char *archive,
                         const blink_transfer_options_t *options, char **name_out,
                         blink_error_t *err)
{
    blink_transfer_options_t defaults = {.struct_size = sizeof(defaults)};
    import_t im = {.blink = blink, .options = options ? options : &defaults};
    int rc = -1;

    *name_out = NULL;
    if (im.options->name && !blink_name_valid(im.options->name))
        return blink_fail(err, BLINK_E_INVALID, 0,
                          "session name `%.40s`: use 3-32 of "
                          "[A-Za-z0-9_-]",
                          im.options->name);

    blink_reap_orphans(blink->tmp_dir, "import-", true);
    im.staging = blink_strdup_printf("%s/import-%d-XXXXXX", blink->tmp_dir, (int)getpid());
    if (im.staging == NULL || mkdtemp(im.staging) == NULL) {
        blink_fail(err, BLINK_E_IO, errno, "create import staging folder");
        goto out;
    }
    if (read_members(&im, archive, err) < 0)
        goto out;

    const char *name = im.options->name ? im.options->name
                                        : json_string_value(json_object_get(im.manifest, "name"));
    if (name == NULL || !blink_name_valid(name)) {
        blink_fail(err, BLINK_E_INVALID, 0, "the archive's session name is not valid: give --name");
        goto out;
    }
    if (commit(&im, name, err) < 0)
        goto out;
    *name_out = strdup(name);
    rc = 0;
out:
    if (im.staging)
        blink_remove_tree(im.staging);
    free(im.staging);
    for (size_t i = 0; i < im.count; i++) {
        free(im.members[i].staged);
        free(im.members[i].placed);
    }
    json_decref(im.manifest);
    if (rc < 0)
        blink_wrap(err, "import `%s`", archive ? archive : "");
    return rc;
}

/* Reads the qcow2 header ourselves before any tool opens the file, so a
 * hostile image cannot make qemu-img follow an external data file (a FIFO,
 * a device) or a backing file we did not choose. Layout: QEMU's
 * docs/interop/qcow2.txt, "Header" (all fields big-endian). */
static int check_qcow2_header(const char *path, bool backing_allowed, blink_error_t *err)
{
    uint8_t h[104];
    cleanup_close int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return blink_fail(err, BLINK_E_IO, errno, "open `%s`", path);
    if (read(fd, h, sizeof(h)) != (ssize_t)sizeof(h))
        return blink_fail(err, BLINK_E_INVALID, 0, "`%s` is not a qcow2 disk", path);

    uint64_t backing_offset = 0, incompatible = 0;
    for (int i = 0; i < 8; i++) {
        backing_offset = (backing_offset << 8) | h[8 + i];
        incompatible = (incompatible << 8) | h[72 + i];
    }
    uint32_t version = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
    if (memcmp(h, "QFI\xfb", 4) != 0 || (version != 2 && version != 3))
        return blink_fail(err, BLINK_E_INVALID, 0, "`%s` is not a qcow2 disk", path);
    /* Incompatible feature bit 2: the data lives in an external file. */
    if (version == 3 && (incompatible & 4))
        return blink_fail(err, BLINK_E_INVALID, 0, "`%s` uses an external data file", path);
    if (!backing_allowed && backing_offset != 0)
        return blink_fail(err, BLINK_E_INVALID, 0, "`%s` must not have a backing file", path);
    return 0;
}

int blink_qcow2_check(const char *path, const char *expected_backing, blink_error_t *err)
{
    if (check_qcow2_header(path, expected_backing != NULL, err) < 0)
        return -1;

    cleanup_free char *tool = blink_find_program("qemu-img");
    cleanup_free char *text = NULL;
    if (tool == NULL)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "find qemu-img: install the Debian package `qemu-utils`");
    char *argv[] = {tool, "info", "--output=json", "-f", "qcow2", (char *)path, NULL};
    if (blink_run_program_output(argv, &text, 16 << 20, err) < 0)
        return -1;

    json_t *info = json_loads(text, 0, NULL);
    const char *format = json_string_value(json_object_get(info, "format"));
    const char *backing = json_string_value(json_object_get(info, "full-backing-filename"));
    if (backing == NULL)
        backing = json_string_value(json_object_get(info, "backing-filename"));
    bool ok =
        format && strcmp(format, "qcow2") == 0 &&
        (expected_backing ? backing && strcmp(backing, expected_backing) == 0 : backing == NULL);
    json_decref(info);
    if (!ok)
        return blink_fail(err, BLINK_E_INVALID, 0, "`%s` is not the qcow2 disk expected", path);
    return 0;
}
