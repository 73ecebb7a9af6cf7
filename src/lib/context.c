/* BLINK_HOME: finding it, checking it, and finding things in it. */
#include "context.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static char *default_home(blink_error_t *err)
{
    const char *env = getenv("BLINK_HOME");
    if (env && *env)
        return strdup(env);

    const char *xdg = getenv("XDG_DATA_HOME");
    if (xdg && *xdg == '/')
        return blink_strdup_printf("%s/blink", xdg);

    const char *home = getenv("HOME");
    if (home == NULL || *home != '/')
        return blink_fail_null(err, BLINK_E_INVALID, 0,
                               "find blink home: set BLINK_HOME or HOME");
    return blink_strdup_printf("%s/.local/share/blink", home);
}

blink_t *blink_open(const char *home, blink_error_t *err)
{
    blink_log_init();

    blink_t *blink = calloc(1, sizeof(*blink));
    if (blink == NULL)
        return blink_fail_null(err, BLINK_E_NO_MEMORY, ENOMEM, "allocate context");
    pthread_mutex_init(&blink->lock, NULL);

    blink->home = home ? strdup(home) : default_home(err);
    if (blink->home == NULL)
        goto fail;
    blink->tmp_dir = blink_strdup_printf("%s/tmp", blink->home);
    if (blink->tmp_dir == NULL) {
        blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "allocate context");
        goto fail;
    }

    if (blink_mkdir_p(blink->tmp_dir, 0700, err) < 0) {
        blink_wrap(err, "open blink home `%s`", blink->home);
        goto fail;
    }
    if (access(blink->tmp_dir, W_OK) < 0) {
        blink_fail(err, BLINK_E_PERMISSION, errno, "open blink home `%s`: not writable",
                   blink->home);
        goto fail;
    }
    /* Absolute from here on: disks name their backing files by these paths,
     * and QEMU would read a relative one from the disk's own folder. */
    char *absolute = realpath(blink->home, NULL);
    char *absolute_tmp = absolute ? blink_strdup_printf("%s/tmp", absolute) : NULL;
    if (absolute_tmp == NULL) {
        free(absolute);
        blink_fail(err, BLINK_E_IO, errno, "resolve blink home `%s`", blink->home);
        goto fail;
    }
    free(blink->home);
    free(blink->tmp_dir);
    blink->home = absolute;
    blink->tmp_dir = absolute_tmp;
    return blink;

fail:
    blink_close(blink);
    return NULL;
}

void blink_close(blink_t *blink)
{
    if (blink == NULL)
        return;
    pthread_mutex_destroy(&blink->lock);
    free(blink->home);
    free(blink->tmp_dir);
    free(blink->accel);
    free(blink);
}

const char *blink_home(const blink_t *blink)
{
    return blink->home;
}

int blink_kernel_paths(blink_t *blink, char **kernel, char **initrd, blink_error_t *err)
{
    *kernel = blink_strdup_printf("%s/kernels/current/vmlinuz", blink->home);
    *initrd = blink_strdup_printf("%s/kernels/current/initramfs.cpio", blink->home);
    if (*kernel == NULL || *initrd == NULL)
        goto fail_nomem;

    if (access(*kernel, R_OK) < 0 || access(*initrd, R_OK) < 0) {
        int e = errno;
        blink_fail(err, BLINK_E_NOT_SETUP, e,
                   "find guest kernel in `%s/kernels/current`: run scripts/setup.sh",
                   blink->home);
        goto fail;
    }
    return 0;

fail_nomem:
    blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "find guest kernel");
fail:
    free(*kernel);
    free(*initrd);
    *kernel = *initrd = NULL;
    return -1;
}

bool blink_image_name_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > 64 || name[0] == '.')
        return false;
    return strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") ==
           len;
}

char *blink_image_disk(blink_t *blink, const char *image, blink_error_t *err)
{
    if (image == NULL)
        image = BLINK_DEFAULT_IMAGE;
    if (!blink_image_name_valid(image))
        return blink_fail_null(err, BLINK_E_INVALID, 0,
                               "image name `%.80s`: use 1-64 of [A-Za-z0-9._-]", image);

    char *disk = blink_strdup_printf("%s/images/%s/disk.qcow2", blink->home, image);
    if (disk == NULL)
        return blink_fail_null(err, BLINK_E_NO_MEMORY, ENOMEM, "find image");
    if (access(disk, R_OK) < 0) {
        int e = errno;
        free(disk);
        if (strcmp(image, BLINK_DEFAULT_IMAGE) == 0)
            return blink_fail_null(err, BLINK_E_NOT_SETUP, e,
                                   "find default image `%s`: run scripts/setup.sh", image);
        return blink_fail_null(err, BLINK_E_NOT_FOUND, e, "find image `%s` in `%s/images`",
                               image, blink->home);
    }
    return disk;
}

char *blink_qemu_path(blink_error_t *err)
{
    const char *env = getenv("BLINK_QEMU");
    if (env && *env) {
        if (access(env, X_OK) < 0)
            return blink_fail_null(err, BLINK_E_MISSING_DEP, errno, "run qemu `%s`", env);
        return strdup(env);
    }
    char *path = blink_find_program("qemu-system-x86_64");
    if (path == NULL)
        return blink_fail_null(err, BLINK_E_MISSING_DEP, 0,
                               "find qemu-system-x86_64: install the Debian package "
                               "`qemu-system-x86` (scripts/setup.sh does)");
    return path;
}
