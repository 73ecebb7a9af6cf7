/* The host end of a VM's V-Hub port (docs/vhub.md "The carrier"): guest
 * programs' connections arrive multiplexed over the org.blink.vhub
 * virtio-serial port; each one is checked (vhub_filter.h) and relayed over
 * a Unix connection of its own to the hub, or answered here when there is
 * no hub. Where the host has a usable /dev/vhost-vsock, guest programs may
 * also connect over vsock (CID 2, port 10000) and are served the same way.
 *
 * Owned by a blink_vm_t and pumped by its poll loop. Single-threaded. */
#ifndef BLINK_VHUB_CARRIER_H
#define BLINK_VHUB_CARRIER_H

#include "internal.h"

#include "caps.h"

#define BLINK_VHUB_VSOCK_PORT 10000u

typedef struct blink_vhub blink_vhub_t;

typedef struct blink_vhub_config {
    const char *hub_path; /* the hub's Unix socket; NULL: no hub */
    const char *kind;     /* "session" or "run": what the hub is told */
    const char *name;
    bool vsock;           /* also serve vsock when the host can */
} blink_vhub_config_t;

/* Creates the carrier. *qemu_fd is the end of a socket pair for QEMU's
 * chardev (the caller closes it once QEMU has it). *vsock_cid is the guest
 * CID to give QEMU's vhost-vsock device, or 0 when the VM gets none. */
int blink_vhub_new(const blink_vhub_config_t *config, blink_vhub_t **out, int *qemu_fd,
                   unsigned *vsock_cid, blink_error_t *err);

/* For the owner's poll loop: fills at most BLINK_VHUB_POLLFDS entries and
 * returns how many; hand the same entries to blink_vhub_dispatch. */
#define BLINK_VHUB_POLLFDS (2 + 2 * VHUB_MAX_CONNECTIONS)
struct pollfd;
int blink_vhub_fill_pollfds(blink_vhub_t *vhub, struct pollfd *pfds);
void blink_vhub_dispatch(blink_vhub_t *vhub, const struct pollfd *pfds, int count);

/* Ends every connection (the guest was restored to another moment). */
void blink_vhub_reset(blink_vhub_t *vhub);

/* Connections open now, for tests and logs. */
int blink_vhub_connections(const blink_vhub_t *vhub);

void blink_vhub_free(blink_vhub_t *vhub);

/* ---- which hub (vhub_config.c) ---- */

/* The hub of a run or a session being opened: `option` when set, else
 * $BLINK_VHUB_SOCKET, else none (*path NULL). A relative path is made
 * absolute, since the shim that uses a session's hub runs elsewhere. */
int blink_vhub_resolve(const char *option, char **path, blink_error_t *err);

/* A session's hub, kept in sessions/NAME/vhub (one line, the socket path).
 * Saving NULL removes it. Loading gives NULL when the session has none. */
int blink_vhub_save(const char *session_dir, const char *path, blink_error_t *err);
char *blink_vhub_load(const char *session_dir);

#endif
