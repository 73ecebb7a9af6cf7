/* BLIN framing: the 20-byte little-endian header that precedes every message
 * between host and guest (DESIGN §1), an incremental decoder that survives
 * partial reads, and a small bounds-checked codec for structured payloads.
 *
 * This file is shared by the host library and by blink-guest, so it depends
 * on libc only and never allocates more than the payload cap. The message
 * types and payload layouts are documented in docs/protocol.md. */
#ifndef BLINK_BLIN_H
#define BLINK_BLIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BLIN_MAGIC 0x424C494Eu
#define BLIN_VERSION 1u
#define BLIN_HEADER_SIZE 20u

/* Types fixed by the seed. */
enum {
    BLIN_HANDSHAKE = 0x01,
    BLIN_HEARTBEAT = 0x02,
    BLIN_ERROR = 0x03,
    BLIN_RPC_REQUEST = 0x10,
    BLIN_RPC_RESPONSE = 0x11,
    BLIN_RPC_ERROR = 0x12,
    BLIN_STREAM_DATA = 0x20,
    BLIN_TTY_RESIZE = 0x21,
    BLIN_STDOUT = 0x30,
    BLIN_STDERR = 0x31,
};

/* Blink's own control types, 0x40-0x5f, carried on the control port only. */
enum {
    BLIN_CTL_READY = 0x40,      /* guest -> host: booted, serving */
    BLIN_CTL_INIT = 0x41,       /* host -> guest: clock and settings */
    BLIN_CTL_FILE_BEGIN = 0x42, /* host -> guest: path, mode, size */
    BLIN_CTL_FILE_DATA = 0x43,  /* host -> guest: raw bytes of the file */
    BLIN_CTL_FILE_DONE = 0x44,  /* guest -> host: file written */
    BLIN_CTL_FREEZE = 0x45,     /* both: u32 1 freeze / 0 thaw root fs; guest echoes */
    BLIN_CTL_EXEC = 0x48,       /* host -> guest: start a process */
    BLIN_CTL_STARTED = 0x49,    /* guest -> host: process started, pid */
    BLIN_CTL_STDIN = 0x4a,      /* host -> guest: stdin bytes, empty = EOF */
    BLIN_CTL_SIGNAL = 0x4b,     /* host -> guest: deliver a signal */
    BLIN_CTL_EXIT = 0x4c,       /* guest -> host: process ended */
    BLIN_CTL_SHUTDOWN = 0x4f,   /* host -> guest: sync and power off */
};

/* Between a client (CLI, server, SDK) and the shim of a running VM. Clients
 * also send the control types above; the shim relays them to the guest under
 * its own request ids and routes the answers back. */
enum {
    BLIN_SHIM_EXEC_OPTIONS = 0x50, /* client -> shim: u32 timeout_sec, before Exec */
    BLIN_SHIM_INFO = 0x51,         /* both: empty request; reply is a JSON string */
    BLIN_SHIM_STOP = 0x52,         /* client -> shim: stop the VM cleanly */
    BLIN_SHIM_CHECKPOINT = 0x53,   /* both: str name, u32 flags (bit 0: memory); empty reply */
    BLIN_SHIM_RESTORE = 0x54,      /* both: str name (a memory checkpoint); empty reply */
    BLIN_SHIM_DELETE = 0x55,       /* both: str name; empty reply */
    BLIN_SHIM_EXPORT = 0x56,       /* both: str path; copies the disk while paused */
    BLIN_SHIM_ATTACH = 0x57,       /* client: u64 execution id, u64 after seq; reply:
                                      u64 first seq, u64 last seq, u32 flags, then output */
    BLIN_SHIM_LAYER = 0x5f,        /* both: str path of an overlay over the disk; the VM
                                      moves onto it (fork, docs/fork.md); empty reply */
};

/* The V-Hub carrier on the second virtio-serial port (org.blink.vhub): each
 * guest connection to the hub travels under its own request id, with credit
 * flow control (docs/vhub.md "The carrier"). */
enum {
    BLIN_VHUB_OPEN = 0x58,  /* guest -> host: a guest program connected; empty */
    BLIN_VHUB_DATA = 0x59,  /* both: bytes of the connection, 1..VHUB_DATA_MAX */
    BLIN_VHUB_CLOSE = 0x5a, /* both: no more data from the sender; empty */
    BLIN_VHUB_ACK = 0x5b,   /* both: u32 bytes the sender consumed (credit) */
};

/* Flags of an Exit frame (third u32 of its payload). */
#define BLIN_EXIT_OOM 0x1u
#define BLIN_EXIT_TIMED_OUT 0x2u /* set by the shim when it ended the process */

typedef struct blin_header {
    uint8_t type;
    uint16_t flags;
    uint32_t length;
    uint64_t request_id;
} blin_header_t;

/* Writes the 20 header bytes for `h` into `out`. */
void blin_header_encode(const blin_header_t *h, uint8_t out[BLIN_HEADER_SIZE]);

/* Errors the decoder reports; each one ends the connection. */
typedef enum blin_decode_status {
    BLIN_DECODE_OK = 0,
    BLIN_DECODE_BAD_MAGIC = -1,
    BLIN_DECODE_BAD_VERSION = -2,
    BLIN_DECODE_BAD_TYPE = -3,
    BLIN_DECODE_TOO_LONG = -4,
    BLIN_DECODE_NO_MEMORY = -5,
} blin_decode_status_t;

/* Parses 20 header bytes. Checks magic, version, that the type is known and
 * that the length is at most `max_payload`. */
blin_decode_status_t blin_header_decode(const uint8_t in[BLIN_HEADER_SIZE], uint32_t max_payload,
                                        blin_header_t *h);

bool blin_type_known(uint8_t type);
const char *blin_type_name(uint8_t type);
const char *blin_decode_strerror(blin_decode_status_t status);

/* Incremental decoder. Feed it whatever a read returned; it hands out whole
 * frames. The payload buffer grows to the largest payload seen, never past
 * `max_payload`, which is checked before any allocation. */
typedef struct blin_decoder {
    uint32_t max_payload;
    uint8_t header_bytes[BLIN_HEADER_SIZE];
    size_t header_have;
    blin_header_t header;
    uint8_t *payload;
    size_t payload_capacity;
    size_t payload_have;
    bool in_payload;
    blin_decode_status_t failed;
} blin_decoder_t;

void blin_decoder_init(blin_decoder_t *d, uint32_t max_payload);
void blin_decoder_free(blin_decoder_t *d);

/* Consumes bytes from `data`, at most up to the end of one frame. Returns the
 * number consumed (> 0 unless len is 0), or a negative blin_decode_status_t.
 * When a frame is complete, *frame_ready is set and `d->header` and
 * `d->payload` describe it until the next call. After an error the decoder
 * keeps failing with the same status: the connection is to be closed. */
long blin_decoder_feed(blin_decoder_t *d, const uint8_t *data, size_t len, bool *frame_ready);

/* ---- payload codec: little-endian integers and length-prefixed strings ---- */

typedef struct blin_writer {
    uint8_t *data;
    size_t len;
    size_t capacity;
    bool failed; /* out of memory or past the payload cap */
} blin_writer_t;

void blin_writer_init(blin_writer_t *w);
void blin_writer_free(blin_writer_t *w);
void blin_put_u16(blin_writer_t *w, uint16_t v);
void blin_put_u32(blin_writer_t *w, uint32_t v);
void blin_put_u64(blin_writer_t *w, uint64_t v);
void blin_put_bytes(blin_writer_t *w, const void *data, size_t len);
/* A u32 length followed by the bytes, without a terminator. */
void blin_put_string(blin_writer_t *w, const char *s);

typedef struct blin_cursor {
    const uint8_t *data;
    size_t len;
    size_t pos;
    bool failed; /* read past the end or a malformed string */
} blin_cursor_t;

void blin_cursor_init(blin_cursor_t *c, const void *data, size_t len);
uint16_t blin_get_u16(blin_cursor_t *c);
uint32_t blin_get_u32(blin_cursor_t *c);
uint64_t blin_get_u64(blin_cursor_t *c);
/* Copies a string of at most `max` bytes into a new NUL-terminated buffer
 * (caller frees). Strings holding a NUL byte are refused. NULL on failure. */
char *blin_get_string(blin_cursor_t *c, size_t max);

/* Writes one whole frame to a blocking fd, retrying short writes and EINTR.
 * Returns 0 or -errno. Used by the guest and by blocking host helpers. */
int blin_write_frame(int fd, uint8_t type, uint64_t request_id, const void *payload, size_t len);

#endif
