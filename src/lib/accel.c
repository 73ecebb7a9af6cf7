/* Choosing the accelerator. /dev/kvm can exist and still be unable to run a
 * standard guest kernel (nested or paravirtual KVM with missing features), so
 * `auto` trusts KVM only after our own guest booted under it to /init and
 * powered off. The verdict is cached per host, keyed by what could change it:
 * the host kernel, the QEMU binary and the guest kernel. */
#include "context.h"
#include "vm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>

/* A working KVM boots our kernel to init in well under a second; a broken
 * one either fails at once or crawls. */
#define KVM_PROBE_TIMEOUT_MS 4000

static char *host_key(const char *qemu, const char *kernel)
{
    struct utsname u;
    struct stat q = {0}, k = {0};
    uname(&u);
    stat(qemu, &q);
    stat(kernel, &k);
    return blink_strdup_printf("host=%s %s;qemu=%s:%lld:%lld;kernel=%lld:%lld", u.release,
                               u.machine, qemu, (long long)q.st_size, (long long)q.st_mtime,
                               (long long)k.st_size, (long long)k.st_mtime);
}

/* Boots the guest in probe mode under KVM. True if it reached /init. */
static bool kvm_boots_guest(blink_t *blink, const char *qemu, const char *kernel,
                            const char *initrd)
{
    blink_vm_config_t config = {
        .qemu_path = qemu,
        .accel = "kvm",
        .kernel_path = kernel,
        .initrd_path = initrd,
        .extra_cmdline = "blink.mode=probe",
        .memory_mib = 256,
        .cpus = 1,
        .tmp_dir = blink->tmp_dir,
    };
    blink_vm_t *vm = NULL;
    blink_error_t err = {0};
    uint64_t start = blink_now_ms();

    if (blink_vm_start(&config, &vm, &err) < 0) {
        log_info("accel", "kvm probe: %s", err.message);
        return false;
    }
    bool exited = blink_vm_wait_exit(vm, start + KVM_PROBE_TIMEOUT_MS) == 0;
    bool ok = exited && strstr(blink_vm_console(vm), "probe ok") != NULL;
    log_info("accel", "kvm probe %s after %llu ms", ok ? "booted" : "failed",
             (unsigned long long)(blink_now_ms() - start));
    blink_vm_free(vm);
    return ok;
}

static const char *probe_auto(blink_t *blink, blink_error_t *err)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        log_info("accel", "no usable /dev/kvm (%s): using tcg", strerror(errno));
        return "tcg";
    }
    close(fd);

    cleanup_free char *qemu = blink_qemu_path(err);
    cleanup_free char *kernel = NULL;
    cleanup_free char *initrd = NULL;
    if (qemu == NULL || blink_kernel_paths(blink, &kernel, &initrd, err) < 0)
        return NULL;

    cleanup_free char *key = host_key(qemu, kernel);
    cleanup_free char *cache_dir = blink_strdup_printf("%s/cache", blink->home);
    cleanup_free char *cache = blink_strdup_printf("%s/cache/accel", blink->home);
    if (key == NULL || cache_dir == NULL || cache == NULL)
        return blink_fail_null(err, BLINK_E_NO_MEMORY, ENOMEM, "choose accelerator");

    cleanup_free char *cached = blink_read_file(cache, 4096, NULL, NULL);
    if (cached) {
        char *newline = strchr(cached, '\n');
        if (newline && strncmp(cached, key, (size_t)(newline - cached)) == 0 &&
            strlen(key) == (size_t)(newline - cached)) {
            const char *verdict = newline + 1;
            if (strncmp(verdict, "kvm", 3) == 0)
                return "kvm";
            if (strncmp(verdict, "tcg", 3) == 0)
                return "tcg";
        }
    }

    const char *verdict = kvm_boots_guest(blink, qemu, kernel, initrd) ? "kvm" : "tcg";
    cleanup_free char *content = blink_strdup_printf("%s\n%s\n", key, verdict);
    blink_error_t ignored;
    if (content == NULL || blink_mkdir_p(cache_dir, 0700, &ignored) < 0 ||
        blink_write_file_atomic(cache, content, strlen(content), &ignored) < 0)
        log_warn("accel", "cannot cache the accelerator verdict in `%s`", cache);
    return verdict;
}

const char *blink_accel(blink_t *blink, blink_error_t *err)
{
    pthread_mutex_lock(&blink->lock);
    if (blink->accel) {
        pthread_mutex_unlock(&blink->lock);
        return blink->accel;
    }

    const char *mode = getenv("BLINK_ACCEL");
    const char *verdict = NULL;
    if (mode == NULL || *mode == '\0' || strcmp(mode, "auto") == 0)
        verdict = probe_auto(blink, err);
    else if (strcmp(mode, "kvm") == 0 || strcmp(mode, "tcg") == 0)
        verdict = mode;
    else
        blink_fail(err, BLINK_E_INVALID, 0, "BLINK_ACCEL=`%.40s`: use auto, kvm or tcg", mode);

    if (verdict) {
        blink->accel = strdup(verdict);
        if (blink->accel == NULL)
            blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "choose accelerator");
    }
    pthread_mutex_unlock(&blink->lock);
    return blink->accel;
}
