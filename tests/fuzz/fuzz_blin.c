/* libFuzzer target for the BLIN decoder and payload codec: whatever bytes a
 * hostile peer sends, the decoder ends in a frame or a clean error, never a
 * crash or an allocation past the cap. Run with scripts/fuzz.sh. */
#include "blin.h"
#include "caps.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Decodes the structured payloads the host and guest parse. */
static void parse_payload(const blin_header_t *h, const uint8_t *payload)
{
    blin_cursor_t c;
    blin_cursor_init(&c, payload, h->length);
    switch (h->type) {
    case BLIN_CTL_EXEC: {
        blin_get_u32(&c);
        blin_get_u16(&c);
        blin_get_u16(&c);
        free(blin_get_string(&c, BLINK_CAP_EXEC_STRING));
        uint32_t argc = blin_get_u32(&c);
        for (uint32_t i = 0; i < argc && !c.failed && i < BLINK_CAP_EXEC_STRINGS; i++)
            free(blin_get_string(&c, BLINK_CAP_EXEC_STRING));
        break;
    }
    case BLIN_CTL_READY:
    case BLIN_ERROR:
        blin_get_u32(&c);
        free(blin_get_string(&c, 256));
        free(blin_get_string(&c, 256));
        break;
    default:
        blin_get_u64(&c);
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    blin_decoder_t d;
    blin_decoder_init(&d, BLINK_CAP_BLIN_PAYLOAD);

    /* Feed in uneven pieces, as reads from a socket would come. */
    size_t off = 0, step = 1;
    while (off < size) {
        size_t n = size - off < step ? size - off : step;
        bool ready = false;
        long used = blin_decoder_feed(&d, data + off, n, &ready);
        if (used < 0)
            break;
        if (used == 0)
            abort(); /* no progress on non-empty input would hang a peer */
        off += (size_t)used;
        if (ready) {
            if (d.header.length > BLINK_CAP_BLIN_PAYLOAD)
                abort();
            parse_payload(&d.header, d.payload);
        }
        step = step * 3 % 61 + 1;
    }
    blin_decoder_free(&d);
    return 0;
}
