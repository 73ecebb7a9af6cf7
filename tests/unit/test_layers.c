/* Disk layers: the qcow2 header reader that garbage collection and export
 * trust, fed well-formed and hostile headers, and layer naming. */
#include "layers.h"
#include "unit.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void put_be(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* Writes a qcow2 header (version, backing name at `offset`, `length`). */
static char *write_header(const char *dir, const char *file, int version, uint64_t offset,
                          uint32_t length, const char *name)
{
    uint8_t h[512] = {0};
    memcpy(h, "QFI\xfb", 4);
    put_be(h + 4, (uint64_t)version, 4);
    put_be(h + 8, offset, 8);
    put_be(h + 16, length, 4);
    put_be(h + 24, 1ull << 30, 8);
    if (name && offset + strlen(name) <= sizeof(h))
        memcpy(h + offset, name, strlen(name));
    char *path = blink_strdup_printf("%s/%s", dir, file);
    int fd = path ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600) : -1;
    CHECK(fd >= 0 && write(fd, h, sizeof(h)) == (ssize_t)sizeof(h));
    if (fd >= 0)
        close(fd);
    return path;
}

static void expect_backing(const char *path, const char *expected)
{
    char *backing = NULL;
    uint64_t size = 0;
    blink_error_t err = {0};
    CHECK(layers_read_header(path, &backing, &size, &err) == 0);
    CHECK(size == 1ull << 30);
    CHECK(expected ? backing && strcmp(backing, expected) == 0 : backing == NULL);
    free(backing);
}

static void expect_refused(const char *path)
{
    char *backing = NULL;
    uint64_t size = 0;
    blink_error_t err = {0};
    CHECK(layers_read_header(path, &backing, &size, &err) < 0);
    CHECK(err.code == BLINK_E_INVALID && backing == NULL);
}

void unit_run(void)
{
    const char *tmp = getenv("TMPDIR");
    cleanup_free char *dir =
        blink_strdup_printf("%s/blink-layers-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (dir == NULL || mkdtemp(dir) == NULL) {
        CHECK(!"mkdtemp");
        return;
    }

    cleanup_free char *plain = write_header(dir, "plain", 3, 0, 0, NULL);
    expect_backing(plain, NULL);
    cleanup_free char *over = write_header(dir, "over", 3, 200, 12, "/x/base.qcow");
    expect_backing(over, "/x/base.qcow");
    cleanup_free char *v2 = write_header(dir, "v2", 2, 100, 4, "/abc");
    expect_backing(v2, "/abc");

    /* Hostile: other versions, a name past the file's end, a huge or empty
     * length, a NUL inside the name. */
    cleanup_free char *v4 = write_header(dir, "v4", 4, 0, 0, NULL);
    expect_refused(v4);
    cleanup_free char *past = write_header(dir, "past", 3, 1ull << 40, 10, NULL);
    expect_refused(past);
    cleanup_free char *huge = write_header(dir, "huge", 3, 200, 0xffffffffu, "/x");
    expect_refused(huge);
    cleanup_free char *empty = write_header(dir, "empty", 3, 200, 0, NULL);
    expect_refused(empty);
    cleanup_free char *nul = write_header(dir, "nul", 3, 200, 8, "/x");
    expect_refused(nul);

    /* Not a qcow2 file at all, and no file. */
    cleanup_free char *text = blink_strdup_printf("%s/text", dir);
    blink_error_t err = {0};
    CHECK(blink_write_file_atomic(text, "hello, this is not a disk image", 31, &err) == 0);
    expect_refused(text);
    char *backing = NULL;
    uint64_t size = 0;
    cleanup_free char *missing = blink_strdup_printf("%s/missing", dir);
    CHECK(layers_read_header(missing, &backing, &size, &err) < 0);
    CHECK(err.code == BLINK_E_NOT_FOUND);

    /* A symbolic link is not followed: a layer is a file of ours. */
    cleanup_free char *link = blink_strdup_printf("%s/link", dir);
    CHECK(symlink(over, link) == 0);
    CHECK(layers_read_header(link, &backing, &size, &err) < 0);

    /* Fresh names: 16 hex digits, different each time. */
    cleanup_free char *a = layers_new_path(dir, &err);
    cleanup_free char *b = layers_new_path(dir, &err);
    CHECK(a && b && strcmp(a, b) != 0);
    CHECK(a && strlen(a) == strlen(dir) + 1 + 16 + strlen(".qcow2"));

    CHECK(blink_remove_tree(dir) == 0);
}
