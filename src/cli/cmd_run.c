/* blink-cli run PATH [options] [-- ARGS...]: one agent in a fresh VM. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ENV CLI_MAX_ENV

static const char run_help[] =
    "usage: blink-cli run PATH [options] [-- ARGS...]\n"
    "\n"
    "Runs the agent at PATH (a script with a shebang line, or a binary) in a\n"
    "fresh VM and prints one execution_result JSON line on stdout.\n"
    "\n"
    "  --timeout SECONDS   stop the agent after this long (default: none)\n"
    "  --memory MIB        guest memory (default 512)\n"
    "  --cpus N            guest CPUs (default 1)\n"
    "  --env KEY=VALUE     add to the agent's environment (repeatable)\n"
    "  --image NAME        local image (default: the embedded default image)\n"
    "  --output-cap BYTES  bytes of each stream kept in the result (default 16 MiB)\n"
    "  --boot-timeout SEC  give up if the guest is not up in time (default 60)\n"
    "  --stream            also copy the agent's output live to stderr\n"
    "  --vhub SOCKET       the V-Hub guest programs reach (default: $BLINK_VHUB_SOCKET;\n"
    "                      without one their RPCs get RpcError \"no hub\")\n"
    "\n"
    "Exit status: the agent's exit code; 128+N if a signal N killed it; 124 on\n"
    "timeout; 125 when Blink itself failed (an error event is printed).\n";

static const char session_run_help[] =
    "usage: blink-cli session run --name NAME PATH [options] [-- ARGS...]\n"
    "\n"
    "Runs the agent in the session's VM (booting it when the session is not warm)\n"
    "and prints one execution_result JSON line. Options as for `run`, except\n"
    "--image, --memory, --cpus and --vhub, which belong to `session open`.\n";

/* Parses a decimal number in [min, max]; false on anything else. */
bool cli_parse_number(const char *text, unsigned long long min, unsigned long long max,
                      unsigned long long *out)
{
    char *end;
    if (text == NULL || *text < '0' || *text > '9')
        return false;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static void stream_output(blink_stream_t stream, const char *data, size_t len, void *userdata)
{
    (void)stream;
    (void)userdata;
    fwrite(data, 1, len, stderr);
    fflush(stderr);
}

int cli_exit_status_of(const blink_result_t *result)
{
    if (blink_result_timed_out(result))
        return CLI_EXIT_TIMEOUT;
    if (blink_result_signal(result))
        return CLI_EXIT_SIGNAL_BASE + blink_result_signal(result);
    return blink_result_exit_code(result) & 0xff;
}

/* Parses `run` and `session run` arguments. `session` is NULL for `run`;
 * otherwise --name is required and stored there. Returns 1 when the command
 * is done (help printed or a usage error, *status set), 0 to go on. */
int cli_parse_run(int argc, char **argv, const char *command, cli_run_args_t *a, int *status)
{
    enum {
        OPT_TIMEOUT = 256,
        OPT_MEMORY,
        OPT_CPUS,
        OPT_ENV,
        OPT_IMAGE,
        OPT_STREAM,
        OPT_OUTPUT_CAP,
        OPT_BOOT_TIMEOUT,
        OPT_NAME,
        OPT_VHUB,
        OPT_HELP
    };
    static const struct option long_options[] = {
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"memory", required_argument, NULL, OPT_MEMORY},
        {"cpus", required_argument, NULL, OPT_CPUS},
        {"env", required_argument, NULL, OPT_ENV},
        {"image", required_argument, NULL, OPT_IMAGE},
        {"stream", no_argument, NULL, OPT_STREAM},
        {"output-cap", required_argument, NULL, OPT_OUTPUT_CAP},
        {"boot-timeout", required_argument, NULL, OPT_BOOT_TIMEOUT},
        {"name", required_argument, NULL, OPT_NAME},
        {"vhub", required_argument, NULL, OPT_VHUB},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    blink_run_options_t options = {.struct_size = sizeof(options)};
    const char **env = a->env;
    size_t env_count = 0;
    unsigned long long n;
    bool session = strcmp(command, "run") != 0;
    int opt;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (opt) {
        case OPT_TIMEOUT:
            if (!cli_parse_number(optarg, 1, 7 * 86400, &n)) {
                *status = cli_usage_error(command, "--timeout `%s`: use 1-604800 seconds", optarg);
                return 1;
            }
            options.timeout_sec = (unsigned)n;
            break;
        case OPT_MEMORY:
            if (!cli_parse_number(optarg, 128, 65536, &n)) {
                *status = cli_usage_error(command, "--memory `%s`: use 128-65536 MiB", optarg);
                return 1;
            }
            options.memory_mib = (unsigned)n;
            break;
        case OPT_CPUS:
            if (!cli_parse_number(optarg, 1, 64, &n)) {
                *status = cli_usage_error(command, "--cpus `%s`: use 1-64", optarg);
                return 1;
            }
            options.cpus = (unsigned)n;
            break;
        case OPT_ENV:
            if (strchr(optarg, '=') == NULL || optarg[0] == '=') {
                *status = cli_usage_error(command, "--env `%s`: use KEY=VALUE", optarg);
                return 1;
            }
            if (env_count == MAX_ENV) {
                *status = cli_usage_error(command, "more than %d --env options", MAX_ENV);
                return 1;
            }
            env[env_count++] = optarg;
            break;
        case OPT_IMAGE:
            options.image = optarg;
            break;
        case OPT_STREAM:
            options.on_output = stream_output;
            break;
        case OPT_OUTPUT_CAP:
            if (!cli_parse_number(optarg, 1, 1ull << 32, &n)) {
                *status = cli_usage_error(command, "--output-cap `%s`: use 1-4294967296", optarg);
                return 1;
            }
            options.output_cap = (size_t)n;
            break;
        case OPT_BOOT_TIMEOUT:
            if (!cli_parse_number(optarg, 1, 3600, &n)) {
                *status = cli_usage_error(command, "--boot-timeout `%s`: use 1-3600", optarg);
                return 1;
            }
            options.boot_timeout_sec = (unsigned)n;
            break;
        case OPT_NAME:
            a->session = optarg;
            break;
        case OPT_VHUB:
            if (session) {
                *status = cli_usage_error(command, "--vhub belongs to `session open`");
                return 1;
            }
            options.vhub_socket = optarg;
            break;
        case OPT_HELP:
            fputs(session ? session_run_help : run_help, stdout);
            *status = 0;
            return 1;
        default:
            *status =
                cli_usage_error(command, "unknown or incomplete option `%s`", argv[optind - 1]);
            return 1;
        }
    }
    if (optind >= argc) {
        *status = cli_usage_error(command, "missing the agent PATH");
        return 1;
    }

    if (session && a->session == NULL) {
        *status = cli_usage_error(command, "missing --name");
        return 1;
    }
    if (!session && a->session) {
        *status = cli_usage_error(command, "--name belongs to `session run`");
        return 1;
    }
    a->path = argv[optind];
    options.args = (const char *const *)argv + optind + 1;
    options.arg_count = (size_t)(argc - optind - 1);
    options.env = env;
    options.env_count = env_count;
    a->options = options;
    return 0;
}

/* Prints a result as the execution_result event; returns the exit status. */
int cli_print_result(blink_result_t *result, const char *session)
{
    char *json = blink_result_to_json(result);
    int status = cli_exit_status_of(result);
    blink_result_free(result);
    json_t *event = json ? json_loads(json, JSON_ALLOW_NUL, NULL) : NULL;
    free(json);
    if (event == NULL) {
        blink_error_t oom = {.code = BLINK_E_NO_MEMORY, .message = "encode result"};
        return cli_fail(&oom);
    }
    if (session)
        json_object_set_new(event, "session", json_string(session));
    cli_print_event(event);
    return status;
}

int cmd_run(int argc, char **argv)
{
    cli_run_args_t args = {0};
    int status;
    if (cli_parse_run(argc, argv, "run", &args, &status))
        return status;

    blink_error_t err = {0};
    blink_t *blink = blink_open(NULL, &err);
    if (blink == NULL)
        return cli_fail(&err);

    blink_result_t *result = NULL;
    int rc = blink_run(blink, args.path, &args.options, &result, &err);
    blink_close(blink);
    if (rc < 0)
        return cli_fail(&err);
    return cli_print_result(result, NULL);
}
