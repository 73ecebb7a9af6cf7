/* Results and their JSON form (the `execution_result` event of DESIGN §1). */
#include "result.h"

#include <jansson.h>
#include <signal.h>
#include <string.h>

blink_result_t *blink_result_new(size_t output_cap)
{
    blink_result_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    for (int i = 0; i < 2; i++) {
        r->out[i].cap = output_cap;
        r->out[i].tail = malloc(BLINK_CAP_LAST_LINE);
        if (r->out[i].tail == NULL) {
            blink_result_free(r);
            return NULL;
        }
    }
    return r;
}

void blink_result_free(blink_result_t *result)
{
    if (result == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        blink_buf_free(&result->out[i].kept);
        free(result->out[i].tail);
    }
    free(result);
}

static blink_output_t *output_of(const blink_result_t *r, blink_stream_t stream)
{
    return (blink_output_t *)&r->out[stream == BLINK_STDERR ? 1 : 0];
}

int blink_result_append(blink_result_t *result, blink_stream_t stream, const char *data,
                        size_t len)
{
    blink_output_t *o = output_of(result, stream);

    o->total += len;
    blink_tail_append(o->tail, &o->tail_len, BLINK_CAP_LAST_LINE, data, len);
    if (o->kept.len < o->cap) {
        size_t room = o->cap - o->kept.len;
        if (blink_buf_append(&o->kept, data, len < room ? len : room) < 0)
            return -1;
    }
    return 0;
}

int blink_result_exit_code(const blink_result_t *r)
{
    return r->exit_code;
}

int blink_result_signal(const blink_result_t *r)
{
    return r->signal;
}

bool blink_result_timed_out(const blink_result_t *r)
{
    return r->timed_out;
}

bool blink_result_oom_killed(const blink_result_t *r)
{
    return r->oom_killed;
}

uint64_t blink_result_duration_ms(const blink_result_t *r)
{
    return r->duration_ms;
}

uint64_t blink_result_boot_ms(const blink_result_t *r)
{
    return r->boot_ms;
}

const char *blink_result_output(const blink_result_t *r, blink_stream_t stream, size_t *len)
{
    blink_output_t *o = output_of(r, stream);
    if (len)
        *len = o->kept.len;
    return o->kept.data ? o->kept.data : "";
}

uint64_t blink_result_output_total(const blink_result_t *r, blink_stream_t stream)
{
    return output_of(r, stream)->total;
}

bool blink_result_truncated(const blink_result_t *r, blink_stream_t stream)
{
    blink_output_t *o = output_of(r, stream);
    return o->total > o->kept.len;
}

/* The agent's own result: its last non-empty stdout line, when that line is
 * a JSON object whose "event" is "execution_result" (the seed's contract). */
static json_t *agent_result_line(const blink_result_t *r)
{
    const blink_output_t *o = &r->out[0];
    size_t end = o->tail_len;
    while (end > 0 && (o->tail[end - 1] == '\n' || o->tail[end - 1] == '\r' ||
                       o->tail[end - 1] == ' ' || o->tail[end - 1] == '\t'))
        end--;
    size_t start = end;
    while (start > 0 && o->tail[start - 1] != '\n')
        start--;
    if (start == end || o->tail[start] != '{')
        return NULL;
    /* A line that filled the whole tail may have lost its beginning. */
    if (start == 0 && o->total > o->tail_len)
        return NULL;

    json_t *line = json_loadb(o->tail + start, end - start, 0, NULL);
    const char *event = json_string_value(json_object_get(line, "event"));
    if (!json_is_object(line) || event == NULL || strcmp(event, "execution_result") != 0) {
        json_decref(line);
        return NULL;
    }
    return line;
}

static json_t *output_string(const blink_output_t *o)
{
    size_t len = 0;
    char *clean = blink_utf8_sanitize(o->kept.data ? o->kept.data : "", o->kept.len, &len);
    json_t *s = clean ? json_stringn_nocheck(clean, len) : NULL;
    free(clean);
    return s;
}

char *blink_result_to_json(const blink_result_t *r)
{
    json_t *obj = json_object();
    if (obj == NULL)
        return NULL;

    json_object_set_new(obj, "event", json_string("execution_result"));
    json_object_set_new(obj, "stdout", output_string(&r->out[0]));
    json_object_set_new(obj, "stderr", output_string(&r->out[1]));
    json_object_set_new(obj, "exit_code", json_integer(r->exit_code));
    if (r->signal) {
        const char *abbrev = sigabbrev_np(r->signal);
        char name[32];
        snprintf(name, sizeof(name), "SIG%s", abbrev ? abbrev : "UNKNOWN");
        json_object_set_new(obj, "signal", json_string(name));
    } else {
        json_object_set_new(obj, "signal", json_null());
    }
    json_object_set_new(obj, "timed_out", json_boolean(r->timed_out));
    json_object_set_new(obj, "oom_killed", json_boolean(r->oom_killed));
    json_object_set_new(obj, "duration_ms", json_integer((json_int_t)r->duration_ms));
    json_object_set_new(obj, "stdout_bytes", json_integer((json_int_t)r->out[0].total));
    json_object_set_new(obj, "stderr_bytes", json_integer((json_int_t)r->out[1].total));
    json_object_set_new(obj, "stdout_truncated",
                        json_boolean(blink_result_truncated(r, BLINK_STDOUT)));
    json_object_set_new(obj, "stderr_truncated",
                        json_boolean(blink_result_truncated(r, BLINK_STDERR)));

    /* The agent's fields join ours; ours win where names clash, so an agent
     * cannot forge its exit code or output. */
    json_t *agent = agent_result_line(r);
    if (agent) {
        const char *key;
        json_t *value;
        json_object_foreach(agent, key, value) {
            if (json_object_get(obj, key) == NULL)
                json_object_set(obj, key, value);
        }
        json_decref(agent);
    }

    char *text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
    return text;
}
