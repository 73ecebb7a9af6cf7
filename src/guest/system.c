/* Boot steps of blink-guest: kernel filesystems, driver modules, the root
 * disk, the runtime mounts and settings agents expect, and powering the VM
 * off. */
#include "guest.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <net/if.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#define MODULES_DIR       "/lib/modules/blink"
#define ROOT_DEVICE       "/dev/vda"
#define NEW_ROOT          "/newroot"
#define CONTROL_PORT_NAME "org.blink.ctl"
#define VIRTIO_PORTS_DIR  "/sys/class/virtio-ports"

/* Virtio devices appear while their modules load; 10 s covers a slow TCG boot
 * and still ends a VM whose disk or port is missing in reasonable time. */
#define DEVICE_WAIT_MS 10000u
#define DEVICE_POLL_MS 5u

/* Grace period between SIGTERM and SIGKILL at power off. */
#define STOP_GRACE_MS 1000u

static bool root_switched;

static int mount_checked(const char *source, const char *target, const char *fstype,
                         unsigned long flags, const char *data)
{
    if (mount(source, target, fstype, flags, data) < 0) {
        int err = errno;
        log_error_errno(err, "mount %s on %s", fstype ? fstype : source, target);
        return -err;
    }
    log_debug("mounted %s on %s", fstype ? fstype : source, target);
    return 0;
}

static int make_mount_point(const char *path, mode_t mode)
{
    int rc = ensure_directory(path, mode);
    if (rc < 0)
        log_error_errno(-rc, "create mount point %s", path);
    return rc;
}

/* The initramfs has no /dev/console node, so without devtmpfs there is no
 * console to say why we stop. Make one in the initramfs' own /dev. */
static void open_emergency_console(void)
{
    if (mknod("/dev/console", S_IFCHR | 0600, makedev(5, 1)) < 0 && errno != EEXIST)
        return;
    int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd >= 0)
        log_set_console(fd);
}

/* Points fds 0-2 at /dev/null so no later open() or pipe() lands there: a
 * pipe end on fd 1 would be clobbered by the child's own dup2 onto fd 1. */
static void occupy_standard_fds(void)
{
    for (;;) {
        int fd = open("/dev/null", O_RDWR | O_NOCTTY);
        if (fd < 0)
            return;
        if (fd > 2) {
            close(fd);
            return;
        }
    }
}

int mount_early_filesystems(void)
{
    int rc = make_mount_point("/dev", 0755);
    if (rc == 0)
        rc = mount_checked("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    if (rc < 0) {
        open_emergency_console();
        log_error_errno(-rc, "mount devtmpfs on /dev");
        return rc;
    }

    occupy_standard_fds();
    int console = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (console >= 0)
        log_set_console(console);

    rc = make_mount_point("/proc", 0555);
    if (rc == 0)
        rc = mount_checked("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    if (rc < 0)
        return rc;

    rc = make_mount_point("/sys", 0555);
    if (rc == 0)
        rc = mount_checked("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    return rc;
}

void read_boot_options(boot_options_t *options)
{
    char cmdline[4096];

    memset(options, 0, sizeof(*options));
    ssize_t len = read_small_file("/proc/cmdline", cmdline, sizeof(cmdline));
    if (len < 0) {
        log_warn_errno((int)-len, "read /proc/cmdline");
        return;
    }

    /* Tokens are separated by blanks; only exact matches count. */
    for (char *word = cmdline; *word;) {
        size_t n = strcspn(word, " \t\n");
        char saved = word[n];
        word[n] = '\0';
        if (strcmp(word, "blink.mode=probe") == 0)
            options->probe = true;
        else if (strcmp(word, "blink.debug=1") == 0)
            options->debug = true;
        else if (strcmp(word, "blink.root_ro=1") == 0)
            options->root_ro = true;
        word[n] = saved;
        word += n;
        word += strspn(word, " \t\n");
    }
}

static void load_module(const char *name)
{
    char path[PATH_MAX];

    format_text_args(path, sizeof(path), "%s/%s", MODULES_DIR, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        log_warn_errno(errno, "open module %s", path);
        return;
    }

    if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
        log_warn_errno(errno, "load module %s", name);
    else
        log_debug("loaded module %s", name);
    close(fd);

    /* The initramfs stays in memory after the switch to the root disk;
     * removing what is no longer needed gives that memory back to agents. */
    unlink(path);
}

void load_modules(void)
{
    char order[8192];

    ssize_t len = read_small_file(MODULES_DIR "/order", order, sizeof(order));
    if (len < 0) {
        log_warn_errno((int)-len, "read module list %s/order", MODULES_DIR);
        return;
    }

    for (char *line = order; *line;) {
        size_t n = strcspn(line, "\n");
        char *next = line + n + (line[n] == '\n');
        line[n] = '\0';
        if (n == 0 || n >= NAME_MAX || strchr(line, '/') || line[0] == '.')
            log_warn("skip module list entry `%s`", line);
        else
            load_module(line);
        line = next;
    }
    unlink(MODULES_DIR "/order");
}

int find_virtio_port(const char *wanted, char *port_path, size_t size)
{
    DIR *dir = opendir(VIRTIO_PORTS_DIR);
    int rc = -ENOENT;

    if (dir == NULL)
        return -errno;
    for (struct dirent *entry; (entry = readdir(dir)) != NULL;) {
        char name_path[PATH_MAX];
        char name[64];

        if (entry->d_name[0] == '.')
            continue;
        format_text_args(name_path, sizeof(name_path), "%s/%s/name", VIRTIO_PORTS_DIR,
                         entry->d_name);
        if (read_small_file(name_path, name, sizeof(name)) < 0)
            continue;
        name[strcspn(name, "\n")] = '\0';
        if (strcmp(name, wanted) == 0) {
            format_text_args(port_path, size, "/dev/%s", entry->d_name);
            rc = 0;
            break;
        }
    }
    closedir(dir);
    return rc;
}

int wait_for_devices(char *port_path, size_t size)
{
    uint64_t deadline = monotonic_ms() + DEVICE_WAIT_MS;
    bool have_disk = false;
    bool have_port = false;

    for (;;) {
        if (!have_disk)
            have_disk = access(ROOT_DEVICE, F_OK) == 0;
        /* The sysfs entry comes first; devtmpfs creates the node after it. */
        if (!have_port)
            have_port = find_virtio_port(CONTROL_PORT_NAME, port_path, size) == 0 &&
                        access(port_path, F_OK) == 0;
        if (have_disk && have_port)
            return 0;

        if (monotonic_ms() > deadline) {
            if (!have_disk)
                log_error("wait for root disk %s: no such device after %u ms", ROOT_DEVICE,
                          DEVICE_WAIT_MS);
            if (!have_port)
                log_error("wait for control port %s: not found after %u ms", CONTROL_PORT_NAME,
                          DEVICE_WAIT_MS);
            return -ETIMEDOUT;
        }
        sleep_ms(DEVICE_POLL_MS);
    }
}

static int move_into_new_root(const char *from)
{
    char target[PATH_MAX];

    format_text_args(target, sizeof(target), "%s%s", NEW_ROOT, from);
    int rc = make_mount_point(target, 0755);
    if (rc == 0)
        rc = mount_checked(from, target, NULL, MS_MOVE, NULL);
    return rc;
}

static int step_checked(int result, const char *what)
{
    if (result < 0) {
        int err = errno;
        log_error_errno(err, "%s", what);
        return -err;
    }
    return 0;
}

int switch_to_root_disk(bool read_only)
{
    int rc = make_mount_point(NEW_ROOT, 0755);
    if (rc == 0)
        rc = mount_checked(ROOT_DEVICE, NEW_ROOT, "ext4", read_only ? MS_RDONLY : 0, NULL);
    if (rc < 0)
        return rc;

    static const char *const kernel_mounts[] = {"/dev", "/proc", "/sys"};
    for (size_t i = 0; i < sizeof(kernel_mounts) / sizeof(kernel_mounts[0]); i++) {
        rc = move_into_new_root(kernel_mounts[i]);
        if (rc < 0)
            return rc;
    }

    /* The initramfs is the kernel's rootfs, which cannot be unmounted or
     * pivoted away from: put the disk on top of it and chroot into it. */
    rc = step_checked(chdir(NEW_ROOT), "enter " NEW_ROOT);
    if (rc == 0)
        rc = mount_checked(".", "/", NULL, MS_MOVE, NULL);
    if (rc == 0)
        rc = step_checked(chroot("."), "chroot into the root disk");
    if (rc == 0)
        rc = step_checked(chdir("/"), "enter / of the root disk");
    if (rc == 0)
        root_switched = true;
    return rc;
}

static void replace_with_symlink(const char *target, const char *link_path)
{
    if (unlink(link_path) < 0 && errno != ENOENT) {
        log_warn_errno(errno, "remove %s", link_path);
        return;
    }
    if (symlink(target, link_path) < 0)
        log_warn_errno(errno, "link %s to %s", link_path, target);
}

int mount_runtime_filesystems(void)
{
    unsigned long plain = MS_NOSUID | MS_NODEV;
    int rc;

    /* A private devpts instance whose ptmx anyone can open, so the PTYs of
     * executions are numbered from 0 and /dev/ptmx leads to them. */
    rc = make_mount_point("/dev/pts", 0755);
    if (rc == 0)
        rc = mount_checked("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                           "newinstance,ptmxmode=0666,mode=0620");
    if (rc < 0)
        return rc;
    replace_with_symlink("pts/ptmx", "/dev/ptmx");

    rc = make_mount_point("/dev/shm", 01777);
    if (rc == 0)
        rc = mount_checked("tmpfs", "/dev/shm", "tmpfs", plain, "mode=1777");
    if (rc < 0)
        return rc;

    rc = make_mount_point("/run", 0755);
    if (rc == 0)
        rc = mount_checked("tmpfs", "/run", "tmpfs", plain, "mode=0755");
    if (rc < 0)
        return rc;

    return mount_checked("cgroup2", "/sys/fs/cgroup", "cgroup2", plain | MS_NOEXEC, NULL);
}

static void bring_up_loopback(void)
{
    struct ifreq ifr;
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (sock < 0) {
        log_warn_errno(errno, "open socket to configure lo");
        return;
    }
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, "lo", 3);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) {
        log_warn_errno(errno, "read flags of lo");
    } else {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0)
            log_warn_errno(errno, "bring up lo");
    }
    close(sock);
}

static void make_agent_directories(void)
{
    int rc = ensure_directory("/var/blink", 0755);
    if (rc == 0)
        rc = ensure_directory("/var/blink/memory", 0755);
    if (rc < 0)
        log_warn_errno(-rc, "create /var/blink/memory");

    struct stat st;
    if (stat("/tmp", &st) == 0)
        return;
    /* mkdir applies the umask; sticky and world-writable need the chmod. */
    if (mkdir("/tmp", 01777) < 0 || chmod("/tmp", 01777) < 0)
        log_warn_errno(errno, "create /tmp");
}

/* EXT4_IOC_RESIZE_FS (fs/ext4/ext4.h; not in the 6.1 uapi headers): grow a
 * mounted ext4 to the given number of blocks. */
#define BLINK_EXT4_IOC_RESIZE_FS _IOW('f', 16, uint64_t)

/* A session opened with a disk larger than its image has a bigger virtual
 * disk than filesystem. Growing the mounted root online costs nothing when
 * the sizes already match (the kernel returns at once), so it runs on every
 * boot of a writable root. */
void grow_root_filesystem(void)
{
    uint64_t device_bytes = 0;
    int dev = open("/dev/vda", O_RDONLY | O_CLOEXEC);
    if (dev < 0 || ioctl(dev, BLKGETSIZE64, &device_bytes) < 0) {
        log_warn_errno(errno, "size of /dev/vda");
        if (dev >= 0)
            close(dev);
        return;
    }
    close(dev);

    struct statfs fs;
    int root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0 || fstatfs(root, &fs) < 0 || fs.f_bsize <= 0) {
        log_warn_errno(errno, "statfs /");
        if (root >= 0)
            close(root);
        return;
    }
    uint64_t blocks = device_bytes / (uint64_t)fs.f_bsize;
    if (ioctl(root, BLINK_EXT4_IOC_RESIZE_FS, &blocks) < 0)
        log_warn_errno(errno, "grow / to %llu blocks", (unsigned long long)blocks);
    else
        log_debug("root filesystem spans %llu blocks", (unsigned long long)blocks);
    close(root);
}

void configure_system(void)
{
    static const struct {
        const char *target;
        const char *link;
    } dev_links[] = {
        {"/proc/self/fd", "/dev/fd"},
        {"/proc/self/fd/0", "/dev/stdin"},
        {"/proc/self/fd/1", "/dev/stdout"},
        {"/proc/self/fd/2", "/dev/stderr"},
    };

    for (size_t i = 0; i < sizeof(dev_links) / sizeof(dev_links[0]); i++)
        if (symlink(dev_links[i].target, dev_links[i].link) < 0 && errno != EEXIST)
            log_warn_errno(errno, "link %s to %s", dev_links[i].link, dev_links[i].target);

    int rc = ensure_directory("/var", 0755);
    if (rc == 0)
        make_agent_directories();
    else
        log_warn_errno(-rc, "create /var");

    bring_up_loopback();
    if (sethostname("blink", 5) < 0)
        log_warn_errno(errno, "set host name");

    /* The kernel's OOM killer must pick an agent, never PID 1: its death
     * panics the kernel and loses every agent's output. */
    rc = write_small_file("/proc/self/oom_score_adj", "-1000");
    if (rc < 0)
        log_warn_errno(-rc, "write /proc/self/oom_score_adj");
}

/* Reaps children until none is left or `ms` have passed; true if none is left. */
static bool reap_all_within(unsigned ms)
{
    uint64_t deadline = monotonic_ms() + ms;

    for (;;) {
        pid_t pid = waitpid(-1, NULL, WNOHANG);
        if (pid > 0)
            continue;
        if (pid < 0 && errno == ECHILD)
            return true;
        if (monotonic_ms() >= deadline)
            return false;
        sleep_ms(10);
    }
}

static void stop_all_processes(void)
{
    /* kill(-1) from PID 1 reaches every process but PID 1 itself. */
    if (kill(-1, SIGTERM) < 0 && errno != ESRCH)
        log_warn_errno(errno, "send SIGTERM to all processes");
    if (reap_all_within(STOP_GRACE_MS))
        return;
    if (kill(-1, SIGKILL) < 0 && errno != ESRCH)
        log_warn_errno(errno, "send SIGKILL to all processes");
    if (!reap_all_within(STOP_GRACE_MS))
        log_warn("processes left after SIGKILL; powering off anyway");
}

_Noreturn void power_off(void)
{
    /* sync() on a frozen filesystem would wait for a thaw that never comes. */
    control_thaw_root();
    if (root_switched) {
        log_debug("stopping all processes");
        stop_all_processes();
        log_debug("syncing");
        sync();
        log_debug("remounting / read-only");
        if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
            log_warn_errno(errno, "remount / read-only");
    }
    sync();
    log_debug("powering off");
    reboot(RB_POWER_OFF);

    /* PID 1 must never exit: that panics the kernel. */
    log_error_errno(errno, "power off");
    for (;;)
        pause();
}
