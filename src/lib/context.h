/* The blink_t context: where BLINK_HOME is and what lives in it.
 *
 * BLINK_HOME layout (docs/storage.md):
 *   kernels/current/       vmlinuz, initramfs.cpio, release (set up by scripts/setup.sh)
 *   images/NAME/disk.qcow2 base disks; never written after they are built
 *   cache/accel            the accelerator verdict for this host
 *   tmp/                   run overlays, each named after its owner's pid
 */
#ifndef BLINK_CONTEXT_H
#define BLINK_CONTEXT_H

#include "internal.h"

#include <pthread.h>

#define BLINK_DEFAULT_IMAGE "debian-12"

struct blink {
    char *home;
    char *tmp_dir;
    pthread_mutex_t lock; /* guards the fields below */
    char *accel;          /* resolved accelerator, NULL until first needed */
};

/* Paths of the guest kernel and initramfs; fails with BLINK_E_NOT_SETUP. */
int blink_kernel_paths(blink_t *blink, char **kernel, char **initrd, blink_error_t *err);

/* Path of an image's base disk; BLINK_E_NOT_FOUND for an unknown image. */
char *blink_image_disk(blink_t *blink, const char *image, blink_error_t *err);

/* Checks an image name: 1-64 of [A-Za-z0-9._-], not starting with a dot. */
bool blink_image_name_valid(const char *name);

/* The qemu-system binary for this host, or BLINK_E_MISSING_DEP naming the
 * Debian package. */
char *blink_qemu_path(blink_error_t *err);

/* "kvm" or "tcg", per BLINK_ACCEL (auto|kvm|tcg). `auto` boots the guest
 * under KVM once and caches the verdict (accel.c). */
const char *blink_accel(blink_t *blink, blink_error_t *err);

#endif
