/* blink-cli entry point: finds the command and hands it the arguments. */
#include "cli.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command_t;

static const command_t commands[] = {
    {"run", cmd_run, "run PATH [options] [-- ARGS...]   run an agent in a fresh VM"},
    {"serve", cmd_serve, "serve --socket PATH [--handler CMD]  the V-Hub host side"},
    {"session", cmd_session,
     "session SUBCOMMAND ...          named sandboxes (see session --help)"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: blink-cli COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %s\n", commands[i].summary);
    fprintf(out, "\nEach command prints one JSON object on stdout. See docs/cli.md.\n");
}

void cli_print_event(json_t *event)
{
    char *text = event ? json_dumps(event, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (text) {
        fputs(text, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    free(text);
    json_decref(event);
}

static const struct {
    blink_status_t code;
    const char *name;
} code_names[] = {
    {BLINK_E_INVALID, "invalid"},
    {BLINK_E_NOT_FOUND, "not_found"},
    {BLINK_E_EXISTS, "exists"},
    {BLINK_E_BUSY, "busy"},
    {BLINK_E_IO, "io"},
    {BLINK_E_NO_MEMORY, "no_memory"},
    {BLINK_E_PROTOCOL, "protocol"},
    {BLINK_E_VM, "vm"},
    {BLINK_E_TIMEOUT, "timeout"},
    {BLINK_E_MISSING_DEP, "missing_dependency"},
    {BLINK_E_PERMISSION, "permission"},
    {BLINK_E_NOT_SETUP, "not_setup"},
    {BLINK_E_INTERNAL, "internal"},
};

int cli_fail(const blink_error_t *err)
{
    char text[1400];
    const char *code = "internal";
    for (size_t i = 0; i < sizeof(code_names) / sizeof(code_names[0]); i++)
        if (code_names[i].code == err->code)
            code = code_names[i].name;

    blink_error_format(err, text, sizeof(text));
    fprintf(stderr, "blink-cli: error: %s\n", text);
    cli_print_event(json_pack("{s:s, s:s, s:s}", "event", "error", "error", text, "code", code));
    return CLI_EXIT_FAILURE;
}

int cli_usage_error(const char *command, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);

    fprintf(stderr, "blink-cli %s: %s (see blink-cli %s --help)\n", command, text, command);
    cli_print_event(json_pack("{s:s, s:s, s:s}", "event", "error", "error", text, "code", "usage"));
    return CLI_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    /* Writes to a closed pipe are errors to handle, not a reason to die. */
    signal(SIGPIPE, SIG_IGN);

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("blink-cli %s\n", BLINK_VERSION_STRING);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);

    usage(stderr);
    return cli_usage_error(argv[1], "unknown command");
}
