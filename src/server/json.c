/* The JSON objects of the API: the same fields as the CLI's events
 * (docs/cli.md, docs/archive.md), so a client reads both alike. */
#include "server.h"

json_t *json_session_info(const blink_session_info_t *i)
{
    return json_pack("{s:s, s:s, s:s, s:b, s:i, s:i, s:i, s:I, s:I, s:s, s:s, s:I, s:I}",
                     "name", i->name, "image", i->image, "state", i->state, "warm", i->warm,
                     "memory_mib", (int)i->memory_mib, "cpus", (int)i->cpus, "disk_size_gib",
                     (int)i->disk_size_gib, "shim_pid", (json_int_t)i->shim_pid, "qemu_pid",
                     (json_int_t)i->qemu_pid, "boot_id", i->boot_id, "last_end", i->last_end,
                     "created_at", (json_int_t)i->created_at, "started_at",
                     (json_int_t)i->started_at);
}

json_t *json_checkpoint(const char *session, const blink_checkpoint_info_t *c)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:b}", "session", session, "name", c->name,
                     "id", c->id, "created_at", (json_int_t)c->created_at, "size_bytes",
                     (json_int_t)c->size_bytes, "memory", c->memory);
}

json_t *json_execution_result(blink_result_t *result, const char *session)
{
    char *text = blink_result_to_json(result);
    blink_result_free(result);
    json_t *event = text ? json_loads(text, JSON_ALLOW_NUL, NULL) : NULL;
    free(text);
    if (event && session)
        json_object_set_new(event, "session", json_string(session));
    return event;
}
