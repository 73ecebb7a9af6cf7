/* The catalog: schema creation and migration guard, session and execution
 * rows, several handles and processes on one file, and the file's mode.
 * Every database lives in a fresh temporary directory removed at the end. */
#include "unit.h"

#include "catalog.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char *db_path(const char *dir, const char *name)
{
    char *path = blink_strdup_printf("%s/%s", dir, name);
    if (path == NULL)
        abort();
    return path;
}

static blink_session_row_t make_row(const char *name)
{
    blink_session_row_t row = {0};
    snprintf(row.name, sizeof(row.name), "%s", name);
    snprintf(row.image, sizeof(row.image), "%s", "debian-12");
    snprintf(row.state, sizeof(row.state), "%s", BLINK_STATE_STOPPED);
    row.warm = true;
    row.memory_mib = 512;
    row.cpus = 2;
    row.disk_size_gib = 8;
    return row;
}

/* Reads one integer with a connection of the test's own, to see what the
 * catalog stored without going through it. */
static int64_t raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    int64_t value = -1;
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
}

static int raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc;
}

static unsigned file_mode(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return 0;
    return (unsigned)(st.st_mode & 07777);
}

static void test_fresh_database(const char *dir)
{
    cleanup_free char *path = db_path(dir, "fresh.db");
    blink_catalog_t *catalog = NULL;
    blink_error_t err = {0};
    CHECK(blink_catalog_open(path, &catalog, &err) == 0);
    if (catalog == NULL) {
        fprintf(stderr, "open: %s\n", err.message);
        return;
    }

    /* Migrated to version 1, in WAL mode, with both tables. */
    CHECK(raw_int(path, "PRAGMA user_version") == 4);
    CHECK(raw_int(path, "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND "
                        "name IN ('sessions', 'executions')") == 2);
    CHECK(raw_int(path, "SELECT journal_mode = 'wal' FROM pragma_journal_mode") == 1);
    blink_catalog_close(catalog);

    /* Opening again applies nothing and keeps the version. */
    CHECK(blink_catalog_open(path, &catalog, &err) == 0);
    CHECK(raw_int(path, "PRAGMA user_version") == 4);
    blink_catalog_close(catalog);
}

static void test_sessions(blink_catalog_t *catalog, const char *path)
{
    blink_error_t err = {0};
    blink_session_row_t beta = make_row("beta");
    blink_session_row_t alpha = make_row("alpha_1-x");
    alpha.warm = false;
    alpha.created_at = 1234; /* an imported session keeps its creation time */
    CHECK(blink_catalog_session_insert(catalog, &beta, &err) == 0);
    CHECK(blink_catalog_session_insert(catalog, &alpha, &err) == 0);

    blink_session_row_t got;
    CHECK(blink_catalog_session_get(catalog, "beta", &got, &err) == 0);
    CHECK(strcmp(got.name, "beta") == 0 && strcmp(got.image, "debian-12") == 0);
    CHECK(strcmp(got.state, BLINK_STATE_STOPPED) == 0 && got.warm);
    CHECK(got.memory_mib == 512 && got.cpus == 2 && got.disk_size_gib == 8);
    CHECK(got.shim_pid == 0 && got.qemu_pid == 0 && got.started_at == 0);
    CHECK(got.last_end[0] == '\0' && got.boot_id[0] == '\0');
    int64_t now = (int64_t)(blink_wall_ns() / 1000000);
    CHECK(got.created_at > now - 60000 && got.created_at <= now);
    CHECK(got.updated_at == got.created_at);
    CHECK(blink_catalog_session_get(catalog, "alpha_1-x", &got, &err) == 0);
    CHECK(!got.warm && got.created_at == 1234 && got.updated_at >= now - 60000);

    /* Listed by name. */
    blink_session_row_t *rows = NULL;
    size_t count = 0;
    CHECK(blink_catalog_session_list(catalog, &rows, &count, &err) == 0);
    CHECK(count == 2 && rows && strcmp(rows[0].name, "alpha_1-x") == 0 &&
          strcmp(rows[1].name, "beta") == 0);
    free(rows);

    /* The run-time fields change; the others stay. */
    blink_session_row_t running = make_row("beta");
    snprintf(running.state, sizeof(running.state), "%s", BLINK_STATE_RUNNING);
    snprintf(running.image, sizeof(running.image), "%s", "ignored");
    snprintf(running.boot_id, sizeof(running.boot_id), "%s", "boot-42");
    snprintf(running.last_end, sizeof(running.last_end), "%s", "clean stop");
    running.shim_pid = 100;
    running.qemu_pid = 101;
    running.started_at = now;
    CHECK(blink_catalog_session_set_state(catalog, &running, &err) == 0);
    CHECK(blink_catalog_session_get(catalog, "beta", &got, &err) == 0);
    CHECK(strcmp(got.state, BLINK_STATE_RUNNING) == 0 && strcmp(got.image, "debian-12") == 0);
    CHECK(strcmp(got.boot_id, "boot-42") == 0 && strcmp(got.last_end, "clean stop") == 0);
    CHECK(got.shim_pid == 100 && got.qemu_pid == 101 && got.started_at == now);
    CHECK(got.updated_at >= got.created_at);

    /* A field longer than the row's buffer (written behind the catalog's
     * back) comes out cut and terminated. */
    CHECK(raw_exec(path, "UPDATE sessions SET image = printf('%.200c', 'i') "
                         "WHERE name = 'beta'") == SQLITE_OK);
    CHECK(blink_catalog_session_get(catalog, "beta", &got, &err) == 0);
    CHECK(strlen(got.image) == sizeof(got.image) - 1 && got.image[0] == 'i');

    /* Deleted rows are gone; a second delete finds nothing. */
    CHECK(blink_catalog_session_delete(catalog, "alpha_1-x", &err) == 0);
    CHECK(blink_catalog_session_list(catalog, &rows, &count, &err) == 0);
    CHECK(count == 1 && rows && strcmp(rows[0].name, "beta") == 0);
    free(rows);
    err.code = BLINK_OK;
    CHECK(blink_catalog_session_delete(catalog, "alpha_1-x", &err) < 0);
    CHECK(err.code == BLINK_E_NOT_FOUND);
}

static void test_session_errors(blink_catalog_t *catalog)
{
    blink_error_t err = {0};
    blink_session_row_t row = make_row("gamma");
    CHECK(blink_catalog_session_insert(catalog, &row, &err) == 0);

    CHECK(blink_catalog_session_insert(catalog, &row, &err) < 0);
    CHECK(err.code == BLINK_E_EXISTS && strstr(err.message, "[catalog]") != NULL);

    blink_session_row_t got;
    CHECK(blink_catalog_session_get(catalog, "missing", &got, &err) < 0);
    CHECK(err.code == BLINK_E_NOT_FOUND);

    blink_session_row_t ghost = make_row("ghost");
    CHECK(blink_catalog_session_set_state(catalog, &ghost, &err) < 0);
    CHECK(err.code == BLINK_E_NOT_FOUND);

    /* The schema's CHECKs: name length and characters, known states. */
    const char *bad_names[] = {"ab", "a b c", "with/slash", "dot.dot", "", "caf\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
        blink_session_row_t bad = make_row(bad_names[i]);
        err.code = BLINK_OK;
        CHECK(blink_catalog_session_insert(catalog, &bad, &err) < 0);
        CHECK(err.code == BLINK_E_INVALID);
    }
    blink_session_row_t weird = make_row("weird");
    snprintf(weird.state, sizeof(weird.state), "%s", "sleeping");
    CHECK(blink_catalog_session_insert(catalog, &weird, &err) < 0);
    CHECK(err.code == BLINK_E_INVALID);
    CHECK(blink_catalog_session_set_state(catalog, &weird, &err) < 0);

    snprintf(row.state, sizeof(row.state), "%s", "sleeping");
    CHECK(blink_catalog_session_set_state(catalog, &row, &err) < 0);
    CHECK(err.code == BLINK_E_INVALID);

    /* A name field with no terminator is read up to its size only. */
    blink_session_row_t unterminated = make_row("x");
    memset(unterminated.name, 'n', sizeof(unterminated.name));
    CHECK(blink_catalog_session_insert(catalog, &unterminated, &err) < 0);
    CHECK(err.code == BLINK_E_INVALID);
}

static void test_executions(blink_catalog_t *catalog, const char *path)
{
    blink_error_t err = {0};
    blink_session_row_t row = make_row("runner");
    CHECK(blink_catalog_session_insert(catalog, &row, &err) == 0);

    int64_t first = blink_catalog_execution_start(catalog, "runner", "/agents/a.py", &err);
    int64_t second = blink_catalog_execution_start(catalog, "runner", "sh", &err);
    CHECK(first > 0 && second > first);
    int64_t active = -1;
    CHECK(blink_catalog_execution_active(catalog, "runner", &active, &err) == 0);
    CHECK(active == 2);

    CHECK(blink_catalog_execution_finish(catalog, first, 3, 0, false, &err) == 0);
    CHECK(blink_catalog_execution_active(catalog, "runner", &active, &err) == 0);
    CHECK(active == 1);
    CHECK(blink_catalog_execution_finish(catalog, second, -1, 9, true, &err) == 0);
    CHECK(blink_catalog_execution_active(catalog, "runner", &active, &err) == 0);
    CHECK(active == 0);
    CHECK(raw_int(path, "SELECT exit_code * 100 + signal * 10 + timed_out FROM executions "
                        "WHERE command = 'sh'") == -100 + 90 + 1);
    CHECK(raw_int(path, "SELECT count(*) FROM executions WHERE finished_at >= started_at") == 2);

    /* The first end recorded stands. */
    CHECK(blink_catalog_execution_finish(catalog, first, 0, 15, false, &err) < 0);
    CHECK(err.code == BLINK_E_NOT_FOUND);
    CHECK(raw_int(path, "SELECT exit_code FROM executions WHERE command = '/agents/a.py'") == 3);
    CHECK(blink_catalog_execution_finish(catalog, 999999, 0, 0, false, &err) < 0);
    CHECK(err.code == BLINK_E_NOT_FOUND);

    CHECK(blink_catalog_execution_start(catalog, "nobody", "sh", &err) < 0);
    CHECK(err.code == BLINK_E_NOT_FOUND);
    CHECK(blink_catalog_execution_active(catalog, "nobody", &active, &err) == 0);
    CHECK(active == 0);

    /* A huge command keeps its head only. */
    char long_command[5000];
    memset(long_command, 'c', sizeof(long_command) - 1);
    long_command[sizeof(long_command) - 1] = '\0';
    CHECK(blink_catalog_execution_start(catalog, "runner", long_command, &err) > 0);
    CHECK(raw_int(path, "SELECT max(length(command)) FROM executions") == 1024);

    /* Deleting the session deletes its executions. */
    CHECK(blink_catalog_execution_start(catalog, "runner", "left running", &err) > 0);
    CHECK(raw_int(path, "SELECT count(*) FROM executions WHERE session = 'runner'") == 4);
    CHECK(blink_catalog_session_delete(catalog, "runner", &err) == 0);
    CHECK(raw_int(path, "SELECT count(*) FROM executions WHERE session = 'runner'") == 0);
}

static void put_checkpoint(blink_catalog_t *catalog, const char *session, const char *name,
                           const char *layer)
{
    blink_error_t err = {0};
    blink_checkpoint_row_t row = {.created_at = 10, .size_bytes = 20, .memory = true};
    snprintf(row.session, sizeof(row.session), "%s", session);
    snprintf(row.name, sizeof(row.name), "%s", name);
    snprintf(row.layer, sizeof(row.layer), "%s", layer);
    CHECK(blink_catalog_checkpoint_put(catalog, &row, &err) == 0);
}

static void test_checkpoints(blink_catalog_t *catalog, const char *path)
{
    blink_error_t err = {0};
    blink_session_row_t row = make_row("holder");
    CHECK(blink_catalog_session_insert(catalog, &row, &err) == 0);
    put_checkpoint(catalog, "holder", "active-one", "");
    put_checkpoint(catalog, "holder", "layered", "layers/aa.qcow2");

    blink_checkpoint_row_t got;
    CHECK(blink_catalog_checkpoint_get(catalog, "holder", "active-one", &got, &err) == 0);
    CHECK(got.layer[0] == '\0' && got.memory && got.size_bytes == 20);
    CHECK(raw_int(path, "SELECT count(*) FROM checkpoints WHERE layer IS NULL") == 1);

    blink_checkpoint_row_t *rows = NULL;
    size_t count = 0;
    CHECK(blink_catalog_checkpoint_layered(catalog, "holder", &rows, &count, &err) == 0);
    CHECK(count == 1 && rows && strcmp(rows[0].layer, "layers/aa.qcow2") == 0);
    free(rows);

    /* A fork moves the active disk's checkpoints into the frozen layer. */
    CHECK(blink_catalog_checkpoint_move(catalog, "holder", NULL, "layers/bb.qcow2", &err) == 0);
    CHECK(blink_catalog_checkpoint_get(catalog, "holder", "active-one", &got, &err) == 0);
    CHECK(strcmp(got.layer, "layers/bb.qcow2") == 0);
    CHECK(blink_catalog_checkpoint_move(catalog, "holder", "layers/aa.qcow2", NULL, &err) == 0);
    CHECK(blink_catalog_checkpoint_get(catalog, "holder", "layered", &got, &err) == 0);
    CHECK(got.layer[0] == '\0');
    CHECK(blink_catalog_checkpoint_layered(catalog, NULL, &rows, &count, &err) == 0);
    CHECK(count == 1);
    free(rows);

    CHECK(blink_catalog_session_delete(catalog, "holder", &err) == 0);
    CHECK(raw_int(path, "SELECT count(*) FROM checkpoints") == 0);
}

static void test_rows(const char *dir)
{
    cleanup_free char *path = db_path(dir, "rows.db");
    blink_catalog_t *catalog = NULL;
    blink_error_t err = {0};
    CHECK(blink_catalog_open(path, &catalog, &err) == 0);
    if (catalog == NULL)
        return;

    test_sessions(catalog, path);
    test_session_errors(catalog);
    test_executions(catalog, path);
    test_checkpoints(catalog, path);
    blink_catalog_close(catalog);

    /* What was written is there after a reopen. */
    CHECK(blink_catalog_open(path, &catalog, &err) == 0);
    if (catalog == NULL)
        return;
    blink_session_row_t got;
    CHECK(blink_catalog_session_get(catalog, "beta", &got, &err) == 0);
    CHECK(strcmp(got.state, BLINK_STATE_RUNNING) == 0 && got.qemu_pid == 101);
    CHECK(blink_catalog_session_get(catalog, "gamma", &got, &err) == 0);
    blink_session_row_t *rows = NULL;
    size_t count = 0;
    CHECK(blink_catalog_session_list(catalog, &rows, &count, &err) == 0);
    CHECK(count == 2);
    free(rows);
    blink_catalog_close(catalog);
}

static void test_newer_schema_refused(const char *dir)
{
    cleanup_free char *path = db_path(dir, "future.db");
    CHECK(raw_exec(path, "CREATE TABLE later (x); PRAGMA user_version = 999;") == SQLITE_OK);

    blink_catalog_t *catalog = NULL;
    blink_error_t err = {0};
    CHECK(blink_catalog_open(path, &catalog, &err) < 0);
    CHECK(catalog == NULL);
    CHECK(err.code == BLINK_E_INVALID);
    CHECK(strstr(err.message, "schema version 999; this blink knows up to 4") != NULL);

    /* Refused, and left as it was. */
    CHECK(raw_int(path, "PRAGMA user_version") == 999);
    CHECK(raw_int(path, "SELECT count(*) FROM sqlite_schema WHERE name = 'sessions'") == 0);
}

static void test_two_handles(const char *dir)
{
    cleanup_free char *path = db_path(dir, "shared.db");
    blink_catalog_t *one = NULL;
    blink_catalog_t *two = NULL;
    blink_error_t err = {0};
    CHECK(blink_catalog_open(path, &one, &err) == 0);
    CHECK(blink_catalog_open(path, &two, &err) == 0);
    if (one == NULL || two == NULL) {
        blink_catalog_close(one);
        blink_catalog_close(two);
        return;
    }

    blink_session_row_t first = make_row("first");
    blink_session_row_t second = make_row("second");
    CHECK(blink_catalog_session_insert(one, &first, &err) == 0);
    CHECK(blink_catalog_session_insert(two, &second, &err) == 0);
    CHECK(blink_catalog_session_insert(two, &first, &err) < 0);
    CHECK(err.code == BLINK_E_EXISTS);

    /* Each sees the other's writes as soon as they commit. */
    snprintf(second.state, sizeof(second.state), "%s", BLINK_STATE_STARTING);
    CHECK(blink_catalog_session_set_state(one, &second, &err) == 0);
    blink_session_row_t got;
    CHECK(blink_catalog_session_get(two, "second", &got, &err) == 0);
    CHECK(strcmp(got.state, BLINK_STATE_STARTING) == 0);

    int64_t id = blink_catalog_execution_start(two, "first", "sh", &err);
    CHECK(id > 0);
    int64_t active = 0;
    CHECK(blink_catalog_execution_active(one, "first", &active, &err) == 0);
    CHECK(active == 1);
    CHECK(blink_catalog_execution_finish(one, id, 0, 0, false, &err) == 0);
    CHECK(blink_catalog_execution_active(two, "first", &active, &err) == 0);
    CHECK(active == 0);

    CHECK(blink_catalog_session_delete(two, "first", &err) == 0);
    CHECK(blink_catalog_session_get(one, "first", &got, &err) < 0);
    CHECK(err.code == BLINK_E_NOT_FOUND);

    blink_catalog_close(one);
    blink_catalog_close(two);
}

/* A writer holding the lock past the busy timeout makes a write fail with
 * BLINK_E_BUSY, after waiting; the same write then succeeds. */
static void test_busy(const char *dir)
{
    cleanup_free char *path = db_path(dir, "busy.db");
    blink_catalog_t *catalog = NULL;
    blink_error_t err = {0};
    CHECK(blink_catalog_open(path, &catalog, &err) == 0);
    if (catalog == NULL)
        return;

    sqlite3 *holder = NULL;
    CHECK(sqlite3_open_v2(path, &holder, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK);
    CHECK(sqlite3_exec(holder, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK);

    blink_session_row_t row = make_row("blocked");
    uint64_t start = blink_now_ms();
    CHECK(blink_catalog_session_insert(catalog, &row, &err) < 0);
    CHECK(err.code == BLINK_E_BUSY);
    CHECK(blink_now_ms() - start >= 4500);

    /* Readers are not blocked by a writer in WAL mode. */
    blink_session_row_t *rows = NULL;
    size_t count = 7;
    CHECK(blink_catalog_session_list(catalog, &rows, &count, &err) == 0);
    CHECK(count == 0);
    free(rows);

    CHECK(sqlite3_exec(holder, "ROLLBACK", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(holder);
    CHECK(blink_catalog_session_insert(catalog, &row, &err) == 0);
    blink_catalog_close(catalog);
}

/* Several processes opening one fresh file at once: one migrates, the
 * others wait for it, and every one can write. */
static void test_concurrent_first_open(const char *dir)
{
    cleanup_free char *path = db_path(dir, "race.db");
    enum { WRITERS = 4 };
    pid_t children[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        children[i] = fork();
        CHECK(children[i] >= 0);
        if (children[i] != 0)
            continue;

        blink_catalog_t *catalog = NULL;
        blink_error_t err = {0};
        int status = 1;
        blink_session_row_t row = make_row("writer");
        snprintf(row.name, sizeof(row.name), "writer-%d", i);
        if (blink_catalog_open(path, &catalog, &err) == 0 &&
            blink_catalog_session_insert(catalog, &row, &err) == 0)
            status = 0;
        else
            fprintf(stderr, "writer %d: %s\n", i, err.message);
        blink_catalog_close(catalog);
        _exit(status);
    }

    for (int i = 0; i < WRITERS; i++) {
        int status = -1;
        CHECK(children[i] > 0 && waitpid(children[i], &status, 0) == children[i]);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    CHECK(raw_int(path, "PRAGMA user_version") == 4);
    CHECK(raw_int(path, "SELECT count(*) FROM sessions") == WRITERS);
}

static void test_file_mode(const char *dir)
{
    /* Private whatever the umask says. */
    mode_t saved = umask(0);
    cleanup_free char *path = db_path(dir, "mode.db");
    blink_catalog_t *catalog = NULL;
    blink_error_t err = {0};
    CHECK(blink_catalog_open(path, &catalog, &err) == 0);
    blink_session_row_t row = make_row("private");
    CHECK(catalog && blink_catalog_session_insert(catalog, &row, &err) == 0);

    cleanup_free char *wal = db_path(dir, "mode.db-wal");
    cleanup_free char *shm = db_path(dir, "mode.db-shm");
    CHECK(file_mode(path) == 0600);
    CHECK(file_mode(wal) == 0600);
    CHECK(file_mode(shm) == 0600);
    blink_catalog_close(catalog);

    /* A database made readable by others is tightened on open. */
    CHECK(chmod(path, 0644) == 0);
    CHECK(blink_catalog_open(path, &catalog, &err) == 0);
    CHECK(file_mode(path) == 0600);
    blink_catalog_close(catalog);
    umask(saved);

    /* A path that cannot be a database file is an error, not a crash. */
    CHECK(blink_catalog_open(dir, &catalog, &err) < 0 && catalog == NULL);
    cleanup_free char *nowhere = db_path(dir, "no/such/dir.db");
    CHECK(blink_catalog_open(nowhere, &catalog, &err) < 0);
    CHECK(err.code == BLINK_E_IO && err.sys_errno != 0);
}

void unit_run(void)
{
    const char *tmp = getenv("TMPDIR");
    cleanup_free char *dir =
        blink_strdup_printf("%s/blink-catalog-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (dir == NULL || mkdtemp(dir) == NULL) {
        CHECK(!"mkdtemp");
        return;
    }

    test_fresh_database(dir);
    test_rows(dir);
    test_newer_schema_refused(dir);
    test_two_handles(dir);
    test_concurrent_first_open(dir);
    test_file_mode(dir);
    test_busy(dir);

    CHECK(blink_remove_tree(dir) == 0);
}
