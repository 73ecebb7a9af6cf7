/* BLIN framing and payload codec. See blin.h and docs/protocol.md. */
#include "blin.h"

#include "caps.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_le32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

void blin_header_encode(const blin_header_t *h, uint8_t out[BLIN_HEADER_SIZE])
{
    put_le32(out, BLIN_MAGIC);
    out[4] = BLIN_VERSION;
    out[5] = h->type;
    put_le16(out + 6, h->flags);
    put_le32(out + 8, h->length);
    put_le64(out + 12, h->request_id);
}

static const struct {
    uint8_t type;
    const char *name;
} type_names[] = {
    {BLIN_HANDSHAKE, "handshake"},     {BLIN_HEARTBEAT, "heartbeat"},
    {BLIN_ERROR, "error"},             {BLIN_RPC_REQUEST, "rpc_request"},
    {BLIN_RPC_RESPONSE, "rpc_response"}, {BLIN_RPC_ERROR, "rpc_error"},
    {BLIN_STREAM_DATA, "stream_data"}, {BLIN_TTY_RESIZE, "tty_resize"},
    {BLIN_STDOUT, "stdout"},           {BLIN_STDERR, "stderr"},
    {BLIN_CTL_READY, "ready"},         {BLIN_CTL_INIT, "init"},
    {BLIN_CTL_FILE_BEGIN, "file_begin"}, {BLIN_CTL_FILE_DATA, "file_data"},
    {BLIN_CTL_FILE_DONE, "file_done"}, {BLIN_CTL_EXEC, "exec"},
    {BLIN_CTL_STARTED, "started"},     {BLIN_CTL_STDIN, "stdin"},
    {BLIN_CTL_SIGNAL, "signal"},       {BLIN_CTL_EXIT, "exit"},
    {BLIN_CTL_SHUTDOWN, "shutdown"},   {BLIN_SHIM_EXEC_OPTIONS, "exec_options"},
    {BLIN_SHIM_INFO, "info"},          {BLIN_SHIM_STOP, "stop"},
    {BLIN_CTL_FREEZE, "freeze"},       {BLIN_SHIM_CHECKPOINT, "checkpoint"},
    {BLIN_SHIM_RESTORE, "restore"},    {BLIN_SHIM_DELETE, "delete"},
    {BLIN_SHIM_EXPORT, "export"},      {BLIN_SHIM_ATTACH, "attach"},
    {BLIN_VHUB_OPEN, "vhub_open"},     {BLIN_VHUB_DATA, "vhub_data"},
    {BLIN_VHUB_CLOSE, "vhub_close"},   {BLIN_VHUB_ACK, "vhub_ack"},
    {BLIN_SHIM_LAYER, "layer"},
};

const char *blin_type_name(uint8_t type)
{
    for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++)
        if (type_names[i].type == type)
            return type_names[i].name;
    return "unknown";
}

bool blin_type_known(uint8_t type)
{
    return strcmp(blin_type_name(type), "unknown") != 0;
}

const char *blin_decode_strerror(blin_decode_status_t status)
{
    switch (status) {
    case BLIN_DECODE_OK:
        return "ok";
    case BLIN_DECODE_BAD_MAGIC:
        return "bad magic";
    case BLIN_DECODE_BAD_VERSION:
        return "unsupported version";
    case BLIN_DECODE_BAD_TYPE:
        return "unknown message type";
    case BLIN_DECODE_TOO_LONG:
        return "payload longer than the maximum";
    case BLIN_DECODE_NO_MEMORY:
        return "out of memory";
    }
    return "unknown decode error";
}

blin_decode_status_t blin_header_decode(const uint8_t in[BLIN_HEADER_SIZE], uint32_t max_payload,
                                        blin_header_t *h)
{
    if (get_le32(in) != BLIN_MAGIC)
        return BLIN_DECODE_BAD_MAGIC;
    if (in[4] != BLIN_VERSION)
        return BLIN_DECODE_BAD_VERSION;
    if (!blin_type_known(in[5]))
        return BLIN_DECODE_BAD_TYPE;

    h->type = in[5];
    h->flags = get_le16(in + 6);
    h->length = get_le32(in + 8);
    h->request_id = get_le64(in + 12);
    if (h->length > max_payload)
        return BLIN_DECODE_TOO_LONG;
    return BLIN_DECODE_OK;
}

void blin_decoder_init(blin_decoder_t *d, uint32_t max_payload)
{
    memset(d, 0, sizeof(*d));
    d->max_payload = max_payload;
}

void blin_decoder_free(blin_decoder_t *d)
{
    free(d->payload);
    d->payload = NULL;
    d->payload_capacity = 0;
}

/* Makes room for the announced payload; the length was checked against the
 * cap by blin_header_decode, so this never allocates more than the cap. */
static blin_decode_status_t reserve_payload(blin_decoder_t *d)
{
    size_t need = d->header.length ? d->header.length : 1;
    if (need <= d->payload_capacity)
        return BLIN_DECODE_OK;

    uint8_t *grown = realloc(d->payload, need);
    if (grown == NULL)
        return BLIN_DECODE_NO_MEMORY;
    d->payload = grown;
    d->payload_capacity = need;
    return BLIN_DECODE_OK;
}

long blin_decoder_feed(blin_decoder_t *d, const uint8_t *data, size_t len, bool *frame_ready)
{
    size_t used = 0;

    *frame_ready = false;
    if (d->failed != BLIN_DECODE_OK)
        return d->failed;

    if (!d->in_payload) {
        size_t take = BLIN_HEADER_SIZE - d->header_have;
        if (take > len)
            take = len;
        memcpy(d->header_bytes + d->header_have, data, take);
        d->header_have += take;
        used += take;
        if (d->header_have < BLIN_HEADER_SIZE)
            return (long)used;

        blin_decode_status_t st = blin_header_decode(d->header_bytes, d->max_payload, &d->header);
        if (st == BLIN_DECODE_OK)
            st = reserve_payload(d);
        if (st != BLIN_DECODE_OK) {
            d->failed = st;
            return st;
        }
        d->in_payload = true;
        d->payload_have = 0;
    }

    size_t take = d->header.length - d->payload_have;
    if (take > len - used)
        take = len - used;
    memcpy(d->payload + d->payload_have, data + used, take);
    d->payload_have += take;
    used += take;

    if (d->payload_have == d->header.length) {
        *frame_ready = true;
        d->in_payload = false;
        d->header_have = 0;
    }
    return (long)used;
}

/* ---- payload codec ---- */

void blin_writer_init(blin_writer_t *w)
{
    memset(w, 0, sizeof(*w));
}

void blin_writer_free(blin_writer_t *w)
{
    free(w->data);
    blin_writer_init(w);
}

static uint8_t *writer_room(blin_writer_t *w, size_t n)
{
    if (w->failed)
        return NULL;
    if (n > BLINK_CAP_BLIN_PAYLOAD - w->len) {
        w->failed = true;
        return NULL;
    }
    if (w->len + n > w->capacity) {
        size_t cap = w->capacity ? w->capacity : 256;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *grown = realloc(w->data, cap);
        if (grown == NULL) {
            w->failed = true;
            return NULL;
        }
        w->data = grown;
        w->capacity = cap;
    }
    uint8_t *p = w->data + w->len;
    w->len += n;
    return p;
}

void blin_put_u16(blin_writer_t *w, uint16_t v)
{
    uint8_t *p = writer_room(w, 2);
    if (p)
        put_le16(p, v);
}

void blin_put_u32(blin_writer_t *w, uint32_t v)
{
    uint8_t *p = writer_room(w, 4);
    if (p)
        put_le32(p, v);
}

void blin_put_u64(blin_writer_t *w, uint64_t v)
{
    uint8_t *p = writer_room(w, 8);
    if (p)
        put_le64(p, v);
}

void blin_put_bytes(blin_writer_t *w, const void *data, size_t len)
{
    uint8_t *p = writer_room(w, len);
    if (p && len)
        memcpy(p, data, len);
}

void blin_put_string(blin_writer_t *w, const char *s)
{
    size_t len = strlen(s);
    if (len > UINT32_MAX) {
        w->failed = true;
        return;
    }
    blin_put_u32(w, (uint32_t)len);
    blin_put_bytes(w, s, len);
}

void blin_cursor_init(blin_cursor_t *c, const void *data, size_t len)
{
    c->data = data;
    c->len = len;
    c->pos = 0;
    c->failed = false;
}

static const uint8_t *cursor_take(blin_cursor_t *c, size_t n)
{
    if (c->failed || n > c->len - c->pos) {
        c->failed = true;
        return NULL;
    }
    const uint8_t *p = c->data + c->pos;
    c->pos += n;
    return p;
}

uint16_t blin_get_u16(blin_cursor_t *c)
{
    const uint8_t *p = cursor_take(c, 2);
    return p ? get_le16(p) : 0;
}

uint32_t blin_get_u32(blin_cursor_t *c)
{
    const uint8_t *p = cursor_take(c, 4);
    return p ? get_le32(p) : 0;
}

uint64_t blin_get_u64(blin_cursor_t *c)
{
    const uint8_t *p = cursor_take(c, 8);
    return p ? get_le64(p) : 0;
}

char *blin_get_string(blin_cursor_t *c, size_t max)
{
    uint32_t len = blin_get_u32(c);
    if (c->failed)
        return NULL;
    if (len > max) {
        c->failed = true;
        return NULL;
    }
    const uint8_t *p = cursor_take(c, len);
    if (p == NULL)
        return NULL;
    if (memchr(p, '\0', len) != NULL) {
        c->failed = true;
        return NULL;
    }
    char *s = malloc((size_t)len + 1);
    if (s == NULL) {
        c->failed = true;
        return NULL;
    }
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

int blin_write_frame(int fd, uint8_t type, uint64_t request_id, const void *payload, size_t len)
{
    uint8_t header[BLIN_HEADER_SIZE];
    blin_header_t h = {.type = type, .flags = 0, .length = (uint32_t)len, .request_id = request_id};

    if (len > BLINK_CAP_BLIN_PAYLOAD)
        return -EMSGSIZE;
    blin_header_encode(&h, header);

    /* Header and payload go in one writev: on a virtio port that is one
     * buffer, so a VM snapshot never falls between a header and its payload. */
    struct iovec iov[2] = {{header, sizeof(header)}, {(void *)payload, len}};
    int count = len ? 2 : 1;
    size_t left = sizeof(header) + len;
    while (left > 0) {
        ssize_t n = writev(fd, iov, count);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        left -= (size_t)n;
        for (int i = 0; i < count && n > 0; i++) {
            size_t take = (size_t)n < iov[i].iov_len ? (size_t)n : iov[i].iov_len;
            iov[i].iov_base = (uint8_t *)iov[i].iov_base + take;
            iov[i].iov_len -= take;
            n -= (ssize_t)take;
        }
    }
    return 0;
}
