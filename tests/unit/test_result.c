/* Results: caps, truncation marks and the agent's result line. */
#include "unit.h"

#include "result.h"

#include <jansson.h>
#include <string.h>

static json_t *to_json(blink_result_t *r)
{
    char *text = blink_result_to_json(r);
    json_t *obj = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    return obj;
}

static void test_cap_and_truncation(void)
{
    blink_result_t *r = blink_result_new(4);
    CHECK(r != NULL);
    blink_result_append(r, BLINK_STDOUT, "abcdef", 6);
    blink_result_append(r, BLINK_STDERR, "xy", 2);
    size_t len;
    const char *out = blink_result_output(r, BLINK_STDOUT, &len);
    CHECK(len == 4 && memcmp(out, "abcd", 4) == 0);
    CHECK(blink_result_truncated(r, BLINK_STDOUT) && !blink_result_truncated(r, BLINK_STDERR));
    CHECK(blink_result_output_total(r, BLINK_STDOUT) == 6);

    json_t *obj = to_json(r);
    CHECK(obj != NULL);
    CHECK(strcmp(json_string_value(json_object_get(obj, "event")), "execution_result") == 0);
    CHECK(strcmp(json_string_value(json_object_get(obj, "stdout")), "abcd") == 0);
    CHECK(json_is_true(json_object_get(obj, "stdout_truncated")));
    CHECK(json_integer_value(json_object_get(obj, "stdout_bytes")) == 6);
    json_decref(obj);
    blink_result_free(r);
}

static void test_agent_line_merged_without_overriding(void)
{
    blink_result_t *r = blink_result_new(1 << 20);
    const char *text = "working\n{\"event\":\"execution_result\",\"memory_keys\":[\"a\"],"
                       "\"exit_code\":99}\n";
    blink_result_append(r, BLINK_STDOUT, text, strlen(text));
    r->exit_code = 3;
    json_t *obj = to_json(r);
    CHECK(json_array_size(json_object_get(obj, "memory_keys")) == 1);
    CHECK(json_integer_value(json_object_get(obj, "exit_code")) == 3);
    json_decref(obj);
    blink_result_free(r);

    /* A last line that is some other event, or not JSON, merges nothing. */
    r = blink_result_new(1 << 20);
    text = "{\"event\":\"other\",\"memory_keys\":[]}\nnot json\n";
    blink_result_append(r, BLINK_STDOUT, text, strlen(text));
    obj = to_json(r);
    CHECK(json_object_get(obj, "memory_keys") == NULL);
    json_decref(obj);
    blink_result_free(r);
}

static void test_invalid_utf8_output(void)
{
    blink_result_t *r = blink_result_new(1 << 20);
    blink_result_append(r, BLINK_STDOUT, "ok\xff\xfe", 4);
    json_t *obj = to_json(r);
    CHECK(obj != NULL);
    CHECK(strncmp(json_string_value(json_object_get(obj, "stdout")), "ok\xef\xbf\xbd", 5) == 0);
    json_decref(obj);
    blink_result_free(r);
}

void unit_run(void)
{
    test_cap_and_truncation();
    test_agent_line_merged_without_overriding();
    test_invalid_utf8_output();
}
