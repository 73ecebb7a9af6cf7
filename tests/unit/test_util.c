/* Host utilities: UTF-8 sanitizing, tails, atomic files. */
#include "unit.h"

#include "internal.h"

#include <string.h>

static void test_utf8(void)
{
    size_t len;
    char *s = blink_utf8_sanitize("plain", 5, &len);
    CHECK(s && len == 5 && strcmp(s, "plain") == 0);
    free(s);

    /* Valid multi-byte text passes unchanged. */
    s = blink_utf8_sanitize("h\xc3\xa9llo \xe2\x82\xac", 10, &len);
    CHECK(s && len == 10 && memcmp(s, "h\xc3\xa9llo \xe2\x82\xac", 10) == 0);
    free(s);

    /* Stray bytes, overlong forms and surrogates become U+FFFD each. */
    s = blink_utf8_sanitize("a\xff" "b\xc0\xaf" "c\xed\xa0\x80", 9, &len);
    CHECK(s != NULL);
    if (s) {
        CHECK(strncmp(s, "a\xef\xbf\xbd" "b", 5) == 0);
        CHECK(strchr(s, '\xff') == NULL && memchr(s, 0xc0, len) == NULL);
    }
    free(s);

    /* Embedded NUL bytes are kept (JSON can carry them). */
    s = blink_utf8_sanitize("a\0b", 3, &len);
    CHECK(s && len == 3 && s[1] == '\0');
    free(s);
}

static void test_tail(void)
{
    char tail[8];
    size_t len = 0;
    blink_tail_append(tail, &len, sizeof(tail), "abc", 3);
    blink_tail_append(tail, &len, sizeof(tail), "defgh", 5);
    CHECK(len == 8 && memcmp(tail, "abcdefgh", 8) == 0);
    blink_tail_append(tail, &len, sizeof(tail), "ij", 2);
    CHECK(len == 8 && memcmp(tail, "cdefghij", 8) == 0);
    blink_tail_append(tail, &len, sizeof(tail), "0123456789", 10);
    CHECK(len == 8 && memcmp(tail, "23456789", 8) == 0);
}

static void test_error_wrap(void)
{
    blink_error_t err = {0};
    CHECK(blink_fail(&err, BLINK_E_IO, 2, "open `%s`", "x") == -1);
    blink_wrap(&err, "boot vm");
    CHECK(strcmp(err.message, "boot vm: open `x`") == 0);
    CHECK(err.code == BLINK_E_IO && err.sys_errno == 2);
    char buf[128];
    CHECK(strcmp(blink_error_format(&err, buf, sizeof(buf)),
                 "boot vm: open `x`: No such file or directory") == 0);
    CHECK(strcmp(blink_strerror(BLINK_E_NOT_SETUP), "not set up") == 0);
    CHECK(strcmp(blink_strerror((blink_status_t)999), "unknown error") == 0);
}

void unit_run(void)
{
    test_utf8();
    test_tail();
    test_error_wrap();
}
