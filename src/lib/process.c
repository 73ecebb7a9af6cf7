/* Running host helper programs (qemu-img) to completion, with their stderr
 * kept for the error message. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

int blink_run_program(char *const argv[], blink_error_t *err)
{
    return blink_run_program_output(argv, NULL, 0, err);
}

int blink_run_program_output(char *const argv[], char **out, size_t max, blink_error_t *err)
{
    int outpipe[2] = {-1, -1};
    if (out) {
        *out = NULL;
        if (pipe2(outpipe, O_CLOEXEC) < 0)
            return blink_fail(err, BLINK_E_IO, errno, "run `%s`", argv[0]);
    }
    int errpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) < 0) {
        int e = errno;
        if (out) {
            close(outpipe[0]);
            close(outpipe[1]);
        }
        return blink_fail(err, BLINK_E_IO, e, "run `%s`", argv[0]);
    }

    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(errpipe[0]);
        close(errpipe[1]);
        return blink_fail(err, BLINK_E_IO, e, "run `%s`", argv[0]);
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (devnull < 0 || dup2(devnull, 0) < 0 ||
            dup2(outpipe[1] >= 0 ? outpipe[1] : devnull, 1) < 0 || dup2(errpipe[1], 2) < 0)
            _exit(127);
        syscall(SYS_close_range, 3, ~0u, 0);
        execv(argv[0], argv);
        _exit(127);
    }
    close(errpipe[1]);
    blink_buf_t captured = {0};
    bool too_long = false;
    if (out) {
        close(outpipe[1]);
        char chunk[8192];
        for (;;) {
            ssize_t n = read(outpipe[0], chunk, sizeof(chunk));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            if (captured.len + (size_t)n > max)
                too_long = true;
            else if (blink_buf_append(&captured, chunk, (size_t)n) < 0)
                too_long = true;
        }
        close(outpipe[0]);
    }

    char output[2048];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(errpipe[0], output + len, sizeof(output) - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == sizeof(output) - 1) {
            char sink[4096];
            while (read(errpipe[0], sink, sizeof(sink)) > 0)
                ;
            break;
        }
    }
    close(errpipe[0]);
    output[len] = '\0';
    while (len > 0 && (output[len - 1] == '\n' || output[len - 1] == ' '))
        output[--len] = '\0';

    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return blink_fail(err, BLINK_E_IO, errno, "wait for `%s`", argv[0]);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        if (out == NULL)
            return 0;
        if (too_long || blink_buf_append(&captured, "", 1) < 0) {
            blink_buf_free(&captured);
            return blink_fail(err, BLINK_E_IO, 0, "`%s`: output over %zu bytes", argv[0], max);
        }
        *out = captured.data;
        return 0;
    }
    blink_buf_free(&captured);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127 && len == 0)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0, "run `%s`: cannot execute", argv[0]);
    return blink_fail(err, BLINK_E_IO, 0, "`%s` failed%s%s", argv[0], len ? ": " : "",
                      output);
}
