/* GET /api/health and GET /api/product. */
#include "server.h"

enum MHD_Result route_health(request_t *req, char **params)
{
    (void)params;
    return http_json(req, MHD_HTTP_OK,
                     json_pack("{s:s, s:s}", "status", "ok", "version", BLINK_VERSION_STRING));
}

/* The tiers of the seed's product summary: ephemeral runs are free; what
 * keeps state (sessions, checkpoints, archives, warm VMs) is paid. Feature
 * flags say what this server implements, so a control plane can tell. */
enum MHD_Result route_product(request_t *req, char **params)
{
    (void)params;
    json_t *tiers = json_pack(
        "[{s:s, s:[s]}, {s:s, s:[s, s, s, s, s, s]}]", "name", "free", "features",
        "ephemeral_runs", "name", "paid", "features", "ephemeral_runs", "sessions",
        "checkpoints", "export", "import", "warm");
    json_t *features = json_pack(
        "{s:b, s:b, s:b, s:b, s:b, s:b, s:b, s:b, s:b, s:b}", "ephemeral_runs", 1, "job_queue", 1,
        "sessions", 1, "session_runs", 1, "checkpoints", 1, "memory_checkpoints", 1, "export", 1,
        "import", 0, "warm", 1, "attach", 0);
    return http_json(req, MHD_HTTP_OK,
                     json_pack("{s:s, s:s, s:o, s:o}", "product", "blink", "version",
                               BLINK_VERSION_STRING, "tiers", tiers, "features", features));
}
