/* blink-guest: PID 1 of a Blink VM.
 *
 * Started by the kernel as /init of the initramfs, it mounts the kernel
 * filesystems, loads the virtio drivers, switches to the root disk and then
 * serves the host over the control port (docs/protocol.md) until it is asked
 * to power off. PID 1 must never return from main or exit, because that
 * panics the kernel: every failure ends in power_off(). */
#include "guest.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <unistd.h>

/* SIGCHLD is read through a signalfd. The others are what the kernel may send
 * PID 1 (ctrl-alt-del, console hangup); they must not stop the VM's server. */
static void set_signal_dispositions(void)
{
    static const int ignored[] = {SIGPIPE, SIGTERM, SIGINT, SIGHUP};
    struct sigaction ignore = {.sa_handler = SIG_IGN};
    sigset_t blocked;

    for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++)
        sigaction(ignored[i], &ignore, NULL);

    sigemptyset(&blocked);
    sigaddset(&blocked, SIGCHLD);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGHUP);
    sigprocmask(SIG_BLOCK, &blocked, NULL);
}

static void fail_if(int rc)
{
    if (rc < 0) {
        log_error("cannot continue booting; powering off");
        power_off();
    }
}

int main(void)
{
    boot_options_t options;
    char port_path[PATH_MAX];

    set_signal_dispositions();

    /* 1. Kernel filesystems and the console. */
    fail_if(mount_early_filesystems());
    read_boot_options(&options);
    log_set_debug(options.debug);

    /* 2. Probe mode answers "does this VM boot" as early as possible. */
    if (options.probe) {
        log_info("probe ok");
        power_off();
    }

    /* 3-5. Drivers, devices, the root disk and what agents expect of it. */
    load_modules();
    fail_if(wait_for_devices(port_path, sizeof(port_path)));
    vhub_keep_tool();
    fail_if(switch_to_root_disk(options.root_ro));
    fail_if(mount_runtime_filesystems());
    configure_system();
    vhub_init();
    if (!options.root_ro)
        grow_root_filesystem();

    /* 6. Limits for agents; without them agents still run, unconfined. */
    bool agents_cgroup = setup_agents_cgroup();

    /* 7-8. Ready, then serve the host until it asks to power off. */
    int port_fd = open(port_path, O_RDWR | O_CLOEXEC);
    if (port_fd < 0) {
        log_error_errno(errno, "open control port %s", port_path);
        fail_if(-1);
    }
    control_serve(port_fd, agents_cgroup);
}
