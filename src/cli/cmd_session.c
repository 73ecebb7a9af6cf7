/* blink-cli session ...: named sandboxes with a persistent disk. */
#include "cli.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static json_t *info_json(const blink_session_info_t *i)
{
    return json_pack("{s:s, s:s, s:s, s:b, s:i, s:i, s:i, s:I, s:I, s:s, s:s, s:I, s:I}", "name",
                     i->name, "image", i->image, "state", i->state, "warm", i->warm, "memory_mib",
                     (int)i->memory_mib, "cpus", (int)i->cpus, "disk_size_gib",
                     (int)i->disk_size_gib, "shim_pid", (json_int_t)i->shim_pid, "qemu_pid",
                     (json_int_t)i->qemu_pid, "boot_id", i->boot_id, "last_end", i->last_end,
                     "created_at", (json_int_t)i->created_at, "started_at",
                     (json_int_t)i->started_at);
}

/* Options shared by the simple subcommands: --name, --force, open's settings. */
typedef struct session_args {
    const char *name;
    bool force;
    blink_session_options_t open;
    const char *snapshot;
    bool memory, disk_only, delete;
} session_args_t;

/* Which options a subcommand takes, beyond --name. */
enum {
    TAKES_OPEN = 1,     /* --image --warm --memory MIB --cpus --disk-size --vhub */
    TAKES_FORCE = 2,    /* --force */
    TAKES_SNAPSHOT = 4, /* --snapshot S */
    TAKES_KIND = 8,     /* --memory (flag) --disk-only --delete */
};

static int parse_session_args(int argc, char **argv, const char *command, int takes,
                              session_args_t *a, int *status)
{
    enum {
        OPT_NAME = 256,
        OPT_IMAGE,
        OPT_WARM,
        OPT_MEMORY,
        OPT_CPUS,
        OPT_FORCE,
        OPT_SNAPSHOT,
        OPT_MEMORY_FLAG,
        OPT_DISK_ONLY,
        OPT_DELETE,
        OPT_DISK_SIZE,
        OPT_VHUB
    };
    static const struct option open_options[] = {
        {"name", required_argument, NULL, OPT_NAME},
        {"image", required_argument, NULL, OPT_IMAGE},
        {"warm", no_argument, NULL, OPT_WARM},
        {"memory", required_argument, NULL, OPT_MEMORY},
        {"cpus", required_argument, NULL, OPT_CPUS},
        {"disk-size", required_argument, NULL, OPT_DISK_SIZE},
        {"vhub", required_argument, NULL, OPT_VHUB},
        {"force", no_argument, NULL, OPT_FORCE},
        {NULL, 0, NULL, 0},
    };
    /* For checkpoints, --memory is a flag, not a size. */
    static const struct option checkpoint_options[] = {
        {"name", required_argument, NULL, OPT_NAME},
        {"snapshot", required_argument, NULL, OPT_SNAPSHOT},
        {"memory", no_argument, NULL, OPT_MEMORY_FLAG},
        {"disk-only", no_argument, NULL, OPT_DISK_ONLY},
        {"delete", no_argument, NULL, OPT_DELETE},
        {NULL, 0, NULL, 0},
    };
    const struct option *all =
        (takes & (TAKES_KIND | TAKES_SNAPSHOT)) ? checkpoint_options : open_options;
    bool open_options_ok = (takes & TAKES_OPEN) != 0;
    bool force_option = (takes & TAKES_FORCE) != 0;
    unsigned long long n;
    int opt;

    a->open.struct_size = sizeof(a->open);
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", all, NULL)) != -1) {
        bool is_open = opt == OPT_IMAGE || opt == OPT_WARM || opt == OPT_MEMORY ||
                       opt == OPT_CPUS || opt == OPT_DISK_SIZE || opt == OPT_VHUB;
        bool is_snapshot = opt == OPT_SNAPSHOT;
        bool is_kind = opt == OPT_MEMORY_FLAG || opt == OPT_DISK_ONLY || opt == OPT_DELETE;
        if ((is_open && !open_options_ok) || (opt == OPT_FORCE && !force_option) ||
            (is_snapshot && !(takes & TAKES_SNAPSHOT)) || (is_kind && !(takes & TAKES_KIND)) ||
            opt == '?') {
            *status =
                cli_usage_error(command, "unknown or misplaced option `%s`", argv[optind - 1]);
            return 1;
        }
        switch (opt) {
        case OPT_NAME:
            a->name = optarg;
            break;
        case OPT_IMAGE:
            a->open.image = optarg;
            break;
        case OPT_WARM:
            a->open.warm = true;
            break;
        case OPT_MEMORY:
            if (!cli_parse_number(optarg, 128, 65536, &n)) {
                *status = cli_usage_error(command, "--memory `%s`: use 128-65536 MiB", optarg);
                return 1;
            }
            a->open.memory_mib = (unsigned)n;
            break;
        case OPT_CPUS:
            if (!cli_parse_number(optarg, 1, 64, &n)) {
                *status = cli_usage_error(command, "--cpus `%s`: use 1-64", optarg);
                return 1;
            }
            a->open.cpus = (unsigned)n;
            break;
        case OPT_DISK_SIZE:
            if (!cli_parse_number(optarg, 1, 1024, &n)) {
                *status = cli_usage_error(command, "--disk-size `%s`: use 1-1024 GiB", optarg);
                return 1;
            }
            a->open.disk_size_gib = (unsigned)n;
            break;
        case OPT_VHUB:
            a->open.vhub_socket = optarg;
            break;
        case OPT_FORCE:
            a->force = true;
            break;
        case OPT_SNAPSHOT:
            a->snapshot = optarg;
            break;
        case OPT_MEMORY_FLAG:
            a->memory = true;
            break;
        case OPT_DISK_ONLY:
            a->disk_only = true;
            break;
        case OPT_DELETE:
            a->delete = true;
            break;
        default:
            *status = cli_usage_error(command, "unknown option `%s`", argv[optind - 1]);
            return 1;
        }
    }
    if (optind < argc) {
        *status = cli_usage_error(command, "unexpected argument `%s`", argv[optind]);
        return 1;
    }
    if (a->name == NULL) {
        *status = cli_usage_error(command, "missing --name");
        return 1;
    }
    if ((takes & TAKES_SNAPSHOT) && a->snapshot == NULL) {
        *status = cli_usage_error(command, "missing --snapshot");
        return 1;
    }
    if (a->memory + a->disk_only + a->delete > 1) {
        *status = cli_usage_error(command, "--memory, --disk-only and --delete exclude each other");
        return 1;
    }
    return 0;
}

static int with_blink(blink_t **blink, blink_error_t *err)
{
    *blink = blink_open(NULL, err);
    return *blink ? 0 : -1;
}

static int session_open(int argc, char **argv)
{
    session_args_t a = {0};
    int status;
    if (parse_session_args(argc, argv, "session open", TAKES_OPEN, &a, &status))
        return status;

    blink_error_t err = {0};
    blink_t *blink;
    bool created = false;
    blink_session_info_t info;
    if (with_blink(&blink, &err) < 0 ||
        blink_session_open(blink, a.name, &a.open, &created, &err) < 0 ||
        blink_session_info(blink, a.name, &info, &err) < 0) {
        blink_close(blink);
        return cli_fail(&err);
    }
    blink_close(blink);

    json_t *event = info_json(&info);
    json_object_set_new(event, "event", json_string("session_opened"));
    json_object_set_new(event, "created", json_boolean(created));
    cli_print_event(event);
    return 0;
}

static int session_run(int argc, char **argv)
{
    cli_run_args_t args = {0};
    int status;
    if (cli_parse_run(argc, argv, "session run", &args, &status))
        return status;

    blink_error_t err = {0};
    blink_t *blink;
    blink_result_t *result = NULL;
    if (with_blink(&blink, &err) < 0 ||
        blink_session_run(blink, args.session, args.path, &args.options, &result, &err) < 0) {
        blink_close(blink);
        return cli_fail(&err);
    }
    blink_close(blink);
    return cli_print_result(result, args.session);
}

static int session_stop_or_remove(int argc, char **argv, bool remove)
{
    session_args_t a = {0};
    int status;
    const char *command = remove ? "session remove" : "session stop";
    if (parse_session_args(argc, argv, command, remove ? TAKES_FORCE : 0, &a, &status))
        return status;

    blink_error_t err = {0};
    blink_t *blink;
    int rc = with_blink(&blink, &err);
    if (rc == 0)
        rc = remove ? blink_session_remove(blink, a.name, a.force, &err)
                    : blink_session_stop(blink, a.name, &err);
    blink_close(blink);
    if (rc < 0)
        return cli_fail(&err);
    cli_print_event(json_pack("{s:s, s:s}", "event", remove ? "session_removed" : "session_stopped",
                              "name", a.name));
    return 0;
}

static int session_stop(int argc, char **argv)
{
    return session_stop_or_remove(argc, argv, false);
}

static int session_remove(int argc, char **argv)
{
    return session_stop_or_remove(argc, argv, true);
}

static int session_info(int argc, char **argv)
{
    session_args_t a = {0};
    int status;
    if (parse_session_args(argc, argv, "session info", 0, &a, &status))
        return status;

    blink_error_t err = {0};
    blink_t *blink;
    blink_session_info_t info;
    if (with_blink(&blink, &err) < 0 || blink_session_info(blink, a.name, &info, &err) < 0) {
        blink_close(blink);
        return cli_fail(&err);
    }
    blink_close(blink);
    cli_print_event(json_pack("{s:s, s:o}", "event", "session_info", "session", info_json(&info)));
    return 0;
}

static int session_ls(int argc, char **argv)
{
    if (argc > 1)
        return cli_usage_error("session ls", "unexpected argument `%s`", argv[1]);

    blink_error_t err = {0};
    blink_t *blink;
    blink_session_info_t *list = NULL;
    size_t count = 0;
    if (with_blink(&blink, &err) < 0 || blink_session_list(blink, &list, &count, &err) < 0) {
        blink_close(blink);
        return cli_fail(&err);
    }
    blink_close(blink);

    json_t *sessions = json_array();
    for (size_t i = 0; i < count; i++)
        json_array_append_new(sessions, info_json(&list[i]));
    free(list);
    cli_print_event(json_pack("{s:s, s:o}", "event", "session_list", "sessions", sessions));
    return 0;
}

static json_t *checkpoint_json(const char *session, const blink_checkpoint_info_t *c)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:b}", "session", session, "name", c->name, "id",
                     c->id, "created_at", (json_int_t)c->created_at, "size_bytes",
                     (json_int_t)c->size_bytes, "memory", c->memory);
}

static int session_checkpoint(int argc, char **argv)
{
    session_args_t a = {0};
    int status;
    if (parse_session_args(argc, argv, "session checkpoint", TAKES_SNAPSHOT | TAKES_KIND, &a,
                           &status))
        return status;

    blink_error_t err = {0};
    blink_t *blink;
    blink_checkpoint_info_t info;
    blink_checkpoint_kind_t kind = a.memory      ? BLINK_CHECKPOINT_MEMORY
                                   : a.disk_only ? BLINK_CHECKPOINT_DISK
                                                 : BLINK_CHECKPOINT_AUTO;
    int rc = with_blink(&blink, &err);
    if (rc == 0)
        rc = a.delete ? blink_session_delete_checkpoint(blink, a.name, a.snapshot, &err)
                      : blink_session_checkpoint(blink, a.name, a.snapshot, kind, &info, &err);
    blink_close(blink);
    if (rc < 0)
        return cli_fail(&err);
    if (a.delete) {
        cli_print_event(json_pack("{s:s, s:s, s:s}", "event", "checkpoint_deleted", "session",
                                  a.name, "name", a.snapshot));
        return 0;
    }
    json_t *event = checkpoint_json(a.name, &info);
    json_object_set_new(event, "event", json_string("session_checkpoint"));
    cli_print_event(event);
    return 0;
}

static int session_restore(int argc, char **argv)
{
    session_args_t a = {0};
    int status;
    if (parse_session_args(argc, argv, "session restore", TAKES_SNAPSHOT, &a, &status))
        return status;

    blink_error_t err = {0};
    blink_t *blink;
    blink_session_info_t info;
    if (with_blink(&blink, &err) < 0 ||
        blink_session_restore(blink, a.name, a.snapshot, &err) < 0 ||
        blink_session_info(blink, a.name, &info, &err) < 0) {
        blink_close(blink);
        return cli_fail(&err);
    }
    blink_close(blink);
    cli_print_event(json_pack("{s:s, s:s, s:s, s:s}", "event", "session_restored", "name", a.name,
                              "snapshot", a.snapshot, "state", info.state));
    return 0;
}

static int session_list(int argc, char **argv)
{
    session_args_t a = {0};
    int status;
    if (parse_session_args(argc, argv, "session list", 0, &a, &status))
        return status;

    blink_error_t err = {0};
    blink_t *blink;
    blink_checkpoint_info_t *list = NULL;
    size_t count = 0;
    if (with_blink(&blink, &err) < 0 ||
        blink_session_checkpoints(blink, a.name, &list, &count, &err) < 0) {
        blink_close(blink);
        return cli_fail(&err);
    }
    blink_close(blink);
    json_t *checkpoints = json_array();
    for (size_t i = 0; i < count; i++)
        json_array_append_new(checkpoints, checkpoint_json(a.name, &list[i]));
    free(list);
    cli_print_event(json_pack("{s:s, s:s, s:o}", "event", "session_checkpoints", "name", a.name,
                              "checkpoints", checkpoints));
    return 0;
}

/* A progress bar on stderr, only when it is a terminal. */
static void show_progress(uint64_t done, uint64_t total, void *userdata)
{
    static int last = -1;
    int percent = total ? (int)(done * 100 / total) : 100;
    if (percent == last)
        return;
    last = percent;
    char bar[41];
    int filled = percent * 40 / 100;
    for (int i = 0; i < 40; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[40] = '\0';
    fprintf(stderr, "\r%s [%s] %3d%% %llu/%llu MiB", (const char *)userdata, bar, percent,
            (unsigned long long)(done >> 20), (unsigned long long)(total >> 20));
    if (done >= total)
        fputc('\n', stderr);
    fflush(stderr);
}

static int transfer_args(int argc, char **argv, const char *command, bool import, const char **name,
                         const char **other, int *status)
{
    static const struct option options[] = {
        {"name", required_argument, NULL, 'n'},
        {"output", required_argument, NULL, 'o'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == 'n') {
            *name = optarg;
        } else if (opt == 'o' && !import) {
            *other = optarg;
        } else {
            *status = cli_usage_error(command, "unknown option `%s`", argv[optind - 1]);
            return 1;
        }
    }
    if (import) {
        if (optind != argc - 1) {
            *status = cli_usage_error(command, "give exactly one ARCHIVE");
            return 1;
        }
        *other = argv[optind];
    } else if (optind != argc || *name == NULL) {
        *status =
            cli_usage_error(command, optind != argc ? "unexpected argument" : "missing --name");
        return 1;
    }
    return 0;
}

static int session_export(int argc, char **argv)
{
    const char *name = NULL, *output = NULL;
    int status;
    if (transfer_args(argc, argv, "session export", false, &name, &output, &status))
        return status;

    blink_transfer_options_t options = {.struct_size = sizeof(options), .output = output};
    if (isatty(STDERR_FILENO)) {
        options.on_progress = show_progress;
        options.userdata = "export";
    }
    blink_error_t err = {0};
    blink_t *blink;
    char *path = NULL;
    uint64_t size = 0;
    if (with_blink(&blink, &err) < 0 ||
        blink_session_export(blink, name, &options, &path, &size, &err) < 0) {
        blink_close(blink);
        return cli_fail(&err);
    }
    blink_close(blink);
    cli_print_event(json_pack("{s:s, s:s, s:s, s:I}", "event", "session_exported", "name", name,
                              "path", path, "size_bytes", (json_int_t)size));
    free(path);
    return 0;
}

static int session_import(int argc, char **argv)
{
    const char *name = NULL, *archive = NULL;
    int status;
    if (transfer_args(argc, argv, "session import", true, &name, &archive, &status))
        return status;

    blink_transfer_options_t options = {.struct_size = sizeof(options), .name = name};
    if (isatty(STDERR_FILENO)) {
        options.on_progress = show_progress;
        options.userdata = "import";
    }
    blink_error_t err = {0};
    blink_t *blink;
    char *imported = NULL;
    blink_session_info_t info;
    if (with_blink(&blink, &err) < 0 ||
        blink_session_import(blink, archive, &options, &imported, &err) < 0 ||
        blink_session_info(blink, imported, &info, &err) < 0) {
        free(imported);
        blink_close(blink);
        return cli_fail(&err);
    }
    blink_close(blink);
    free(imported);
    json_t *event = info_json(&info);
    json_object_set_new(event, "event", json_string("session_imported"));
    cli_print_event(event);
    return 0;
}

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
} subcommands[] = {
    {"open", session_open,
     "open --name N [--image I] [--warm] [--memory MIB] [--cpus N] [--disk-size GIB] "
     "[--vhub SOCKET]"},
    {"run", session_run, "run --name N PATH [options] [-- ARGS...]"},
    {"spawn", cmd_spawn,
     "spawn --name N [--tty] [--rows R --cols C] [--env K=V]... "
     "[--workdir D] [--timeout S] -- CMD..."},
    {"checkpoint", session_checkpoint,
     "checkpoint --name N --snapshot S [--memory | --disk-only | --delete]"},
    {"restore", session_restore, "restore --name N --snapshot S"},
    {"fork", cmd_fork, "fork --name SRC --to DST [--snapshot S]   (copy-on-write)"},
    {"list", session_list, "list --name N   (the session's checkpoints)"},
    {"export", session_export, "export --name N [--output FILE]"},
    {"import", session_import, "import ARCHIVE [--name N]"},
    {"stop", session_stop, "stop --name N"},
    {"remove", session_remove, "remove --name N [--force]"},
    {"info", session_info, "info --name N"},
    {"ls", session_ls, "ls"},
};

int cmd_session(int argc, char **argv)
{
    const size_t count = sizeof(subcommands) / sizeof(subcommands[0]);
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        FILE *out = argc < 2 ? stderr : stdout;
        fprintf(out, "usage: blink-cli session SUBCOMMAND\n\n");
        for (size_t i = 0; i < count; i++)
            fprintf(out, "  session %s\n", subcommands[i].usage);
        if (argc < 2)
            return cli_usage_error("session", "missing a subcommand");
        return 0;
    }
    for (size_t i = 0; i < count; i++)
        if (strcmp(argv[1], subcommands[i].name) == 0)
            return subcommands[i].run(argc - 1, argv + 1);
    return cli_usage_error("session", "unknown subcommand `%s`", argv[1]);
}
