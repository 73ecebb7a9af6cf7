/* The catalog over SQLite (https://sqlite.org/c3ref/intro.html). One
 * connection per handle; every statement is prepared with bound parameters
 * and finalized before the call returns, so a handle holds no statement
 * between calls and never keeps a read snapshot open. */
#include "catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* Readers wait this long for a writer (and writers for each other) before
 * a call fails with BLINK_E_BUSY. Catalog transactions last milliseconds. */
#define CATALOG_BUSY_TIMEOUT_MS 5000

/* An execution's `command` is a description for people, not the argv: keep
 * its head only, so a huge argv[0] from an API client cannot bloat the file. */
#define CATALOG_COMMAND_MAX 1024

struct blink_catalog {
    sqlite3 *db;
    char *path;
};

/* Schema steps, in order: step i takes the database from user_version i to
 * i + 1, and ends by recording that version itself (a PRAGMA cannot take a
 * bound parameter). A released step never changes, since databases in the
 * field have already run it: a new schema is a new step appended here. */
static const char *const migrations[] = {
    /* 1: sessions and the executions run in them. */
    "CREATE TABLE sessions ("
    "  name TEXT PRIMARY KEY NOT NULL"
    "    CHECK (length(name) BETWEEN 3 AND 32 AND name NOT GLOB '*[^A-Za-z0-9_-]*'),"
    "  image TEXT NOT NULL,"
    "  state TEXT NOT NULL CHECK (state IN ('" BLINK_STATE_STOPPED "', '" BLINK_STATE_STARTING
    "', '" BLINK_STATE_RUNNING "', '" BLINK_STATE_CRASHED "')),"
    "  warm INTEGER NOT NULL CHECK (warm IN (0, 1)),"
    "  memory_mib INTEGER NOT NULL,"
    "  cpus INTEGER NOT NULL,"
    "  disk_size_gib INTEGER NOT NULL,"
    "  shim_pid INTEGER NOT NULL DEFAULT 0,"
    "  qemu_pid INTEGER NOT NULL DEFAULT 0,"
    "  last_end TEXT NOT NULL DEFAULT '',"
    "  boot_id TEXT NOT NULL DEFAULT '',"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  started_at INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE TABLE executions ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  session TEXT NOT NULL REFERENCES sessions(name) ON DELETE CASCADE,"
    "  command TEXT NOT NULL,"
    "  started_at INTEGER NOT NULL,"
    "  finished_at INTEGER NULL,"
    "  exit_code INTEGER NULL,"
    "  signal INTEGER NULL,"
    "  timed_out INTEGER NOT NULL DEFAULT 0 CHECK (timed_out IN (0, 1))"
    ");"
    /* Serves the cascade on session delete and the count of active executions. */
    "CREATE INDEX executions_by_session ON executions(session, finished_at);"
    "PRAGMA user_version = 1;",
    /* 2: what qcow2 does not keep about checkpoints. */
    "CREATE TABLE checkpoints ("
    "  session TEXT NOT NULL REFERENCES sessions(name) ON DELETE CASCADE,"
    "  name TEXT NOT NULL"
    "    CHECK (length(name) BETWEEN 3 AND 32 AND name NOT GLOB '*[^A-Za-z0-9_-]*'),"
    "  created_at INTEGER NOT NULL,"
    "  size_bytes INTEGER NOT NULL,"
    "  memory INTEGER NOT NULL CHECK (memory IN (0, 1)),"
    "  PRIMARY KEY (session, name)"
    ");"
    "PRAGMA user_version = 2;",
    /* 3: the REST server's job queue. `request` is the job as the client
     * sent it (JSON text); `result` the execution_result JSON of a job that
     * ran to its end, `error` why one did not. Jobs run in id order. */
    "CREATE TABLE runs ("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  status TEXT NOT NULL"
    "    CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),"
    "  request TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  started_at INTEGER NULL,"
    "  finished_at INTEGER NULL,"
    "  result TEXT NULL,"
    "  error TEXT NULL"
    ");"
    "CREATE INDEX runs_by_status ON runs(status, id);"
    "PRAGMA user_version = 3;",
    /* 4: a checkpoint may live in a disk layer other than the session's
     * active disk (after a fork; docs/fork.md): its path under BLINK_HOME. */
    "ALTER TABLE checkpoints ADD COLUMN layer TEXT NULL;"
    "PRAGMA user_version = 4;",
};

#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

static int64_t now_ms(void)
{
    return (int64_t)(blink_wall_ns() / 1000000);
}

static void finalize_stmtp(sqlite3_stmt **stmt)
{
    sqlite3_finalize(*stmt); /* a no-op on NULL */
}

static void close_dbp(sqlite3 **db)
{
    sqlite3_close(*db); /* a no-op on NULL */
}

#define cleanup_stmt __attribute__((cleanup(finalize_stmtp)))
#define cleanup_db   __attribute__((cleanup(close_dbp)))

/* Maps an SQLite result code to a Blink error whose message ends with
 * SQLite's own. Constraint failures get the code their meaning has for
 * every statement here: a taken key exists, a missing parent is not found,
 * a failed CHECK is an invalid value. */
static int sql_fail(sqlite3 *db, int rc, blink_error_t *err, const char *fmt, ...)
    BLINK_PRINTF(4, 5);
static int sql_fail(sqlite3 *db, int rc, blink_error_t *err, const char *fmt, ...)
{
    char action[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(action, sizeof(action), fmt, ap);
    va_end(ap);

    blink_status_t code = BLINK_E_IO;
    int sys_errno = 0;
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        code = BLINK_E_BUSY;
        break;
    case SQLITE_NOMEM:
        code = BLINK_E_NO_MEMORY;
        break;
    case SQLITE_CONSTRAINT:
        if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
            code = BLINK_E_EXISTS;
        else if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
            code = BLINK_E_NOT_FOUND;
        else
            code = BLINK_E_INVALID;
        break;
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
        sys_errno = db ? sqlite3_system_errno(db) : 0;
        break;
    default:
        break;
    }
    const char *detail = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    return blink_fail(err, code, sys_errno, "[catalog] %s: %s", action, detail);
}

static int prepare(blink_catalog_t *catalog, const char *sql, sqlite3_stmt **stmt,
                   blink_error_t *err)
{
    int rc = sqlite3_prepare_v2(catalog->db, sql, -1, stmt, NULL);
    if (rc != SQLITE_OK)
        return sql_fail(catalog->db, rc, err, "prepare `%.60s`", sql);
    return 0;
}

/* Binds parameters by name and keeps the first failure, so a statement's
 * bindings read as a list and are checked once. */
typedef struct binder {
    sqlite3_stmt *stmt;
    int rc;
    const char *failed_param;
} binder_t;

static int param_index(binder_t *b, const char *param)
{
    if (b->rc != SQLITE_OK)
        return 0;

    int index = sqlite3_bind_parameter_index(b->stmt, param);
    if (index == 0) {
        b->rc = SQLITE_RANGE;
        b->failed_param = param;
    }
    return index;
}

static void bind_int64(binder_t *b, const char *param, int64_t value)
{
    int index = param_index(b, param);
    if (index == 0)
        return;

    b->rc = sqlite3_bind_int64(b->stmt, index, value);
    if (b->rc != SQLITE_OK)
        b->failed_param = param;
}

/* Binds at most `max` bytes of `text`: the fixed-size fields of a row are
 * bounded even if a caller forgot their terminator. SQLITE_STATIC is right
 * because every statement runs before the caller's strings go away. */
static void bind_text(binder_t *b, const char *param, const char *text, size_t max)
{
    int index = param_index(b, param);
    if (index == 0)
        return;

    size_t len = strnlen(text, max);
    b->rc = len <= INT_MAX ? sqlite3_bind_text(b->stmt, index, text, (int)len, SQLITE_STATIC)
                           : SQLITE_TOOBIG;
    if (b->rc != SQLITE_OK)
        b->failed_param = param;
}

static int binder_check(const binder_t *b, blink_error_t *err, const char *action)
{
    if (b->rc == SQLITE_OK)
        return 0;
    if (b->rc == SQLITE_NOMEM)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[catalog] %s: bind `%s`", action,
                          b->failed_param);
    return blink_fail(err, BLINK_E_INTERNAL, 0, "[catalog] %s: bind `%s`: %s", action,
                      b->failed_param, sqlite3_errstr(b->rc));
}

static int exec_sql(blink_catalog_t *catalog, const char *sql, blink_error_t *err,
                    const char *action)
{
    int rc = sqlite3_exec(catalog->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return sql_fail(catalog->db, rc, err, "%s", action);
    return 0;
}

/* Reads the single value of a one-row query (a PRAGMA) as an integer or,
 * when `text` is not NULL, as text. */
static int query_value(blink_catalog_t *catalog, const char *sql, int *number, char *text,
                       size_t text_size, blink_error_t *err)
{
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW)
        return sql_fail(catalog->db, rc == SQLITE_DONE ? SQLITE_ERROR : rc, err, "`%s`", sql);
    if (number)
        *number = sqlite3_column_int(stmt, 0);
    if (text) {
        const unsigned char *value = sqlite3_column_text(stmt, 0);
        snprintf(text, text_size, "%s", value ? (const char *)value : "");
    }
    return 0;
}

/* ---- opening ---- */

/* SQLite creates a database file 0644 minus the umask, and its -wal and
 * -shm files with the database file's mode. Creating the file ourselves at
 * 0600 (tightening one that exists) therefore makes all three private,
 * without touching the umask, which is process-wide and not thread-safe.
 *
 * An existing file is handled by path, never opened here: closing any
 * descriptor of a file drops every POSIX lock the process holds on it
 * (fcntl(2)), and so the SHARED lock of another connection this process
 * has open (a long-lived server opens several). Another process would then
 * take itself for the last user and delete the WAL under that connection. */
static int create_private_file(const char *path, blink_error_t *err)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        struct stat st;
        if (stat(path, &st) == 0) {
            if (!S_ISREG(st.st_mode))
                return blink_fail(err, BLINK_E_INVALID, 0,
                                  "[catalog] `%s` is not a regular file", path);
            if ((st.st_mode & 07777) != 0600 && chmod(path, 0600) < 0)
                return blink_fail(err, errno == EPERM ? BLINK_E_PERMISSION : BLINK_E_IO, errno,
                                  "[catalog] make `%s` private", path);
            return 0;
        }
        if (errno != ENOENT)
            return blink_fail(err, errno == EACCES ? BLINK_E_PERMISSION : BLINK_E_IO, errno,
                              "[catalog] stat `%s`", path);

        /* Missing: no connection of ours can have it open. */
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        if (errno != EEXIST) /* EEXIST: another process created it first; check it */
            return blink_fail(err, errno == EACCES ? BLINK_E_PERMISSION : BLINK_E_IO, errno,
                              "[catalog] create `%s`", path);
    }
    return blink_fail(err, BLINK_E_IO, 0, "[catalog] create `%s`: it keeps changing", path);
}

static int configure_connection(blink_catalog_t *catalog, blink_error_t *err)
{
    sqlite3_extended_result_codes(catalog->db, 1);
    sqlite3_busy_timeout(catalog->db, CATALOG_BUSY_TIMEOUT_MS);

    /* WAL lets readers go on while one process writes. The mode is stored in
     * the file; SQLite answers with the mode in force, which stays the old
     * one where WAL is impossible. */
    char mode[16];
    /* Switching a new file to WAL takes an exclusive lock without waiting
     * for the busy handler, so a process that opens the catalog while
     * another creates it retries for as long as any other call would wait. */
    uint64_t deadline = blink_now_ms() + CATALOG_BUSY_TIMEOUT_MS;
    for (;;) {
        blink_error_t local;
        if (query_value(catalog, "PRAGMA journal_mode = WAL", NULL, mode, sizeof(mode),
                        &local) == 0)
            break;
        if (local.code != BLINK_E_BUSY || blink_now_ms() >= deadline) {
            if (err)
                *err = local;
            return -1;
        }
        usleep(10 * 1000);
    }
    if (strcmp(mode, "wal") != 0)
        return blink_fail(err, BLINK_E_IO, 0,
                          "[catalog] `%s` cannot use WAL journaling (mode stays `%s`)",
                          catalog->path, mode);

    /* Both settings belong to the connection, not the file. In WAL mode,
     * NORMAL loses no integrity on power loss, only the last commits. */
    if (exec_sql(catalog, "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;", err,
                 "configure connection") < 0)
        return -1;

    /* Deleting a session relies on the cascade; an SQLite built without
     * foreign keys would accept the PRAGMA and ignore it. */
    int foreign_keys = 0;
    if (query_value(catalog, "PRAGMA foreign_keys", &foreign_keys, NULL, 0, err) < 0)
        return -1;
    if (foreign_keys != 1)
        return blink_fail(err, BLINK_E_MISSING_DEP, 0,
                          "[catalog] this sqlite does not enforce foreign keys");
    return 0;
}

static int refuse_newer(blink_catalog_t *catalog, int version, blink_error_t *err)
{
    return blink_fail(err, BLINK_E_INVALID, 0,
                      "catalog `%s` has schema version %d; this blink knows up to %d",
                      catalog->path, version, SCHEMA_VERSION);
}

static void rollback(blink_catalog_t *catalog)
{
    /* Some errors end the transaction themselves; ROLLBACK would then fail. */
    if (!sqlite3_get_autocommit(catalog->db))
        sqlite3_exec(catalog->db, "ROLLBACK", NULL, NULL, NULL);
}

/* Applies the next pending step, if any, in its own transaction. BEGIN
 * IMMEDIATE takes the write lock before the version is read, so of two
 * processes opening a fresh file, the second waits and then finds the
 * step done. Sets *done when the schema is current. */
static int migrate_one_step(blink_catalog_t *catalog, bool *done, blink_error_t *err)
{
    if (exec_sql(catalog, "BEGIN IMMEDIATE", err, "begin migration") < 0)
        return -1;

    int version = 0;
    if (query_value(catalog, "PRAGMA user_version", &version, NULL, 0, err) < 0)
        goto fail;
    if (version > SCHEMA_VERSION || version < 0) {
        refuse_newer(catalog, version, err);
        goto fail;
    }
    *done = version == SCHEMA_VERSION;
    if (*done) {
        rollback(catalog); /* nothing was written */
        return 0;
    }

    log_info("catalog", "migrating `%s` to schema version %d", catalog->path, version + 1);
    int rc = sqlite3_exec(catalog->db, migrations[version], NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        sql_fail(catalog->db, rc, err, "migrate `%s` to schema version %d", catalog->path,
                 version + 1);
        goto fail;
    }
    if (exec_sql(catalog, "COMMIT", err, "commit migration") < 0)
        goto fail;
    return 0;

fail:
    rollback(catalog);
    return -1;
}

static int migrate(blink_catalog_t *catalog, blink_error_t *err)
{
    /* The common case, a current schema, needs no write lock. */
    int version = 0;
    if (query_value(catalog, "PRAGMA user_version", &version, NULL, 0, err) < 0)
        return -1;
    if (version == SCHEMA_VERSION)
        return 0;
    if (version > SCHEMA_VERSION || version < 0)
        return refuse_newer(catalog, version, err);

    for (bool done = false; !done;)
        if (migrate_one_step(catalog, &done, err) < 0)
            return -1;
    return 0;
}

int blink_catalog_open(const char *path, blink_catalog_t **out, blink_error_t *err)
{
    *out = NULL;
    if (create_private_file(path, err) < 0)
        return -1;

    cleanup_db sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX;
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK)
        return sql_fail(db, rc, err, "open `%s`", path);

    blink_catalog_t *catalog = calloc(1, sizeof(*catalog));
    if (catalog == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[catalog] open `%s`", path);
    catalog->path = strdup(path);
    catalog->db = steal_pointer(&db); /* closed by blink_catalog_close from here on */
    if (catalog->path == NULL) {
        blink_catalog_close(catalog);
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[catalog] open `%s`", path);
    }

    if (configure_connection(catalog, err) < 0 || migrate(catalog, err) < 0) {
        blink_catalog_close(catalog);
        return -1;
    }
    *out = catalog;
    return 0;
}

void blink_catalog_close(blink_catalog_t *catalog)
{
    if (catalog == NULL)
        return;

    /* Every statement is finalized by the call that prepared it, so the
     * close cannot be deferred by one still open. */
    if (sqlite3_close(catalog->db) != SQLITE_OK)
        log_warn("catalog", "close `%s`: %s", catalog->path, sqlite3_errmsg(catalog->db));
    free(catalog->path);
    free(catalog);
}

/* ---- sessions ---- */

/* The columns read_session_row expects, in its order. */
#define SESSION_COLUMNS                                                                            \
    "name, image, state, warm, memory_mib, cpus, disk_size_gib, shim_pid, qemu_pid, "              \
    "last_end, boot_id, created_at, updated_at, started_at"

static void copy_text(sqlite3_stmt *stmt, int column, char *dst, size_t size)
{
    const unsigned char *text = sqlite3_column_text(stmt, column);
    snprintf(dst, size, "%s", text ? (const char *)text : "");
}

static void read_session_row(sqlite3_stmt *stmt, blink_session_row_t *row)
{
    memset(row, 0, sizeof(*row));
    copy_text(stmt, 0, row->name, sizeof(row->name));
    copy_text(stmt, 1, row->image, sizeof(row->image));
    copy_text(stmt, 2, row->state, sizeof(row->state));
    row->warm = sqlite3_column_int(stmt, 3) != 0;
    row->memory_mib = (unsigned)sqlite3_column_int64(stmt, 4);
    row->cpus = (unsigned)sqlite3_column_int64(stmt, 5);
    row->disk_size_gib = (unsigned)sqlite3_column_int64(stmt, 6);
    row->shim_pid = sqlite3_column_int64(stmt, 7);
    row->qemu_pid = sqlite3_column_int64(stmt, 8);
    copy_text(stmt, 9, row->last_end, sizeof(row->last_end));
    copy_text(stmt, 10, row->boot_id, sizeof(row->boot_id));
    row->created_at = sqlite3_column_int64(stmt, 11);
    row->updated_at = sqlite3_column_int64(stmt, 12);
    row->started_at = sqlite3_column_int64(stmt, 13);
}

/* The fields blink_catalog_session_set_state writes, shared with insert. */
static void bind_runtime_fields(binder_t *b, const blink_session_row_t *row)
{
    bind_text(b, ":state", row->state, sizeof(row->state));
    bind_int64(b, ":shim_pid", row->shim_pid);
    bind_int64(b, ":qemu_pid", row->qemu_pid);
    bind_text(b, ":last_end", row->last_end, sizeof(row->last_end));
    bind_text(b, ":boot_id", row->boot_id, sizeof(row->boot_id));
    bind_int64(b, ":started_at", row->started_at);
}

int blink_catalog_session_insert(blink_catalog_t *catalog, const blink_session_row_t *row,
                                 blink_error_t *err)
{
    static const char sql[] =
        "INSERT INTO sessions (" SESSION_COLUMNS ") VALUES (:name, :image, :state, :warm, "
        ":memory_mib, :cpus, :disk_size_gib, :shim_pid, :qemu_pid, :last_end, :boot_id, "
        ":created_at, :updated_at, :started_at)";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    /* A row keeps the creation time it brings (an imported session) and
     * gets the current time when it brings none. */
    int64_t now = now_ms();
    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":name", row->name, sizeof(row->name));
    bind_text(&b, ":image", row->image, sizeof(row->image));
    bind_int64(&b, ":warm", row->warm ? 1 : 0);
    bind_int64(&b, ":memory_mib", row->memory_mib);
    bind_int64(&b, ":cpus", row->cpus);
    bind_int64(&b, ":disk_size_gib", row->disk_size_gib);
    bind_int64(&b, ":created_at", row->created_at > 0 ? row->created_at : now);
    bind_int64(&b, ":updated_at", now);
    bind_runtime_fields(&b, row);
    if (binder_check(&b, err, "insert session") < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
        return blink_fail(err, BLINK_E_EXISTS, 0, "[catalog] session `%.32s` already exists",
                          row->name);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "insert session `%.32s`", row->name);
    return 0;
}

int blink_catalog_session_get(blink_catalog_t *catalog, const char *name, blink_session_row_t *row,
                              blink_error_t *err)
{
    static const char sql[] = "SELECT " SESSION_COLUMNS " FROM sessions WHERE name = :name";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":name", name, SIZE_MAX);
    if (binder_check(&b, err, "get session") < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE)
        return blink_fail(err, BLINK_E_NOT_FOUND, 0, "[catalog] no session `%s`", name);
    if (rc != SQLITE_ROW)
        return sql_fail(catalog->db, rc, err, "get session `%s`", name);

    read_session_row(stmt, row);
    return 0;
}

int blink_catalog_session_set_state(blink_catalog_t *catalog, const blink_session_row_t *row,
                                    blink_error_t *err)
{
    static const char sql[] =
        "UPDATE sessions SET state = :state, shim_pid = :shim_pid, qemu_pid = :qemu_pid, "
        "last_end = :last_end, boot_id = :boot_id, started_at = :started_at, "
        "updated_at = :updated_at WHERE name = :name";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":name", row->name, sizeof(row->name));
    bind_int64(&b, ":updated_at", now_ms());
    bind_runtime_fields(&b, row);
    if (binder_check(&b, err, "set session state") < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "set state of session `%.32s`", row->name);
    if (sqlite3_changes(catalog->db) == 0)
        return blink_fail(err, BLINK_E_NOT_FOUND, 0, "[catalog] no session `%.32s`", row->name);
    return 0;
}

int blink_catalog_session_delete(blink_catalog_t *catalog, const char *name, blink_error_t *err)
{
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, "DELETE FROM sessions WHERE name = :name", &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":name", name, SIZE_MAX);
    if (binder_check(&b, err, "delete session") < 0)
        return -1;

    /* The executions go with it: ON DELETE CASCADE, enforced because the
     * connection turned foreign keys on. */
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "delete session `%s`", name);
    if (sqlite3_changes(catalog->db) == 0)
        return blink_fail(err, BLINK_E_NOT_FOUND, 0, "[catalog] no session `%s`", name);
    return 0;
}

int blink_catalog_session_list(blink_catalog_t *catalog, blink_session_row_t **rows, size_t *count,
                               blink_error_t *err)
{
    *rows = NULL;
    *count = 0;
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, "SELECT " SESSION_COLUMNS " FROM sessions ORDER BY name", &stmt, err) < 0)
        return -1;

    cleanup_free blink_session_row_t *list = NULL;
    size_t listed = 0;
    size_t capacity = 0;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (listed == capacity) {
            size_t grown = capacity ? capacity * 2 : 16;
            blink_session_row_t *bigger =
                grown < SIZE_MAX / sizeof(*list) ? realloc(list, grown * sizeof(*list)) : NULL;
            if (bigger == NULL)
                return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[catalog] list sessions");
            list = bigger;
            capacity = grown;
        }
        read_session_row(stmt, &list[listed++]);
    }
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "list sessions");

    *rows = steal_pointer(&list);
    *count = listed;
    return 0;
}

/* ---- executions ---- */

/* How many bytes of `command` to keep: at most CATALOG_COMMAND_MAX, cut
 * before a UTF-8 continuation byte so the stored text stays valid. */
static size_t command_length(const char *command)
{
    size_t len = strnlen(command, CATALOG_COMMAND_MAX + 1);
    if (len <= CATALOG_COMMAND_MAX)
        return len;

    len = CATALOG_COMMAND_MAX;
    while (len > 0 && ((unsigned char)command[len] & 0xc0) == 0x80)
        len--;
    return len;
}

int64_t blink_catalog_execution_start(blink_catalog_t *catalog, const char *session,
                                      const char *command, blink_error_t *err)
{
    static const char sql[] = "INSERT INTO executions (session, command, started_at) "
                              "VALUES (:session, :command, :started_at)";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":session", session, SIZE_MAX);
    bind_text(&b, ":command", command, command_length(command));
    bind_int64(&b, ":started_at", now_ms());
    if (binder_check(&b, err, "start execution") < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        return blink_fail(err, BLINK_E_NOT_FOUND, 0, "[catalog] start execution: no session `%s`",
                          session);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "start execution in session `%s`", session);

    /* The handle is used by one thread at a time (catalog.h), so the last
     * rowid is this insert's. */
    return sqlite3_last_insert_rowid(catalog->db);
}

int blink_catalog_execution_finish(blink_catalog_t *catalog, int64_t id, int exit_code, int signal,
                                   bool timed_out, blink_error_t *err)
{
    /* The first end recorded stands: a later one (a shim reporting a kill
     * after the exit arrived) does not overwrite it. */
    static const char sql[] =
        "UPDATE executions SET finished_at = :finished_at, exit_code = :exit_code, "
        "signal = :signal, timed_out = :timed_out WHERE id = :id AND finished_at IS NULL";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_int64(&b, ":finished_at", now_ms());
    bind_int64(&b, ":exit_code", exit_code);
    bind_int64(&b, ":signal", signal);
    bind_int64(&b, ":timed_out", timed_out ? 1 : 0);
    bind_int64(&b, ":id", id);
    if (binder_check(&b, err, "finish execution") < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "finish execution %lld", (long long)id);
    if (sqlite3_changes(catalog->db) == 0)
        return blink_fail(err, BLINK_E_NOT_FOUND, 0, "[catalog] no unfinished execution %lld",
                          (long long)id);
    return 0;
}

int blink_catalog_execution_get(blink_catalog_t *catalog, const char *session, int64_t id,
                                blink_execution_row_t *row, blink_error_t *err)
{
    static const char sql[] = "SELECT finished_at IS NOT NULL, exit_code IS NOT NULL, "
                              "coalesce(exit_code, -1), coalesce(signal, 0), timed_out "
                              "FROM executions WHERE id = :id AND session = :session";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;
    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_int64(&b, ":id", id);
    bind_text(&b, ":session", session, SIZE_MAX);
    if (binder_check(&b, err, "read execution") < 0)
        return -1;
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE)
        return blink_fail(err, BLINK_E_NOT_FOUND, 0, "[catalog] no execution %lld in `%s`",
                          (long long)id, session);
    if (rc != SQLITE_ROW)
        return sql_fail(catalog->db, rc, err, "read execution %lld", (long long)id);
    row->finished = sqlite3_column_int64(stmt, 0) != 0;
    row->has_status = sqlite3_column_int64(stmt, 1) != 0;
    row->exit_code = (int)sqlite3_column_int64(stmt, 2);
    row->signal = (int)sqlite3_column_int64(stmt, 3);
    row->timed_out = sqlite3_column_int64(stmt, 4) != 0;
    return 0;
}

int blink_catalog_execution_active(blink_catalog_t *catalog, const char *session, int64_t *count,
                                   blink_error_t *err)
{
    static const char sql[] =
        "SELECT count(*) FROM executions WHERE session = :session AND finished_at IS NULL";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":session", session, SIZE_MAX);
    if (binder_check(&b, err, "count executions") < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW)
        return sql_fail(catalog->db, rc, err, "count executions of session `%s`", session);
    *count = sqlite3_column_int64(stmt, 0);
    return 0;
}

int blink_catalog_execution_abandon(blink_catalog_t *catalog, const char *session,
                                    blink_error_t *err)
{
    static const char sql[] =
        "UPDATE executions SET finished_at = :finished_at, exit_code = -1, signal = 9 "
        "WHERE session = :session AND finished_at IS NULL";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_int64(&b, ":finished_at", now_ms());
    bind_text(&b, ":session", session, SIZE_MAX);
    if (binder_check(&b, err, "abandon executions") < 0)
        return -1;
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "abandon executions of `%s`", session);
    return 0;
}

int blink_catalog_checkpoint_put(blink_catalog_t *catalog, const blink_checkpoint_row_t *row,
                                 blink_error_t *err)
{
    static const char sql[] =
        "INSERT OR REPLACE INTO checkpoints (session, name, created_at, size_bytes, memory, layer) "
        "VALUES (:session, :name, :created_at, :size_bytes, :memory, :layer)";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":session", row->session, sizeof(row->session));
    bind_text(&b, ":name", row->name, sizeof(row->name));
    bind_int64(&b, ":created_at", row->created_at);
    bind_int64(&b, ":size_bytes", row->size_bytes);
    bind_int64(&b, ":memory", row->memory ? 1 : 0);
    if (row->layer[0])
        bind_text(&b, ":layer", row->layer, sizeof(row->layer));
    if (binder_check(&b, err, "record checkpoint") < 0)
        return -1;
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "record checkpoint `%s`", row->name);
    return 0;
}

int blink_catalog_checkpoint_move(blink_catalog_t *catalog, const char *session, const char *from,
                                  const char *to, blink_error_t *err)
{
    static const char sql[] = "UPDATE checkpoints SET layer = :to WHERE session = :session "
                              "AND layer IS :from";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":session", session, SIZE_MAX);
    if (from)
        bind_text(&b, ":from", from, SIZE_MAX);
    if (to)
        bind_text(&b, ":to", to, SIZE_MAX);
    if (binder_check(&b, err, "move checkpoints") < 0)
        return -1;
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "move checkpoints of `%s`", session);
    return 0;
}

static void checkpoint_from_stmt(sqlite3_stmt *stmt, blink_checkpoint_row_t *row)
{
    copy_text(stmt, 0, row->session, sizeof(row->session));
    copy_text(stmt, 1, row->name, sizeof(row->name));
    row->created_at = sqlite3_column_int64(stmt, 2);
    row->size_bytes = sqlite3_column_int64(stmt, 3);
    row->memory = sqlite3_column_int64(stmt, 4) != 0;
    copy_text(stmt, 5, row->layer, sizeof(row->layer));
}

int blink_catalog_checkpoint_layered(blink_catalog_t *catalog, const char *session,
                                     blink_checkpoint_row_t **rows, size_t *count,
                                     blink_error_t *err)
{
    static const char sql[] = "SELECT session, name, created_at, size_bytes, memory, layer "
                              "FROM checkpoints WHERE layer IS NOT NULL "
                              "AND (:session IS NULL OR session = :session) ORDER BY created_at";
    *rows = NULL;
    *count = 0;
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;
    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    if (session)
        bind_text(&b, ":session", session, SIZE_MAX);
    if (binder_check(&b, err, "list checkpoints") < 0)
        return -1;

    size_t capacity = 0;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (*count == capacity) {
            capacity = capacity ? capacity * 2 : 8;
            blink_checkpoint_row_t *grown = realloc(*rows, capacity * sizeof(**rows));
            if (grown == NULL) {
                free(*rows);
                *rows = NULL;
                *count = 0;
                return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "list checkpoints");
            }
            *rows = grown;
        }
        checkpoint_from_stmt(stmt, &(*rows)[(*count)++]);
    }
    if (rc != SQLITE_DONE) {
        free(*rows);
        *rows = NULL;
        *count = 0;
        return sql_fail(catalog->db, rc, err, "list checkpoints");
    }
    return 0;
}

int blink_catalog_checkpoint_delete(blink_catalog_t *catalog, const char *session,
                                    const char *name, blink_error_t *err)
{
    static const char sql[] = "DELETE FROM checkpoints WHERE session = :session AND name = :name";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":session", session, SIZE_MAX);
    bind_text(&b, ":name", name, SIZE_MAX);
    if (binder_check(&b, err, "delete checkpoint") < 0)
        return -1;
    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "delete checkpoint `%s`", name);
    return 0;
}

int blink_catalog_checkpoint_get(blink_catalog_t *catalog, const char *session,
                                 const char *name, blink_checkpoint_row_t *row,
                                 blink_error_t *err)
{
    static const char sql[] = "SELECT session, name, created_at, size_bytes, memory, layer "
                              "FROM checkpoints WHERE session = :session AND name = :name";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":session", session, SIZE_MAX);
    bind_text(&b, ":name", name, SIZE_MAX);
    if (binder_check(&b, err, "read checkpoint") < 0)
        return -1;
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE)
        return blink_fail(err, BLINK_E_NOT_FOUND, 0, "[catalog] no checkpoint `%s`", name);
    if (rc != SQLITE_ROW)
        return sql_fail(catalog->db, rc, err, "read checkpoint `%s`", name);
    checkpoint_from_stmt(stmt, row);
    return 0;
}

/* ---- the server's job queue ---- */

#define RUN_COLUMNS "id, status, request, result, error, created_at, started_at, finished_at"

static char *dup_column(sqlite3_stmt *stmt, int column, bool *failed)
{
    const unsigned char *text = sqlite3_column_text(stmt, column);
    if (text == NULL)
        return NULL;
    char *copy = strdup((const char *)text);
    if (copy == NULL)
        *failed = true;
    return copy;
}

static int read_run_row(sqlite3_stmt *stmt, blink_run_row_t *row, blink_error_t *err)
{
    bool failed = false;
    memset(row, 0, sizeof(*row));
    row->id = sqlite3_column_int64(stmt, 0);
    copy_text(stmt, 1, row->status, sizeof(row->status));
    row->request = dup_column(stmt, 2, &failed);
    row->result = dup_column(stmt, 3, &failed);
    row->error = dup_column(stmt, 4, &failed);
    row->created_at = sqlite3_column_int64(stmt, 5);
    row->started_at = sqlite3_column_int64(stmt, 6);
    row->finished_at = sqlite3_column_int64(stmt, 7);
    if (row->request == NULL)
        failed = true;
    if (failed) {
        blink_catalog_run_row_clear(row);
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[catalog] read run");
    }
    return 0;
}

void blink_catalog_run_row_clear(blink_run_row_t *row)
{
    free(row->request);
    free(row->result);
    free(row->error);
    row->request = row->result = row->error = NULL;
}

int64_t blink_catalog_run_insert(blink_catalog_t *catalog, const char *request,
                                 blink_error_t *err)
{
    static const char sql[] = "INSERT INTO runs (status, request, created_at) "
                              "VALUES ('" BLINK_RUN_QUEUED "', :request, :created_at)";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":request", request, SIZE_MAX);
    bind_int64(&b, ":created_at", now_ms());
    if (binder_check(&b, err, "queue run") < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "queue run");
    return sqlite3_last_insert_rowid(catalog->db);
}

/* The two steps of a claim, inside the caller's transaction. */
static int claim_in_transaction(blink_catalog_t *catalog, blink_run_row_t *row,
                                blink_error_t *err)
{
    static const char pick[] = "SELECT " RUN_COLUMNS " FROM runs WHERE status = '"
                               BLINK_RUN_QUEUED "' ORDER BY id LIMIT 1";
    static const char mark[] = "UPDATE runs SET status = '" BLINK_RUN_RUNNING "', "
                               "started_at = :started_at WHERE id = :id";
    cleanup_stmt sqlite3_stmt *select = NULL;
    if (prepare(catalog, pick, &select, err) < 0)
        return -1;
    int rc = sqlite3_step(select);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc != SQLITE_ROW)
        return sql_fail(catalog->db, rc, err, "pick queued run");
    if (read_run_row(select, row, err) < 0)
        return -1;

    cleanup_stmt sqlite3_stmt *update = NULL;
    if (prepare(catalog, mark, &update, err) < 0)
        goto fail;
    binder_t b = {.stmt = update, .rc = SQLITE_OK};
    row->started_at = now_ms();
    bind_int64(&b, ":started_at", row->started_at);
    bind_int64(&b, ":id", row->id);
    if (binder_check(&b, err, "claim run") < 0)
        goto fail;
    rc = sqlite3_step(update);
    if (rc != SQLITE_DONE) {
        sql_fail(catalog->db, rc, err, "claim run %lld", (long long)row->id);
        goto fail;
    }
    snprintf(row->status, sizeof(row->status), "%s", BLINK_RUN_RUNNING);
    return 1;

fail:
    blink_catalog_run_row_clear(row);
    return -1;
}

int blink_catalog_run_claim(blink_catalog_t *catalog, blink_run_row_t *row, blink_error_t *err)
{
    /* IMMEDIATE takes the write lock before the read, so two claimers in
     * different processes never pick the same job. */
    if (exec_sql(catalog, "BEGIN IMMEDIATE", err, "begin claim") < 0)
        return -1;

    int claimed = claim_in_transaction(catalog, row, err);
    if (claimed <= 0) {
        rollback(catalog);
        return claimed;
    }
    if (exec_sql(catalog, "COMMIT", err, "commit claim") < 0) {
        rollback(catalog);
        blink_catalog_run_row_clear(row);
        return -1;
    }
    return 1;
}

int blink_catalog_run_finish(blink_catalog_t *catalog, int64_t id, const char *result,
                             const char *error, blink_error_t *err)
{
    static const char sql[] =
        "UPDATE runs SET status = :status, result = :result, error = :error, "
        "finished_at = :finished_at WHERE id = :id AND status = '" BLINK_RUN_RUNNING "'";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":status", result ? BLINK_RUN_SUCCEEDED : BLINK_RUN_FAILED, SIZE_MAX);
    if (result)
        bind_text(&b, ":result", result, SIZE_MAX);
    else
        bind_text(&b, ":error", error ? error : "unknown failure", SIZE_MAX);
    bind_int64(&b, ":finished_at", now_ms());
    bind_int64(&b, ":id", id);
    if (binder_check(&b, err, "finish run") < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "finish run %lld", (long long)id);
    if (sqlite3_changes(catalog->db) == 0)
        return blink_fail(err, BLINK_E_NOT_FOUND, 0, "[catalog] no running run %lld",
                          (long long)id);
    return 0;
}

int blink_catalog_run_get(blink_catalog_t *catalog, int64_t id, blink_run_row_t *row,
                          blink_error_t *err)
{
    static const char sql[] = "SELECT " RUN_COLUMNS " FROM runs WHERE id = :id";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_int64(&b, ":id", id);
    if (binder_check(&b, err, "get run") < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE)
        return blink_fail(err, BLINK_E_NOT_FOUND, 0, "[catalog] no run %lld", (long long)id);
    if (rc != SQLITE_ROW)
        return sql_fail(catalog->db, rc, err, "get run %lld", (long long)id);
    return read_run_row(stmt, row, err);
}

int blink_catalog_run_fail_running(blink_catalog_t *catalog, const char *reason, int64_t *count,
                                   blink_error_t *err)
{
    static const char sql[] =
        "UPDATE runs SET status = '" BLINK_RUN_FAILED "', error = :error, "
        "finished_at = :finished_at WHERE status = '" BLINK_RUN_RUNNING "'";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_text(&b, ":error", reason, SIZE_MAX);
    bind_int64(&b, ":finished_at", now_ms());
    if (binder_check(&b, err, "fail running runs") < 0)
        return -1;

    int rc = sqlite3_step(stmt);
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "fail running runs");
    if (count)
        *count = sqlite3_changes(catalog->db);
    return 0;
}

/* Runs take seconds under TCG and up to the 1-day cap; buckets in ms. */
const int64_t blink_run_duration_bounds_ms[BLINK_RUN_DURATION_BUCKETS] = {
    500, 1000, 2500, 5000, 10000, 30000, 120000, 600000,
};

int blink_catalog_run_recent(blink_catalog_t *catalog, unsigned limit, blink_run_row_t **rows,
                             size_t *count, blink_error_t *err)
{
    static const char sql[] = "SELECT " RUN_COLUMNS " FROM runs ORDER BY id DESC LIMIT :limit";
    cleanup_stmt sqlite3_stmt *stmt = NULL;
    *rows = NULL;
    *count = 0;
    if (prepare(catalog, sql, &stmt, err) < 0)
        return -1;

    binder_t b = {.stmt = stmt, .rc = SQLITE_OK};
    bind_int64(&b, ":limit", limit);
    if (binder_check(&b, err, "list runs") < 0)
        return -1;

    blink_run_row_t *out = calloc(limit ? limit : 1, sizeof(*out));
    if (out == NULL)
        return blink_fail(err, BLINK_E_NO_MEMORY, ENOMEM, "[catalog] list runs");
    size_t n = 0;
    int rc;
    while (n < limit && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (read_run_row(stmt, &out[n], err) < 0)
            goto fail;
        n++;
    }
    if (n < limit && rc != SQLITE_DONE) {
        sql_fail(catalog->db, rc, err, "list runs");
        goto fail;
    }
    *rows = out;
    *count = n;
    return 0;

fail:
    for (size_t i = 0; i < n; i++)
        blink_catalog_run_row_clear(&out[i]);
    free(out);
    return -1;
}

int blink_catalog_run_stats(blink_catalog_t *catalog, blink_run_stats_t *stats,
                            blink_error_t *err)
{
    static const char by_status[] = "SELECT status, count(*) FROM runs GROUP BY status";
    static const char durations[] =
        "SELECT finished_at - started_at FROM runs WHERE finished_at IS NOT NULL AND "
        "started_at IS NOT NULL AND status = '" BLINK_RUN_SUCCEEDED "'";
    memset(stats->count_by_status, 0, sizeof(stats->count_by_status));
    memset(stats->duration_buckets, 0, sizeof(stats->duration_buckets));
    stats->duration_count = 0;
    stats->duration_sum_ms = 0;

    cleanup_stmt sqlite3_stmt *stmt = NULL;
    if (prepare(catalog, by_status, &stmt, err) < 0)
        return -1;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(stmt, 0);
        static const char *const names[] = {BLINK_RUN_QUEUED, BLINK_RUN_RUNNING,
                                            BLINK_RUN_SUCCEEDED, BLINK_RUN_FAILED};
        for (int i = 0; i < 4; i++)
            if (status && strcmp(status, names[i]) == 0)
                stats->count_by_status[i] = sqlite3_column_int64(stmt, 1);
    }
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "count runs");

    cleanup_stmt sqlite3_stmt *times = NULL;
    if (prepare(catalog, durations, &times, err) < 0)
        return -1;
    while ((rc = sqlite3_step(times)) == SQLITE_ROW) {
        int64_t ms = sqlite3_column_int64(times, 0);
        stats->duration_count++;
        stats->duration_sum_ms += ms;
        for (int i = 0; i < BLINK_RUN_DURATION_BUCKETS; i++)
            if (ms <= blink_run_duration_bounds_ms[i])
                stats->duration_buckets[i]++;
    }
    if (rc != SQLITE_DONE)
        return sql_fail(catalog->db, rc, err, "run durations");
    return 0;
}
