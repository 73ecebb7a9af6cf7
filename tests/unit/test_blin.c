/* BLIN header and decoder: byte-exact vectors and hostile input. */
#include "unit.h"

#include "blin.h"
#include "caps.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void test_handshake_vector(void)
{
    /* A Handshake with request id 1 and a 2-byte payload. */
    static const uint8_t expected[BLIN_HEADER_SIZE] = {
        0x4e, 0x49, 0x4c, 0x42, /* magic 0x424C494E, little-endian */
        0x01,                   /* version */
        0x01,                   /* type: handshake */
        0x00, 0x00,             /* flags */
        0x02, 0x00, 0x00, 0x00, /* payload length */
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, /* request id */
    };
    blin_header_t h = {.type = BLIN_HANDSHAKE, .flags = 0, .length = 2, .request_id = 1};
    uint8_t out[BLIN_HEADER_SIZE];
    blin_header_encode(&h, out);
    CHECK(memcmp(out, expected, sizeof(out)) == 0);

    blin_header_t back;
    CHECK(blin_header_decode(expected, 1024, &back) == BLIN_DECODE_OK);
    CHECK(back.type == BLIN_HANDSHAKE && back.length == 2 && back.request_id == 1);
}

static void test_header_fields_little_endian(void)
{
    blin_header_t h = {.type = BLIN_STDERR, .flags = 0x0102, .length = 0x00030405,
                       .request_id = 0x0a0b0c0d0e0f1011ull};
    uint8_t out[BLIN_HEADER_SIZE];
    blin_header_encode(&h, out);
    static const uint8_t tail[] = {0x31, 0x02, 0x01, 0x05, 0x04, 0x03, 0x00,
                                   0x11, 0x10, 0x0f, 0x0e, 0x0d, 0x0c, 0x0b, 0x0a};
    CHECK(memcmp(out + 5, tail, sizeof(tail)) == 0);
}

static void test_bad_headers(void)
{
    uint8_t bytes[BLIN_HEADER_SIZE];
    blin_header_t h = {.type = BLIN_STDOUT, .length = 10, .request_id = 7};
    blin_header_t out;

    blin_header_encode(&h, bytes);
    bytes[0] ^= 0xff;
    CHECK(blin_header_decode(bytes, 1024, &out) == BLIN_DECODE_BAD_MAGIC);

    blin_header_encode(&h, bytes);
    bytes[4] = 2;
    CHECK(blin_header_decode(bytes, 1024, &out) == BLIN_DECODE_BAD_VERSION);

    blin_header_encode(&h, bytes);
    bytes[5] = 0x7f;
    CHECK(blin_header_decode(bytes, 1024, &out) == BLIN_DECODE_BAD_TYPE);

    h.length = 0xffffffffu; /* a 4 GiB claim */
    blin_header_encode(&h, bytes);
    CHECK(blin_header_decode(bytes, BLINK_CAP_BLIN_PAYLOAD, &out) == BLIN_DECODE_TOO_LONG);
}

/* Frames fed one byte at a time come out whole and in order. */
static void test_decoder_partial_reads(void)
{
    uint8_t stream[3 * BLIN_HEADER_SIZE + 8];
    size_t len = 0;
    for (uint64_t id = 1; id <= 3; id++) {
        blin_header_t h = {.type = BLIN_STDOUT, .length = id == 2 ? 8 : 0, .request_id = id};
        blin_header_encode(&h, stream + len);
        len += BLIN_HEADER_SIZE;
        if (id == 2) {
            memcpy(stream + len, "abcdefgh", 8);
            len += 8;
        }
    }

    blin_decoder_t d;
    blin_decoder_init(&d, 64);
    uint64_t seen = 0;
    for (size_t i = 0; i < len;) {
        bool ready = false;
        long used = blin_decoder_feed(&d, stream + i, 1, &ready);
        CHECK(used == 1);
        if (used != 1)
            break;
        i++;
        if (ready) {
            seen++;
            CHECK(d.header.request_id == seen);
            if (seen == 2)
                CHECK(d.header.length == 8 && memcmp(d.payload, "abcdefgh", 8) == 0);
        }
    }
    CHECK(seen == 3);
    blin_decoder_free(&d);
}

/* An oversized claim fails before any allocation, and keeps failing. */
static void test_decoder_refuses_huge_length(void)
{
    blin_header_t h = {.type = BLIN_STDOUT, .length = 0xfffffff0u, .request_id = 1};
    uint8_t bytes[BLIN_HEADER_SIZE];
    blin_header_encode(&h, bytes);

    blin_decoder_t d;
    blin_decoder_init(&d, BLINK_CAP_BLIN_PAYLOAD);
    bool ready = false;
    CHECK(blin_decoder_feed(&d, bytes, sizeof(bytes), &ready) == BLIN_DECODE_TOO_LONG);
    CHECK(d.payload == NULL);
    CHECK(blin_decoder_feed(&d, bytes, 1, &ready) == BLIN_DECODE_TOO_LONG);
    blin_decoder_free(&d);
}

static void test_codec_roundtrip_and_truncation(void)
{
    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_u32(&w, 0xdeadbeef);
    blin_put_string(&w, "hello");
    blin_put_u64(&w, 42);
    CHECK(!w.failed && w.len == 4 + 4 + 5 + 8);

    blin_cursor_t c;
    blin_cursor_init(&c, w.data, w.len);
    CHECK(blin_get_u32(&c) == 0xdeadbeef);
    char *s = blin_get_string(&c, 16);
    CHECK(s && strcmp(s, "hello") == 0);
    free(s);
    CHECK(blin_get_u64(&c) == 42 && !c.failed);
    CHECK(blin_get_u32(&c) == 0 && c.failed); /* past the end */

    /* Every prefix of the payload is malformed, never a crash. */
    for (size_t cut = 0; cut < w.len; cut++) {
        blin_cursor_init(&c, w.data, cut);
        blin_get_u32(&c);
        free(blin_get_string(&c, 16));
        blin_get_u64(&c);
        CHECK(c.failed);
    }

    /* A string longer than its cap, and one with a NUL, are refused. */
    blin_cursor_init(&c, w.data + 4, w.len - 4);
    CHECK(blin_get_string(&c, 4) == NULL && c.failed);
    static const uint8_t with_nul[] = {3, 0, 0, 0, 'a', 0, 'b'};
    blin_cursor_init(&c, with_nul, sizeof(with_nul));
    CHECK(blin_get_string(&c, 16) == NULL && c.failed);
    blin_writer_free(&w);
}

void unit_run(void)
{
    test_handshake_vector();
    test_header_fields_little_endian();
    test_bad_headers();
    test_decoder_partial_reads();
    test_decoder_refuses_huge_length();
    test_codec_roundtrip_and_truncation();
}
