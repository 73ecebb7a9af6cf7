/* Checks one guest connection's BLIN stream; see vhub_filter.h. */
#include "vhub_filter.h"

#include "caps.h"

#include <jansson.h>
#include <string.h>

int vhub_put_frame(blink_buf_t *out, uint8_t type, uint64_t id, const void *payload, size_t len)
{
    uint8_t header[BLIN_HEADER_SIZE];
    blin_header_t h = {.type = type, .length = (uint32_t)len, .request_id = id};

    blin_header_encode(&h, header);
    if (blink_buf_append(out, header, sizeof(header)) < 0)
        return -1;
    return len ? blink_buf_append(out, payload, len) : 0;
}

/* Frames as the hub writes its answers: a compact JSON object. */
static int put_json(blink_buf_t *out, uint8_t type, uint64_t id, json_t *value)
{
    char *text = value ? json_dumps(value, JSON_COMPACT) : NULL;
    int rc = text ? vhub_put_frame(out, type, id, text, strlen(text)) : -1;
    free(text);
    json_decref(value);
    return rc;
}

int vhub_filter_init(vhub_filter_t *f, bool local, const char *why_local, const char *kind,
                     const char *name)
{
    memset(f, 0, sizeof(*f));
    f->local = local;
    f->why_local = why_local ? why_local : "no hub";
    json_t *who = json_pack("{s:s}", kind, name);
    f->identity = who ? json_dumps(who, JSON_COMPACT) : NULL;
    json_decref(who);
    return f->identity ? 0 : -1;
}

void vhub_filter_free(vhub_filter_t *f)
{
    free(f->identity);
    f->identity = NULL;
}

static int fail(vhub_filter_t *f, blink_buf_t *to_guest, uint64_t id, const char *why)
{
    f->failed = true;
    log_info("vhub", "guest connection broke the protocol: %s", why);
    return put_json(to_guest, BLIN_ERROR, id, json_pack("{s:s}", "error", why));
}

/* What a guest program may send the hub. Blink's own types (0x40 and up)
 * belong to the control port and the carrier, never to a hub peer. */
static bool guest_may_send(uint8_t type)
{
    switch (type) {
    case BLIN_HANDSHAKE:
    case BLIN_HEARTBEAT:
    case BLIN_RPC_REQUEST:
    case BLIN_STREAM_DATA:
    case BLIN_TTY_RESIZE:
    case BLIN_STDOUT:
    case BLIN_STDERR:
        return true;
    default:
        return false;
    }
}

/* The host's Handshake: the hub learns who this is from the host, never
 * from the guest, which could name any session. */
static int handshake_to_hub(vhub_filter_t *f, blink_buf_t *to_hub)
{
    return vhub_put_frame(to_hub, BLIN_HANDSHAKE, f->header.request_id, f->identity,
                          strlen(f->identity));
}

/* Answers without a hub, as the hub itself would word them. */
static int answer_locally(vhub_filter_t *f, blink_buf_t *to_guest)
{
    const blin_header_t *h = &f->header;
    switch (h->type) {
    case BLIN_HANDSHAKE: {
        json_t *reply = json_loads(f->identity, 0, NULL);
        if (reply == NULL)
            return -1;
        json_object_set_new(reply, "status", json_string("no-hub"));
        json_object_set_new(reply, "error", json_string(f->why_local));
        return put_json(to_guest, BLIN_HANDSHAKE, h->request_id, reply);
    }
    case BLIN_HEARTBEAT:
        return vhub_put_frame(to_guest, BLIN_HEARTBEAT, h->request_id, f->echo, f->echo_len);
    case BLIN_RPC_REQUEST:
        return put_json(to_guest, BLIN_RPC_ERROR, h->request_id,
                        json_pack("{s:s}", "error", f->why_local));
    default:
        return 0; /* output with nobody to read it */
    }
}

/* A whole header is in: check it and decide what happens to its payload.
 * Returns 0, or -1 on no memory; a refused header sets f->failed. */
static int begin_frame(vhub_filter_t *f, blink_buf_t *to_hub, blink_buf_t *to_guest)
{
    blin_header_t *h = &f->header;
    blin_decode_status_t st = blin_header_decode(f->header_bytes, BLINK_CAP_BLIN_PAYLOAD, h);
    uint64_t id = st == BLIN_DECODE_BAD_MAGIC || st == BLIN_DECODE_BAD_VERSION ? 0 : h->request_id;

    f->header_have = 0;
    if (st != BLIN_DECODE_OK)
        return fail(f, to_guest, id, blin_decode_strerror(st));
    if (!guest_may_send(h->type))
        return fail(f, to_guest, id, "message type not accepted by the hub");
    if (f->local && h->type == BLIN_HEARTBEAT && h->length > VHUB_HEARTBEAT_MAX)
        return fail(f, to_guest, id, "heartbeat payload over 64 bytes");

    f->payload_left = h->length;
    f->echo_len = 0;
    f->skipping = f->local || h->type == BLIN_HANDSHAKE;
    if (!f->local && h->type == BLIN_HANDSHAKE)
        return handshake_to_hub(f, to_hub);
    if (!f->local)
        return blink_buf_append(to_hub, f->header_bytes, BLIN_HEADER_SIZE);
    return 0;
}

/* The last payload byte of a frame went by. */
static int end_frame(vhub_filter_t *f, blink_buf_t *to_guest)
{
    return f->local ? answer_locally(f, to_guest) : 0;
}

long vhub_filter_feed(vhub_filter_t *f, const uint8_t *data, size_t len, blink_buf_t *to_hub,
                      blink_buf_t *to_guest)
{
    size_t used = 0;

    while (used < len && !f->failed) {
        if (f->payload_left == 0) {
            size_t take = BLIN_HEADER_SIZE - f->header_have;
            if (take > len - used)
                take = len - used;
            memcpy(f->header_bytes + f->header_have, data + used, take);
            f->header_have += take;
            used += take;
            if (f->header_have < BLIN_HEADER_SIZE)
                break;
            if (begin_frame(f, to_hub, to_guest) < 0)
                return -1;
            if (f->failed)
                break;
            if (f->payload_left == 0 && end_frame(f, to_guest) < 0)
                return -1;
            continue;
        }

        size_t take = f->payload_left < len - used ? f->payload_left : len - used;
        if (!f->skipping && blink_buf_append(to_hub, data + used, take) < 0)
            return -1;
        if (f->local && f->header.type == BLIN_HEARTBEAT) {
            memcpy(f->echo + f->echo_len, data + used, take); /* length checked: <= 64 */
            f->echo_len += take;
        }
        used += take;
        f->payload_left -= (uint32_t)take;
        if (f->payload_left == 0 && end_frame(f, to_guest) < 0)
            return -1;
    }
    return (long)used;
}

bool vhub_filter_end(vhub_filter_t *f, blink_buf_t *to_guest)
{
    if (f->failed || (f->header_have == 0 && f->payload_left == 0))
        return true;
    uint64_t id = f->header_have == 0 ? f->header.request_id : 0;
    fail(f, to_guest, id, "connection ended inside a frame");
    return false;
}
