/* The host's check of guest V-Hub connections (vhub_filter): exact bytes
 * towards the hub and the guest, hostile headers, and input in pieces. */
#include "unit.h"

#include "blin.h"
#include "vhub_filter.h"

#include <string.h>

static size_t frame(uint8_t *out, uint8_t type, uint64_t id, const char *payload, uint32_t length)
{
    blin_header_t h = {.type = type, .length = length, .request_id = id};
    blin_header_encode(&h, out);
    size_t n = payload ? strlen(payload) : 0;
    if (n)
        memcpy(out + BLIN_HEADER_SIZE, payload, n);
    return BLIN_HEADER_SIZE + n;
}

/* Checks that `buf` holds exactly one frame of `type` and `id` with `payload`. */
static bool holds(const blink_buf_t *buf, uint8_t type, uint64_t id, const char *payload)
{
    uint8_t expected[512];
    size_t n = frame(expected, type, id, payload, (uint32_t)strlen(payload));
    return buf->len == n && memcmp(buf->data, expected, n) == 0;
}

static void test_handshake_rewritten_with_the_hosts_word(void)
{
    vhub_filter_t f;
    blink_buf_t hub = {0}, guest = {0};
    uint8_t in[256];
    size_t n = frame(in, BLIN_HANDSHAKE, 1, "{\"session\":\"someone-else\"}", 26);

    CHECK(vhub_filter_init(&f, false, NULL, "session", "mine") == 0);
    CHECK(vhub_filter_feed(&f, in, n, &hub, &guest) == (long)n);
    CHECK(holds(&hub, BLIN_HANDSHAKE, 1, "{\"session\":\"mine\"}"));
    CHECK(guest.len == 0 && !f.failed);
    vhub_filter_free(&f);
    blink_buf_free(&hub);
    blink_buf_free(&guest);
}

static void test_frames_pass_byte_by_byte(void)
{
    vhub_filter_t f;
    blink_buf_t hub = {0}, guest = {0};
    uint8_t in[256];
    size_t n = frame(in, BLIN_STDOUT, 7, "hello", 5);
    n += frame(in + n, BLIN_RPC_REQUEST, 8, "{\"method\":\"ping\"}", 17);

    CHECK(vhub_filter_init(&f, false, NULL, "run", "r1") == 0);
    for (size_t i = 0; i < n; i++)
        CHECK(vhub_filter_feed(&f, in + i, 1, &hub, &guest) == 1);
    CHECK(hub.len == n && memcmp(hub.data, in, n) == 0);
    CHECK(vhub_filter_end(&f, &guest) && guest.len == 0);
    vhub_filter_free(&f);
    blink_buf_free(&hub);
    blink_buf_free(&guest);
}

static void test_no_hub_answers(void)
{
    vhub_filter_t f;
    blink_buf_t hub = {0}, guest = {0};
    uint8_t in[256];

    CHECK(vhub_filter_init(&f, true, "no hub", "run", "r1") == 0);
    size_t n = frame(in, BLIN_RPC_REQUEST, 9, "{\"method\":\"ping\"}", 17);
    CHECK(vhub_filter_feed(&f, in, n, &hub, &guest) == (long)n);
    CHECK(holds(&guest, BLIN_RPC_ERROR, 9, "{\"error\":\"no hub\"}"));

    guest.len = 0;
    n = frame(in, BLIN_HEARTBEAT, 10, "beat", 4);
    CHECK(vhub_filter_feed(&f, in, n, &hub, &guest) == (long)n);
    CHECK(holds(&guest, BLIN_HEARTBEAT, 10, "beat"));

    guest.len = 0;
    n = frame(in, BLIN_STDOUT, 11, "nobody listens", 14);
    CHECK(vhub_filter_feed(&f, in, n, &hub, &guest) == (long)n);
    CHECK(guest.len == 0 && hub.len == 0);
    vhub_filter_free(&f);
    blink_buf_free(&guest);
}

/* Feeds one hostile header; expects an Error with `why` and a failed filter. */
static void expect_refused(const uint8_t *in, size_t n, const char *why)
{
    vhub_filter_t f;
    blink_buf_t hub = {0}, guest = {0};
    char expected[128];

    CHECK(vhub_filter_init(&f, false, NULL, "run", "r1") == 0);
    CHECK(vhub_filter_feed(&f, in, n, &hub, &guest) >= 0);
    snprintf(expected, sizeof(expected), "{\"error\":\"%s\"}", why);
    CHECK(f.failed && hub.len == 0);
    CHECK(guest.len > BLIN_HEADER_SIZE && guest.data[5] == BLIN_ERROR &&
          guest.len - BLIN_HEADER_SIZE == strlen(expected) &&
          memcmp(guest.data + BLIN_HEADER_SIZE, expected, strlen(expected)) == 0);
    vhub_filter_free(&f);
    blink_buf_free(&guest);
}

static void test_hostile_headers(void)
{
    uint8_t in[64];

    frame(in, BLIN_STDOUT, 1, NULL, 0);
    in[0] ^= 0xff;
    expect_refused(in, BLIN_HEADER_SIZE, "bad magic");
    frame(in, BLIN_STDOUT, 1, NULL, 0);
    in[4] = 2;
    expect_refused(in, BLIN_HEADER_SIZE, "unsupported version");
    frame(in, 0x7f, 1, NULL, 0);
    expect_refused(in, BLIN_HEADER_SIZE, "unknown message type");
    frame(in, BLIN_STDOUT, 1, NULL, 0xffffffffu);
    expect_refused(in, BLIN_HEADER_SIZE, "payload longer than the maximum");
    frame(in, BLIN_CTL_EXEC, 1, NULL, 0);
    expect_refused(in, BLIN_HEADER_SIZE, "message type not accepted by the hub");
    frame(in, BLIN_VHUB_DATA, 1, NULL, 0);
    expect_refused(in, BLIN_HEADER_SIZE, "message type not accepted by the hub");
}

static void test_cut_frame(void)
{
    vhub_filter_t f;
    blink_buf_t hub = {0}, guest = {0};
    uint8_t in[64];

    CHECK(vhub_filter_init(&f, false, NULL, "run", "r1") == 0);
    frame(in, BLIN_STDOUT, 3, NULL, 100);
    CHECK(vhub_filter_feed(&f, in, BLIN_HEADER_SIZE + 10, &hub, &guest) == BLIN_HEADER_SIZE + 10);
    CHECK(!vhub_filter_end(&f, &guest));
    CHECK(holds(&guest, BLIN_ERROR, 3, "{\"error\":\"connection ended inside a frame\"}"));
    vhub_filter_free(&f);
    blink_buf_free(&hub);
    blink_buf_free(&guest);
}

void unit_run(void)
{
    test_handshake_rewritten_with_the_hosts_word();
    test_frames_pass_byte_by_byte();
    test_no_hub_answers();
    test_hostile_headers();
    test_cut_frame();
}
