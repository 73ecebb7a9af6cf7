/* The .boxlite archive (docs/archive.md): a zstd-compressed tar whose first
 * member is manifest.json, followed by the members it lists:
 *
 *   manifest.json      format, session settings, checkpoints, members + SHA-256
 *   disk.qcow2         the session disk (an overlay), with its internal snapshots
 *   image/disk.qcow2   the image's base disk, so the archive stands alone
 *   layers/ID.qcow2    (version 2) read-only layers the disk stands on or
 *                      that hold checkpoints, after a fork (docs/fork.md)
 */
#ifndef BLINK_BOXLITE_H
#define BLINK_BOXLITE_H

#include "internal.h"

#define BOXLITE_FORMAT "blink-session"
/* Version 1 has no layers; an export writes 2 only when it has some. */
#define BOXLITE_FORMAT_VERSION 2
#define BOXLITE_MANIFEST "manifest.json"
#define BOXLITE_DISK "disk.qcow2"
#define BOXLITE_IMAGE "image/disk.qcow2"
#define BOXLITE_LAYER_PREFIX "layers/"
/* Most layers an archive may carry. */
#define BOXLITE_LAYERS_MAX 64

/* A manifest larger than this is not a manifest. */
#define BOXLITE_MANIFEST_MAX (1u << 20)
/* No member may claim more than this (a disk of a sandbox, not a data set). */
#define BOXLITE_MEMBER_MAX (256ull << 30)

/* SHA-256 of a whole file as 64 hex digits; progress counts its bytes. */
int blink_sha256_file(const char *path, char hex[65], blink_progress_fn progress, void *userdata,
                      uint64_t *done, uint64_t total, blink_error_t *err);

/* Incremental SHA-256 (OpenSSL EVP). */
typedef struct blink_sha256 blink_sha256_t;
blink_sha256_t *blink_sha256_new(void);
void blink_sha256_update(blink_sha256_t *h, const void *data, size_t len);
void blink_sha256_final(blink_sha256_t *h, char hex[65]); /* frees h */

/* Checks a qcow2 file from outside: it must be qcow2, have no external data
 * file, and have exactly the expected backing (NULL: none). */
int blink_qcow2_check(const char *path, const char *expected_backing, blink_error_t *err);

#endif
