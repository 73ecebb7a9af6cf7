/* blink-cli: one file per command group, dispatched from main.c. Every
 * command prints exactly one JSON object on stdout; messages go to stderr. */
#ifndef BLINK_CLI_H
#define BLINK_CLI_H

#include <blink/blink.h>

#include <jansson.h>

/* Exit statuses of blink-cli (docs/cli.md). An agent's own exit code passes
 * through unchanged; these mark what is not the agent's. */
enum {
    CLI_EXIT_USAGE = 2,      /* bad command line */
    CLI_EXIT_TIMEOUT = 124,  /* the agent ran out of time (as timeout(1)) */
    CLI_EXIT_FAILURE = 125,  /* Blink itself failed; see the error event */
    CLI_EXIT_SIGNAL_BASE = 128, /* the agent died of signal N: 128 + N */
};

/* Prints `event` (stealing the reference) as one line on stdout. */
void cli_print_event(json_t *event);

/* Prints {"event":"error",...} on stdout and the message on stderr; returns
 * the exit status for `err`. */
int cli_fail(const blink_error_t *err);

/* A usage error: message on stderr, error event on stdout, CLI_EXIT_USAGE. */
int cli_usage_error(const char *command, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define CLI_MAX_ENV 256

typedef struct cli_run_args {
    const char *path;
    const char *session; /* --name, for `session run` */
    blink_run_options_t options;
    const char *env[CLI_MAX_ENV];
} cli_run_args_t;

int cli_parse_run(int argc, char **argv, const char *command, cli_run_args_t *args,
                  int *status);
bool cli_parse_number(const char *text, unsigned long long min, unsigned long long max,
                      unsigned long long *out);
int cli_exit_status_of(const blink_result_t *result);
int cli_print_result(blink_result_t *result, const char *session);

int cmd_run(int argc, char **argv);
int cmd_session(int argc, char **argv);
int cmd_spawn(int argc, char **argv);
int cmd_fork(int argc, char **argv);
int cmd_serve(int argc, char **argv);

#endif
