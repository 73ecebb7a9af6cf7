/* Runs an agent with libblink and prints what it wrote and how it ended.
 *
 *   cc run_agent.c $(pkg-config --cflags --libs libblink) -o run-agent
 *   ./run-agent examples/agents/hello.py
 */
#include <blink/blink.h>

#include <stdio.h>

static void show(blink_stream_t stream, const char *data, size_t len, void *userdata)
{
    (void)userdata;
    fprintf(stderr, "[%s] %.*s", stream == BLINK_STDOUT ? "out" : "err", (int)len, data);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s AGENT [ARGS...]\n", argv[0]);
        return 2;
    }

    blink_error_t err = {0};
    blink_t *blink = blink_open(NULL, &err);
    if (blink == NULL) {
        char text[1200];
        fprintf(stderr, "blink: %s\n", blink_error_format(&err, text, sizeof(text)));
        return 1;
    }

    blink_run_options_t options = {
        .struct_size = sizeof(options),
        .timeout_sec = 60,
        .args = (const char *const *)argv + 2,
        .arg_count = (size_t)(argc - 2),
        .on_output = show,
    };
    blink_result_t *result = NULL;
    if (blink_run(blink, argv[1], &options, &result, &err) < 0) {
        char text[1200];
        fprintf(stderr, "blink: %s\n", blink_error_format(&err, text, sizeof(text)));
        blink_close(blink);
        return 1;
    }

    printf("exit code %d after %llu ms\n", blink_result_exit_code(result),
           (unsigned long long)blink_result_duration_ms(result));
    blink_result_free(result);
    blink_close(blink);
    return 0;
}
