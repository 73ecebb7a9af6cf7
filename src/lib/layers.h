/* Disk layers (docs/fork.md). A session's active disk is always
 * sessions/NAME/disk.qcow2, an overlay over a chain of read-only qcow2
 * files that ends at its image. Forking freezes a session's disk into a
 * shared layer, BLINK_HOME/layers/ID.qcow2, that source and copy both stand
 * on; a layer never changes again and goes when nothing refers to it. A
 * session may also park its own former disk under sessions/NAME/layers/ to
 * keep the checkpoints inside it restorable. Checkpoint rows name the layer
 * that holds them by its path relative to BLINK_HOME. */
#ifndef BLINK_LAYERS_H
#define BLINK_LAYERS_H

#include "catalog.h"
#include "session.h"

/* Longest backing chain we follow; a longer one is refused as hostile. */
#define LAYERS_MAX_DEPTH 64
/* Most layers a fork may leave a disk standing on (image not counted): a
 * margin under LAYERS_MAX_DEPTH. */
#define LAYERS_MAX_FORK_DEPTH 48

/* Serializes what creates, adopts or deletes shared layers. Returns the
 * lock's fd (close it to release) or -1. */
int layers_lock(blink_t *blink, blink_error_t *err);

/* A fresh, unused path DIR/<16 hex digits>.qcow2. */
char *layers_new_path(const char *dir, blink_error_t *err);

/* Reads a qcow2 header: its backing file name (NULL when it has none) and
 * its virtual size. Refuses what is not qcow2 2 or 3. */
int layers_read_header(const char *path, char **backing, uint64_t *virtual_size,
                       blink_error_t *err);

/* Creates the qcow2 overlay `path` over `backing` without opening it (a
 * running QEMU may hold its lock). */
int layers_create_overlay(const char *path, const char *backing, uint64_t virtual_size,
                          blink_error_t *err);

/* How many files `disk` stands on, its image included. */
int layers_chain_depth(const char *disk, blink_error_t *err);

/* Whether the overlay holds nothing of its own: no data, no snapshots. */
int layers_overlay_empty(const char *disk, bool *empty, blink_error_t *err);

/* Path relative to BLINK_HOME (a pointer into `path`), or NULL when `path`
 * is not under it. */
const char *layers_relative(blink_t *blink, const char *path);

/* Whether the layer (relative path) is a file the session parked itself. */
bool layers_is_private(const session_ctx_t *s, const char *relative);

/* Makes `target` a disk whose content is `snapshot` of the layer `base`
 * while storing only what differs from the layer's own content: an overlay
 * over `base`, filled by qemu-img rebase from a read-only qemu-nbd export of
 * the snapshot. */
int layers_overlay_at_snapshot(blink_t *blink, const char *target, const char *base,
                               const char *snapshot, blink_error_t *err);

/* Deletes shared layers that no session disk stands on and no checkpoint
 * row names. Takes the layers lock itself. */
void layers_collect(blink_t *blink, blink_catalog_t *catalog);

#endif
