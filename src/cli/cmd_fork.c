/* blink-cli session fork --name SRC --to DST [--snapshot S] (docs/fork.md). */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>

int cmd_fork(int argc, char **argv)
{
    static const char command[] = "session fork";
    static const struct option options[] = {
        {"name", required_argument, NULL, 'n'},
        {"to", required_argument, NULL, 't'},
        {"snapshot", required_argument, NULL, 's'},
        {0, 0, 0, 0},
    };
    const char *source = NULL, *target = NULL, *snapshot = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+", options, NULL)) != -1) {
        switch (c) {
        case 'n':
            source = optarg;
            break;
        case 't':
            target = optarg;
            break;
        case 's':
            snapshot = optarg;
            break;
        default:
            return cli_usage_error(command, "unknown option `%s`", argv[optind - 1]);
        }
    }
    if (optind != argc)
        return cli_usage_error(command, "unexpected argument `%s`", argv[optind]);
    if (source == NULL || target == NULL)
        return cli_usage_error(command, "give --name SOURCE and --to TARGET");

    blink_error_t err = {0};
    blink_t *blink = blink_open(NULL, &err);
    blink_session_info_t info;
    if (blink == NULL || blink_session_fork(blink, source, target, snapshot, &err) < 0 ||
        blink_session_info(blink, target, &info, &err) < 0) {
        blink_close(blink);
        return cli_fail(&err);
    }
    blink_close(blink);
    cli_print_event(json_pack("{s:s, s:s, s:s, s:o, s:s, s:s}", "event", "session_forked", "name",
                              target, "source", source, "snapshot",
                              snapshot ? json_string(snapshot) : json_null(), "image", info.image,
                              "state", info.state));
    return 0;
}
