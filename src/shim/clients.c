/* The shim's clients: BLIN frames in from local sockets, relayed to the guest
 * under the shim's own request ids, and the guest's answers routed back. */
#include "shim.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>

/* ---- output to clients ---- */

static int flush_client(shim_client_t *c)
{
    while (c->out.len > c->out_offset) {
        ssize_t n = send(c->fd, c->out.data + c->out_offset, c->out.len - c->out_offset,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n < 0)
            return -1;
        c->out_offset += (size_t)n;
    }
    c->out.len = c->out_offset = 0;
    return 0;
}

/* A client that let its queue cap pile up is closed: the guest is never
 * held back for one slow reader. */
void shim_send(shim_t *shim, shim_client_t *c, uint8_t type, uint64_t id, const void *payload,
               size_t len)
{
    if (c == NULL)
        return;
    if (c->out.len - c->out_offset + len > shim->client_queue_cap) {
        log_warn("shim", "client fell %zu MiB behind; disconnecting it",
                 shim->client_queue_cap >> 20);
        shim_client_close(shim, c);
        return;
    }
    if (c->out_offset > 0 && c->out_offset == c->out.len)
        c->out.len = c->out_offset = 0;

    uint8_t header[BLIN_HEADER_SIZE];
    blin_header_t h = {.type = type, .length = (uint32_t)len, .request_id = id};
    blin_header_encode(&h, header);
    if (blink_buf_append(&c->out, header, sizeof(header)) < 0 ||
        blink_buf_append(&c->out, payload, len) < 0 || flush_client(c) < 0)
        shim_client_close(shim, c);
}

void shim_send_error(shim_t *shim, shim_client_t *c, uint64_t id, int code, const char *what)
{
    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_u32(&w, (uint32_t)code);
    blin_put_string(&w, what);
    if (!w.failed)
        shim_send(shim, c, BLIN_ERROR, id, w.data, w.len);
    blin_writer_free(&w);
}

/* ---- bookkeeping ---- */

static shim_execution_t *find_execution_by_guest(shim_t *shim, uint64_t guest_id)
{
    for (int i = 0; i < SHIM_MAX_EXECUTIONS; i++) {
        shim_execution_t *e = &shim->executions[i];
        if (e->used && !e->exited && e->guest_id == guest_id)
            return e;
    }
    return NULL;
}

static shim_transfer_t *find_transfer(shim_t *shim, shim_client_t *c, uint64_t client_id,
                                      uint64_t guest_id)
{
    for (int i = 0; i < SHIM_MAX_TRANSFERS; i++) {
        shim_transfer_t *t = &shim->transfers[i];
        if (!t->used)
            continue;
        if (c ? (t->owner == c && t->client_id == client_id) : t->guest_id == guest_id)
            return t;
    }
    return NULL;
}

/* ---- guest -> clients ---- */

static void on_guest_ready(shim_t *shim, const uint8_t *payload, uint32_t len)
{
    blin_cursor_t c;
    blin_cursor_init(&c, payload, len);
    uint32_t protocol = blin_get_u32(&c);
    free(blin_get_string(&c, 256));
    cleanup_free char *boot_id = blin_get_string(&c, 63);
    if (c.failed || protocol != 1) {
        log_error("shim", "[guest] bad ready message (protocol %u)", protocol);
        return;
    }
    snprintf(shim->boot_id, sizeof(shim->boot_id), "%s", boot_id);

    blink_error_t err;
    if (shim_send_init(shim, &err) < 0)
        log_error("shim", "send init to guest: %s", err.message);
    shim->ready = true;
}

int shim_send_init(shim_t *shim, blink_error_t *err)
{
    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_u64(&w, blink_wall_ns());
    blin_put_string(&w, shim->name);
    int rc = w.failed ? blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "encode init")
                      : blink_vm_send(shim->vm, BLIN_CTL_INIT, 0, w.data, w.len, err);
    blin_writer_free(&w);
    return rc;
}

static void on_guest_exit(shim_t *shim, shim_execution_t *e, const uint8_t *payload, uint32_t len)
{
    blin_cursor_t c;
    blin_cursor_init(&c, payload, len);
    int32_t code = (int32_t)blin_get_u32(&c);
    uint32_t signal = blin_get_u32(&c);
    uint32_t flags = blin_get_u32(&c);
    if (c.failed) {
        log_error("shim", "[guest] malformed exit message");
        return;
    }
    if (e->timed_out)
        flags |= BLIN_EXIT_TIMED_OUT;

    blink_error_t err;
    if (e->catalog_id > 0 &&
        blink_catalog_execution_finish(shim->catalog, e->catalog_id, signal ? -1 : code,
                                       (int)signal, e->timed_out, &err) < 0)
        log_warn("shim", "record execution end: %s", err.message);

    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_u32(&w, (uint32_t)code);
    blin_put_u32(&w, signal);
    blin_put_u32(&w, flags);
    if (w.failed)
        shim_execution_release(shim, e);
    else
        shim_execution_ended(shim, e, w.data);
    blin_writer_free(&w);
}

int shim_on_guest_frame(blink_vm_t *vm, const blin_header_t *h, const uint8_t *payload, void *data,
                        blink_error_t *err)
{
    shim_t *shim = data;
    (void)vm;
    (void)err;

    if (h->type == BLIN_CTL_READY) {
        on_guest_ready(shim, payload, h->length);
        return 0;
    }
    if (h->type == BLIN_CTL_FREEZE || (h->type == BLIN_ERROR && h->request_id == 0)) {
        blin_cursor_t c;
        blin_cursor_init(&c, payload, h->length);
        uint32_t code = blin_get_u32(&c);
        shim->freeze_reply = c.failed ? EPROTO : (int)(code ? code : 0);
        if (h->type == BLIN_ERROR && shim->freeze_reply == 0)
            shim->freeze_reply = EIO;
        return 0;
    }

    shim_transfer_t *t = find_transfer(shim, NULL, 0, h->request_id);
    if (t && (h->type == BLIN_CTL_FILE_DONE || h->type == BLIN_ERROR)) {
        shim_send(shim, t->owner, h->type, t->client_id, payload, h->length);
        memset(t, 0, sizeof(*t));
        return 0;
    }

    shim_execution_t *e = find_execution_by_guest(shim, h->request_id);
    if (e == NULL) {
        log_debug("shim", "guest %s frame for unknown request %llu", blin_type_name(h->type),
                  (unsigned long long)h->request_id);
        return 0;
    }
    switch (h->type) {
    case BLIN_STDOUT:
    case BLIN_STDERR:
        shim_execution_output(shim, e, h->type, payload, h->length);
        break;
    case BLIN_CTL_STARTED: {
        /* The guest's pid, and the id a client attaches with. */
        blin_writer_t w;
        blin_writer_init(&w);
        blin_put_bytes(&w, payload, h->length);
        blin_put_u64(&w, e->catalog_id > 0 ? (uint64_t)e->catalog_id : 0);
        if (!w.failed)
            shim_send(shim, e->owner, h->type, e->client_id, w.data, w.len);
        blin_writer_free(&w);
        break;
    }
    case BLIN_CTL_EXIT:
        on_guest_exit(shim, e, payload, h->length);
        break;
    case BLIN_ERROR:
        shim_send(shim, e->owner, h->type, e->client_id, payload, h->length);
        shim_execution_release(shim, e);
        break;
    default:
        log_debug("shim", "ignoring guest %s frame", blin_type_name(h->type));
    }
    return 0;
}

/* ---- clients -> guest ---- */

static void forward(shim_t *shim, shim_client_t *c, const blin_header_t *h, uint64_t guest_id,
                    const uint8_t *payload)
{
    blink_error_t err;
    if (blink_vm_send(shim->vm, h->type, guest_id, payload, h->length, &err) < 0)
        shim_send_error(shim, c, h->request_id, EIO, err.message);
}

/* The command an Exec runs, for the catalog: its argv[0]. */
static char *exec_command(const uint8_t *payload, uint32_t len)
{
    blin_cursor_t c;
    blin_cursor_init(&c, payload, len);
    blin_get_u32(&c);
    blin_get_u16(&c);
    blin_get_u16(&c);
    free(blin_get_string(&c, BLINK_CAP_EXEC_STRING));
    uint32_t argc = blin_get_u32(&c);
    if (c.failed || argc == 0)
        return NULL;
    return blin_get_string(&c, BLINK_CAP_EXEC_STRING);
}

static void client_exec(shim_t *shim, shim_client_t *c, const blin_header_t *h,
                        const uint8_t *payload)
{
    if (shim_execution_of(shim, c, h->request_id)) {
        shim_send_error(shim, c, h->request_id, EBUSY, "request id already in use");
        return;
    }
    shim_execution_t *e = shim_execution_slot(shim);
    if (e == NULL) {
        shim_send_error(shim, c, h->request_id, EBUSY, "too many executions in this vm");
        return;
    }

    e->used = true;
    e->guest_id = shim->next_guest_id++;
    e->owner = c;
    e->client_id = h->request_id;
    if (c->pending_timeout_id == h->request_id && c->pending_timeout_sec)
        e->deadline_ms = blink_now_ms() + (uint64_t)c->pending_timeout_sec * 1000;
    c->pending_timeout_id = 0;

    cleanup_free char *command = exec_command(payload, h->length);
    blink_error_t err;
    e->catalog_id =
        blink_catalog_execution_start(shim->catalog, shim->name, command ? command : "?", &err);
    if (e->catalog_id < 0)
        log_warn("shim", "record execution: %s", err.message);
    forward(shim, c, h, e->guest_id, payload);
}

static void client_file(shim_t *shim, shim_client_t *c, const blin_header_t *h,
                        const uint8_t *payload)
{
    shim_transfer_t *t = find_transfer(shim, c, h->request_id, 0);
    if (h->type == BLIN_CTL_FILE_BEGIN) {
        for (int i = 0; i < SHIM_MAX_TRANSFERS && t == NULL; i++)
            if (!shim->transfers[i].used)
                t = &shim->transfers[i];
        if (t == NULL || t->used) {
            shim_send_error(shim, c, h->request_id, EBUSY, "too many file transfers");
            return;
        }
        *t = (shim_transfer_t){.used = true,
                               .guest_id = shim->next_guest_id++,
                               .owner = c,
                               .client_id = h->request_id};
    } else if (t == NULL) {
        shim_send_error(shim, c, h->request_id, EINVAL, "file data without a file");
        return;
    }
    forward(shim, c, h, t->guest_id, payload);
}

static void client_info(shim_t *shim, shim_client_t *c, uint64_t id)
{
    int running = shim_executions_running(shim);
    json_t *info = json_pack("{s:s, s:s, s:I, s:I, s:i}", "name", shim->name, "boot_id",
                             shim->boot_id, "shim_pid", (json_int_t)getpid(), "qemu_pid",
                             (json_int_t)shim->vm->pid, "executions", running);
    char *text = info ? json_dumps(info, JSON_COMPACT) : NULL;
    if (text)
        shim_send(shim, c, BLIN_SHIM_INFO, id, text, strlen(text));
    free(text);
    json_decref(info);
}

/* Checkpoint, restore, delete and export: a name (or path), maybe flags. */
static void client_snapshot_op(shim_t *shim, shim_client_t *c, const blin_header_t *h,
                               const uint8_t *payload)
{
    blin_cursor_t cur;
    blin_cursor_init(&cur, payload, h->length);
    cleanup_free char *arg = blin_get_string(&cur, 4096);
    uint32_t flags = h->type == BLIN_SHIM_CHECKPOINT ? blin_get_u32(&cur) : 0;
    if (cur.failed || arg == NULL) {
        shim_send_error(shim, c, h->request_id, EINVAL, "malformed request");
        return;
    }
    bool is_name = h->type != BLIN_SHIM_EXPORT && h->type != BLIN_SHIM_LAYER;
    if (is_name && !blink_name_valid(arg)) {
        shim_send_error(shim, c, h->request_id, EINVAL, "bad checkpoint name");
        return;
    }

    blink_error_t err = {0};
    int rc;
    switch (h->type) {
    case BLIN_SHIM_CHECKPOINT:
        rc = shim_checkpoint(shim, arg, (flags & 1) != 0, &err);
        break;
    case BLIN_SHIM_RESTORE:
        rc = shim_restore(shim, arg, &err);
        break;
    case BLIN_SHIM_DELETE:
        rc = shim_delete_checkpoint(shim, arg, &err);
        break;
    case BLIN_SHIM_LAYER:
        rc = shim_add_layer(shim, arg, &err);
        break;
    default:
        rc = shim_copy_disk(shim, shim->disk_path, arg, &err);
        break;
    }
    if (rc < 0)
        shim_send_error(shim, c, h->request_id, err.sys_errno ? err.sys_errno : EIO, err.message);
    else
        shim_send(shim, c, h->type, h->request_id, NULL, 0);
}

static void client_frame(shim_t *shim, shim_client_t *c, const blin_header_t *h,
                         const uint8_t *payload)
{
    if (!shim->ready || shim->stopping) {
        shim_send_error(shim, c, h->request_id, EAGAIN, "the vm is not running");
        return;
    }
    switch (h->type) {
    case BLIN_HEARTBEAT:
        shim_send(shim, c, BLIN_HEARTBEAT, h->request_id, payload, h->length);
        break;
    case BLIN_SHIM_INFO:
        client_info(shim, c, h->request_id);
        break;
    case BLIN_SHIM_STOP:
        shim_begin_stop(shim);
        break;
    case BLIN_SHIM_CHECKPOINT:
    case BLIN_SHIM_RESTORE:
    case BLIN_SHIM_DELETE:
    case BLIN_SHIM_EXPORT:
    case BLIN_SHIM_LAYER:
        client_snapshot_op(shim, c, h, payload);
        break;
    case BLIN_SHIM_EXEC_OPTIONS: {
        blin_cursor_t cur;
        blin_cursor_init(&cur, payload, h->length);
        c->pending_timeout_sec = blin_get_u32(&cur);
        c->pending_timeout_id = cur.failed ? 0 : h->request_id;
        break;
    }
    case BLIN_CTL_FILE_BEGIN:
    case BLIN_CTL_FILE_DATA:
        client_file(shim, c, h, payload);
        break;
    case BLIN_CTL_EXEC:
        client_exec(shim, c, h, payload);
        break;
    case BLIN_SHIM_ATTACH:
        shim_client_attach(shim, c, h, payload);
        break;
    case BLIN_CTL_STDIN:
    case BLIN_CTL_SIGNAL:
    case BLIN_TTY_RESIZE: {
        shim_execution_t *e = shim_execution_of(shim, c, h->request_id);
        if (e == NULL)
            shim_send_error(shim, c, h->request_id, ESRCH, "no such execution");
        else
            forward(shim, c, h, e->guest_id, payload);
        break;
    }
    default:
        shim_send_error(shim, c, h->request_id, EINVAL, "unexpected message type");
    }
}

/* ---- connections ---- */

void shim_accept(shim_t *shim)
{
    int fd = accept4(shim->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0)
        return;

    for (int i = 0; i < SHIM_MAX_CLIENTS; i++) {
        if (shim->clients[i] != NULL)
            continue;
        shim_client_t *c = calloc(1, sizeof(*c));
        if (c == NULL)
            break;
        c->fd = fd;
        blin_decoder_init(&c->decoder, BLINK_CAP_BLIN_PAYLOAD);
        shim->clients[i] = c;
        shim->had_client = true;
        return;
    }
    log_warn("shim", "refusing a client: %d connected", SHIM_MAX_CLIENTS);
    close(fd);
}

void shim_client_close(shim_t *shim, shim_client_t *c)
{
    for (int i = 0; i < SHIM_MAX_CLIENTS; i++)
        if (shim->clients[i] == c)
            shim->clients[i] = NULL;
    shim_detach_client(shim, c);
    /* Executions outlive their client in a warm VM; in a cold one nobody
     * would ever see them end, so they are killed. Transfers cannot finish
     * without their client. */
    for (int i = 0; i < SHIM_MAX_EXECUTIONS; i++) {
        shim_execution_t *e = &shim->executions[i];
        if (e->owner != c)
            continue;
        e->owner = NULL;
        if (shim->cold && e->used && !e->exited) {
            uint8_t payload[4] = {SIGKILL, 0, 0, 0};
            blink_error_t err;
            blink_vm_send(shim->vm, BLIN_CTL_SIGNAL, e->guest_id, payload, sizeof(payload),
                          &err);
        }
    }
    for (int i = 0; i < SHIM_MAX_TRANSFERS; i++)
        if (shim->transfers[i].owner == c)
            memset(&shim->transfers[i], 0, sizeof(shim->transfers[i]));
    close(c->fd);
    blin_decoder_free(&c->decoder);
    blink_buf_free(&c->out);
    free(c);
}

void shim_client_io(shim_t *shim, shim_client_t *c, short revents)
{
    if ((revents & POLLOUT) && flush_client(c) < 0) {
        shim_client_close(shim, c);
        return;
    }
    if (!(revents & (POLLIN | POLLHUP | POLLERR)))
        return;

    uint8_t chunk[65536];
    ssize_t n = recv(c->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        shim_client_close(shim, c);
        return;
    }
    for (size_t off = 0; off < (size_t)n;) {
        bool ready = false;
        long used = blin_decoder_feed(&c->decoder, chunk + off, (size_t)n - off, &ready);
        if (used < 0) {
            shim_send_error(shim, c, 0, EPROTO, blin_decode_strerror((blin_decode_status_t)used));
            flush_client(c);
            shim_client_close(shim, c);
            return;
        }
        off += (size_t)used;
        if (ready)
            client_frame(shim, c, &c->decoder.header, c->decoder.payload);
        /* The frame may have closed this client (its queue overflowed). */
        bool alive = false;
        for (int i = 0; i < SHIM_MAX_CLIENTS; i++)
            alive |= shim->clients[i] == c;
        if (!alive)
            return;
    }
}

void shim_enforce_timeouts(shim_t *shim)
{
    uint64_t now = blink_now_ms();
    for (int i = 0; i < SHIM_MAX_EXECUTIONS; i++) {
        shim_execution_t *e = &shim->executions[i];
        if (!e->used || e->exited || e->deadline_ms == 0 || now < e->deadline_ms ||
            e->timed_out)
            continue;
        e->timed_out = true;
        uint8_t payload[4] = {SIGKILL, 0, 0, 0};
        blink_error_t err;
        log_info("shim", "execution %llu timed out; killing it", (unsigned long long)e->guest_id);
        blink_vm_send(shim->vm, BLIN_CTL_SIGNAL, e->guest_id, payload, sizeof(payload), &err);
    }
}

void shim_fail_all(shim_t *shim, const char *why)
{
    for (int i = 0; i < SHIM_MAX_EXECUTIONS; i++) {
        shim_execution_t *e = &shim->executions[i];
        if (!e->used)
            continue;
        if (!e->exited) {
            shim_send_error(shim, e->owner, e->client_id, EPIPE, why);
            for (int k = 0; k < SHIM_MAX_SUBSCRIBERS; k++)
                if (shim->subscribers[k].execution == e)
                    shim_send_error(shim, shim->subscribers[k].client,
                                    shim->subscribers[k].client_id, EPIPE, why);
        }
        blink_error_t err;
        if (e->catalog_id > 0 && !e->exited)
            blink_catalog_execution_finish(shim->catalog, e->catalog_id, -1, SIGKILL, false, &err);
        shim_execution_release(shim, e);
    }
    for (int i = 0; i < SHIM_MAX_TRANSFERS; i++)
        if (shim->transfers[i].used) {
            shim_send_error(shim, shim->transfers[i].owner, shim->transfers[i].client_id, EPIPE,
                            why);
            memset(&shim->transfers[i], 0, sizeof(shim->transfers[i]));
        }
    for (int i = 0; i < SHIM_MAX_CLIENTS; i++)
        if (shim->clients[i])
            flush_client(shim->clients[i]);
}

void shim_begin_stop(shim_t *shim)
{
    if (shim->stopping)
        return;
    shim->stopping = true;
    shim->stop_deadline_ms = blink_now_ms() + 10000;
    uint8_t payload[4] = {0};
    blink_error_t err;
    if (blink_vm_send(shim->vm, BLIN_CTL_SHUTDOWN, 0, payload, sizeof(payload), &err) < 0)
        shim->stop_deadline_ms = blink_now_ms();
}
