/* What lets a client come back to an execution: the bounded output history
 * of each execution (numbered chunks), attachments of clients other than
 * the one that started it, and ended executions kept with their exit status
 * for clients that attach late (docs/shim.md, Attach). */
#include "shim.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Flags of an Attach reply. */
#define ATTACH_EXITED 0x1u

size_t shim_exec_buffer_from_env(void)
{
    const char *text = getenv("BLINK_EXEC_HISTORY");
    if (text == NULL || *text == '\0')
        return SHIM_EXEC_BUFFER;

    char *end;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k')
        shift = 10;
    else if (*end == 'M' || *end == 'm')
        shift = 20;
    if (shift)
        end++;
    if (errno || end == text || *end != '\0' || text[0] == '-' || n > (1ull << 40) ||
        (n << shift) < SHIM_EXEC_BUFFER_MIN || (n << shift) > SHIM_EXEC_BUFFER_MAX) {
        log_warn("shim", "BLINK_EXEC_HISTORY `%s`: use %u KiB to %u MiB; keeping %u KiB", text,
                 SHIM_EXEC_BUFFER_MIN >> 10, SHIM_EXEC_BUFFER_MAX >> 20, SHIM_EXEC_BUFFER >> 10);
        return SHIM_EXEC_BUFFER;
    }
    return (size_t)(n << shift);
}

/* ---- history ---- */

static void free_history(shim_execution_t *e)
{
    while (e->first) {
        shim_chunk_t *next = e->first->next;
        free(e->first);
        e->first = next;
    }
    e->last = NULL;
    e->buffered = 0;
}

/* Keeps the chunk, numbered, dropping the oldest beyond the bound. A chunk
 * that cannot be kept still takes its number, so numbers stay those the
 * clients count. */
static void remember(shim_t *shim, shim_execution_t *e, uint8_t type, const uint8_t *data,
                     size_t len)
{
    uint64_t seq = ++e->next_seq;
    shim_chunk_t *chunk = malloc(sizeof(*chunk) + len);
    if (chunk == NULL)
        return;
    chunk->seq = seq;
    chunk->type = type;
    chunk->len = len;
    chunk->next = NULL;
    memcpy(chunk->data, data, len);
    if (e->last)
        e->last->next = chunk;
    else
        e->first = chunk;
    e->last = chunk;
    e->buffered += len;
    while (e->buffered > shim->exec_buffer && e->first != e->last) {
        shim_chunk_t *old = e->first;
        e->first = old->next;
        e->buffered -= old->len;
        free(old);
    }
}

void shim_execution_output(shim_t *shim, shim_execution_t *e, uint8_t type, const uint8_t *data,
                           size_t len)
{
    remember(shim, e, type, data, len);
    shim_send(shim, e->owner, type, e->client_id, data, len);
    for (int i = 0; i < SHIM_MAX_SUBSCRIBERS; i++) {
        shim_subscriber_t *s = &shim->subscribers[i];
        if (s->client && s->execution == e)
            shim_send(shim, s->client, type, s->client_id, data, len);
    }
}

/* ---- lifecycle ---- */

static void drop_subscribers(shim_t *shim, const shim_execution_t *e)
{
    for (int i = 0; i < SHIM_MAX_SUBSCRIBERS; i++)
        if (shim->subscribers[i].execution == e)
            memset(&shim->subscribers[i], 0, sizeof(shim->subscribers[i]));
}

void shim_execution_release(shim_t *shim, shim_execution_t *e)
{
    drop_subscribers(shim, e);
    free_history(e);
    memset(e, 0, sizeof(*e));
}

/* The ended execution that ended first, or NULL. */
static shim_execution_t *oldest_ended(shim_t *shim, int *ended)
{
    shim_execution_t *oldest = NULL;
    *ended = 0;
    for (int i = 0; i < SHIM_MAX_EXECUTIONS; i++) {
        shim_execution_t *e = &shim->executions[i];
        if (!e->used || !e->exited)
            continue;
        (*ended)++;
        if (oldest == NULL || e->exited_ms < oldest->exited_ms)
            oldest = e;
    }
    return oldest;
}

void shim_execution_ended(shim_t *shim, shim_execution_t *e, const uint8_t payload[12])
{
    memcpy(e->exit_payload, payload, sizeof(e->exit_payload));
    shim_send(shim, e->owner, BLIN_CTL_EXIT, e->client_id, payload, 12);
    for (int i = 0; i < SHIM_MAX_SUBSCRIBERS; i++) {
        shim_subscriber_t *s = &shim->subscribers[i];
        if (s->client && s->execution == e)
            shim_send(shim, s->client, BLIN_CTL_EXIT, s->client_id, payload, 12);
    }
    drop_subscribers(shim, e);

    /* Nobody can attach to an execution without an id: nothing to keep. */
    if (e->catalog_id <= 0) {
        shim_execution_release(shim, e);
        return;
    }
    e->exited = true;
    e->exited_ms = blink_now_ms();
    e->owner = NULL;
    e->deadline_ms = 0;

    int ended;
    shim_execution_t *oldest = oldest_ended(shim, &ended);
    if (ended > SHIM_MAX_FINISHED)
        shim_execution_release(shim, oldest);
}

shim_execution_t *shim_execution_slot(shim_t *shim)
{
    for (int i = 0; i < SHIM_MAX_EXECUTIONS; i++)
        if (!shim->executions[i].used)
            return &shim->executions[i];

    int ended;
    shim_execution_t *oldest = oldest_ended(shim, &ended);
    if (oldest)
        shim_execution_release(shim, oldest);
    return oldest;
}

shim_execution_t *shim_execution_of(shim_t *shim, shim_client_t *c, uint64_t client_id)
{
    for (int i = 0; i < SHIM_MAX_EXECUTIONS; i++) {
        shim_execution_t *e = &shim->executions[i];
        if (e->used && !e->exited && e->owner == c && e->client_id == client_id)
            return e;
    }
    for (int i = 0; i < SHIM_MAX_SUBSCRIBERS; i++) {
        shim_subscriber_t *s = &shim->subscribers[i];
        if (s->client == c && s->client_id == client_id)
            return s->execution;
    }
    return NULL;
}

int shim_executions_running(const shim_t *shim)
{
    int running = 0;
    for (int i = 0; i < SHIM_MAX_EXECUTIONS; i++)
        running += shim->executions[i].used && !shim->executions[i].exited;
    return running;
}

void shim_detach_client(shim_t *shim, shim_client_t *c)
{
    for (int i = 0; i < SHIM_MAX_SUBSCRIBERS; i++)
        if (shim->subscribers[i].client == c)
            memset(&shim->subscribers[i], 0, sizeof(shim->subscribers[i]));
}

/* ---- Attach ---- */

static shim_execution_t *find_by_id(shim_t *shim, uint64_t id)
{
    for (int i = 0; i < SHIM_MAX_EXECUTIONS; i++) {
        shim_execution_t *e = &shim->executions[i];
        if (e->used && e->catalog_id > 0 && (uint64_t)e->catalog_id == id)
            return e;
    }
    return NULL;
}

static bool client_alive(const shim_t *shim, const shim_client_t *c)
{
    for (int i = 0; i < SHIM_MAX_CLIENTS; i++)
        if (shim->clients[i] == c)
            return true;
    return false;
}

/* The steps, as the client (libblink's execution.c) reads them:
 * 1. the reply (first kept seq, last seq, flags), 2. the kept chunks after
 * `after`, in order, 3. Exit if the execution ended, else live output. */
void shim_client_attach(shim_t *shim, shim_client_t *c, const blin_header_t *h,
                        const uint8_t *payload)
{
    blin_cursor_t cur;
    blin_cursor_init(&cur, payload, h->length);
    uint64_t id = blin_get_u64(&cur);
    uint64_t after = blin_get_u64(&cur);
    if (cur.failed || cur.pos != cur.len) {
        shim_send_error(shim, c, h->request_id, EINVAL, "malformed attach request");
        return;
    }
    shim_execution_t *e = find_by_id(shim, id);
    if (e == NULL) {
        shim_send_error(shim, c, h->request_id, ENOENT, "no such execution in this vm");
        return;
    }
    if (shim_execution_of(shim, c, h->request_id) != NULL) {
        shim_send_error(shim, c, h->request_id, EBUSY, "request id already in use");
        return;
    }

    shim_subscriber_t *slot = NULL;
    for (int i = 0; i < SHIM_MAX_SUBSCRIBERS && slot == NULL && !e->exited; i++)
        if (shim->subscribers[i].client == NULL)
            slot = &shim->subscribers[i];
    if (slot == NULL && !e->exited) {
        shim_send_error(shim, c, h->request_id, EBUSY, "too many attached clients");
        return;
    }

    /* 1. */
    uint8_t reply[20];
    blin_writer_t w;
    blin_writer_init(&w);
    blin_put_u64(&w, e->first ? e->first->seq : e->next_seq + 1);
    blin_put_u64(&w, e->next_seq);
    blin_put_u32(&w, e->exited ? ATTACH_EXITED : 0);
    if (w.failed) {
        blin_writer_free(&w);
        shim_send_error(shim, c, h->request_id, ENOMEM, "attach");
        return;
    }
    memcpy(reply, w.data, sizeof(reply));
    blin_writer_free(&w);
    shim_send(shim, c, BLIN_SHIM_ATTACH, h->request_id, reply, sizeof(reply));

    /* 2. A replay larger than the client's queue closes the client. */
    for (shim_chunk_t *k = e->first; k && client_alive(shim, c); k = k->next)
        if (k->seq > after)
            shim_send(shim, c, k->type, h->request_id, k->data, k->len);
    if (!client_alive(shim, c))
        return;

    /* 3. */
    if (e->exited) {
        shim_send(shim, c, BLIN_CTL_EXIT, h->request_id, e->exit_payload, 12);
        return;
    }
    *slot = (shim_subscriber_t){.client = c, .client_id = h->request_id, .execution = e};
}
