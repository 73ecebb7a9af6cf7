/* One logging facility for the library and its programs: levels, a component
 * tag, text or JSON lines on stderr. */
#include "internal.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int blink_log_threshold = BLINK_LOG_WARN;
static bool log_json;
static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

static void log_setup(void)
{
    const char *level = getenv("BLINK_LOG");
    if (level) {
        for (int i = 0; i < 4; i++)
            if (strcmp(level, level_names[i]) == 0)
                blink_log_threshold = i;
    }
    const char *format = getenv("BLINK_LOG_FORMAT");
    log_json = format && strcmp(format, "json") == 0;
}

void blink_log_init(void)
{
    pthread_once(&log_once, log_setup);
}

void blink_log_write(blink_log_level_t level, const char *component, const char *fmt, ...)
{
    char message[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[96];
    snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

    if (log_json) {
        json_t *line = json_pack("{s:s, s:s, s:i, s:s, s:s}", "time", stamp, "level",
                                 level_names[level], "pid", (int)getpid(), "component",
                                 component, "message", message);
        char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
        if (text)
            fprintf(stderr, "%s\n", text);
        free(text);
        json_decref(line);
        return;
    }
    fprintf(stderr, "%s blink[%d] %s [%s] %s\n", stamp, (int)getpid(), level_names[level],
            component, message);
}
