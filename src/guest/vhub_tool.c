/* blink-vhub: a guest program's way to the V-Hub from a shell.
 *
 *   blink-vhub [--socket PATH | --vsock] rpc METHOD [PARAMS_JSON]
 *   blink-vhub [--socket PATH | --vsock] log TEXT...
 *   blink-vhub [--socket PATH | --vsock] handshake
 *
 * Connects to $BLINK_VHUB_SOCKET (default /run/blink/vhub.sock), or to the
 * host over vsock (CID 2, port 10000), sends a Handshake, then the request.
 * `rpc` prints the answer's JSON and exits 0 for RpcResponse, 1 for
 * RpcError; `log` sends TEXT as Stdout and waits for a Heartbeat's echo, so
 * the hub has the line when the tool exits. Exit 2: bad usage; 3: no
 * connection or a broken answer. Static, like blink-guest, and copied onto
 * every VM's /run/blink/bin at boot (docs/vhub.md). */
#include "blin.h"
#include "caps.h"

#include <errno.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/blink/vhub.sock"
#define VSOCK_HOST_CID 2u
#define VSOCK_PORT     10000u
/* An answer slower than this means the hub is stuck; the tool gives up. */
#define ANSWER_TIMEOUT_SEC 60

enum { ID_HANDSHAKE = 1, ID_REQUEST = 2, ID_HEARTBEAT = 3 };
enum { EXIT_RPC_ERROR = 1, EXIT_USAGE = 2, EXIT_FAILED = 3 };

static int usage(void)
{
    fprintf(stderr, "usage: blink-vhub [--socket PATH | --vsock] rpc METHOD [PARAMS_JSON]\n"
                    "       blink-vhub [--socket PATH | --vsock] log TEXT...\n"
                    "       blink-vhub [--socket PATH | --vsock] handshake\n");
    return EXIT_USAGE;
}

static int connect_unix(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "blink-vhub: socket path `%s` is too long\n", path);
        return -1;
    }
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        fprintf(stderr, "blink-vhub: connect to `%s`: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int connect_vsock(void)
{
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VSOCK_HOST_CID,
                               .svm_port = VSOCK_PORT};
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        fprintf(stderr, "blink-vhub: connect to vsock %u:%u: %s\n", VSOCK_HOST_CID, VSOCK_PORT,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* Reads frames until the one with `id`; its payload is left in the decoder. */
static int await(int fd, blin_decoder_t *d, uint64_t id)
{
    uint8_t chunk[4096];
    size_t have = 0, used = 0;

    for (;;) {
        if (used == have) {
            ssize_t n = read(fd, chunk, sizeof(chunk));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                fprintf(stderr, "blink-vhub: %s\n",
                        n == 0 ? "the hub closed the connection" : strerror(errno));
                return -1;
            }
            have = (size_t)n;
            used = 0;
        }
        bool ready = false;
        long taken = blin_decoder_feed(d, chunk + used, have - used, &ready);
        if (taken < 0) {
            fprintf(stderr, "blink-vhub: bad answer: %s\n",
                    blin_decode_strerror((blin_decode_status_t)taken));
            return -1;
        }
        used += (size_t)taken;
        if (ready && d->header.request_id == id)
            return 0;
        if (ready && d->header.type == BLIN_ERROR) {
            fprintf(stderr, "blink-vhub: error: %.*s\n", (int)d->header.length, d->payload);
            return -1;
        }
    }
}

/* Appends `s` as a JSON string (with quotes) to buf; false when it does not fit. */
static bool json_string(char *buf, size_t size, size_t *len, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = *len;
    if (n + 1 >= size)
        return false;
    buf[n++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (n + 7 >= size)
            return false;
        if (*p == '"' || *p == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)*p;
        } else if (*p < 0x20) {
            memcpy(buf + n, "\\u00", 4);
            buf[n + 4] = hex[*p >> 4];
            buf[n + 5] = hex[*p & 15];
            n += 6;
        } else {
            buf[n++] = (char)*p;
        }
    }
    buf[n++] = '"';
    *len = n;
    return true;
}

static int do_rpc(int fd, blin_decoder_t *d, const char *method, const char *params)
{
    static char request[BLINK_CAP_BLIN_PAYLOAD];
    size_t len = 0;

    memcpy(request, "{\"method\":", 10);
    len = 10;
    if (!json_string(request, sizeof(request), &len, method) ||
        len + strlen(params) + 13 > sizeof(request)) {
        fprintf(stderr, "blink-vhub: request larger than %u bytes\n", BLINK_CAP_BLIN_PAYLOAD);
        return EXIT_USAGE;
    }
    /* PARAMS_JSON goes as given: the hub checks it and answers an error. */
    len += (size_t)snprintf(request + len, sizeof(request) - len, ",\"params\":%s}", params);
    if (blin_write_frame(fd, BLIN_RPC_REQUEST, ID_REQUEST, request, len) < 0 ||
        await(fd, d, ID_REQUEST) < 0)
        return EXIT_FAILED;
    printf("%.*s\n", (int)d->header.length, d->payload);
    return d->header.type == BLIN_RPC_RESPONSE ? 0 : EXIT_RPC_ERROR;
}

static int do_log(int fd, blin_decoder_t *d, int argc, char **argv)
{
    static char text[BLINK_CAP_OUTPUT_CHUNK];
    size_t len = 0;

    for (int i = 0; i < argc; i++) {
        int n = snprintf(text + len, sizeof(text) - len, "%s%s", i ? " " : "", argv[i]);
        if (n < 0 || (size_t)n >= sizeof(text) - len - 1) {
            fprintf(stderr, "blink-vhub: text longer than %zu bytes\n", sizeof(text) - 2);
            return EXIT_USAGE;
        }
        len += (size_t)n;
    }
    text[len++] = '\n';
    if (blin_write_frame(fd, BLIN_STDOUT, ID_REQUEST, text, len) < 0 ||
        blin_write_frame(fd, BLIN_HEARTBEAT, ID_HEARTBEAT, NULL, 0) < 0 ||
        await(fd, d, ID_HEARTBEAT) < 0)
        return EXIT_FAILED;
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = getenv("BLINK_VHUB_SOCKET");
    bool vsock = false;
    int i = 1;

    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--vsock") == 0)
            vsock = true;
        else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc)
            path = argv[++i];
        else
            return usage();
    }
    if (i >= argc)
        return usage();
    const char *command = argv[i++];
    bool rpc = strcmp(command, "rpc") == 0 && (argc - i == 1 || argc - i == 2);
    bool log = strcmp(command, "log") == 0 && argc - i >= 1;
    bool hello = strcmp(command, "handshake") == 0 && argc == i;
    if (!rpc && !log && !hello)
        return usage();

    int fd = vsock ? connect_vsock() : connect_unix(path && *path ? path : DEFAULT_SOCKET);
    if (fd < 0)
        return EXIT_FAILED;
    struct timeval timeout = {.tv_sec = ANSWER_TIMEOUT_SEC};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));

    blin_decoder_t d;
    blin_decoder_init(&d, BLINK_CAP_BLIN_PAYLOAD);
    int rc = EXIT_FAILED;
    if (blin_write_frame(fd, BLIN_HANDSHAKE, ID_HANDSHAKE, "{}", 2) == 0 &&
        await(fd, &d, ID_HANDSHAKE) == 0) {
        if (hello) {
            printf("%.*s\n", (int)d.header.length, d.payload);
            rc = 0;
        } else if (rpc) {
            rc = do_rpc(fd, &d, argv[i], argc - i == 2 ? argv[i + 1] : "null");
        } else {
            rc = do_log(fd, &d, argc - i, argv + i);
        }
    }
    blin_decoder_free(&d);
    close(fd);
    return rc;
}
