/* The database handle: DDL, ad-hoc queries as ArrowArrayStreams, insert of a whole stream,
 * schema, catalog, metrics, checkpoint, close with surviving children, destroy in any order. */
#include "common.h"

#include <sys/wait.h>
#include <unistd.h>

static const char *const COLS[] = {"k", "v", "ts"};

/* Pushes `len` rows k = i % 10, v = i, ts = i (ms) through a new writer. */
static void push_rows(laminar_db *db, const char *source, int64_t len) {
  laminar_writer *w = NULL;
  struct ArrowSchema schema;
  struct ArrowArray array;
  shared_cols *cols = cols_new(3, len);
  int64_t i;
  for (i = 0; i < len; i++) {
    cols->data[0][i] = i % 10;
    cols->data[1][i] = i;
    cols->data[2][i] = i;
  }
  make_schema(&schema, 3, COLS);
  make_array(&array, cols, len);
  shared_unref(cols);
  CHECK_OK(laminar_writer_create(db, source, &w, &err));
  CHECK_OK(laminar_writer_write(w, &schema, &array, &err));
  CHECK(array.release == NULL); /* consumed */
  CHECK_OK(laminar_writer_flush(w, &err));
  laminar_writer_destroy(w);
  schema.release(&schema);
}

/* Reads a whole stream; returns the number of rows and the sum of column `col` (by name). */
static int64_t drain(struct ArrowArrayStream *s, const char *col, int64_t *sum) {
  struct ArrowSchema schema;
  struct ArrowArray a;
  int64_t rows = 0;
  int idx;
  CHECK(s->get_schema(s, &schema) == 0);
  idx = column_index(&schema, col);
  CHECK(idx >= 0);
  *sum = 0;
  for (;;) {
    CHECK(s->get_next(s, &a) == 0);
    if (a.release == NULL) break;
    rows += a.length;
    *sum += sum_column(&a, idx);
    a.release(&a);
  }
  schema.release(&schema);
  s->release(s);
  CHECK(s->release == NULL);
  return rows;
}

int main(void) {
  laminar_db *db = NULL;
  laminar_writer *w = NULL;
  laminar_subscription *sub = NULL;
  struct ArrowArrayStream stream;
  struct ArrowSchema schema;
  struct ArrowArray array;
  int64_t rows = -1, sum = 0, epoch = 0;

  CHECK_OK(laminar_db_open(":memory:", NULL, &db, &err));
  CHECK_OK(laminar_db_execute(db,
      "CREATE SOURCE s (k BIGINT, v BIGINT, ts BIGINT, WATERMARK FOR ts AS ts - 0);"
      "CREATE SOURCE copy (k BIGINT, v BIGINT, ts BIGINT);"
      "CREATE MATERIALIZED VIEW totals AS SELECT k, SUM(v) AS sv, COUNT(*) AS n FROM s GROUP BY k",
      &rows, &err));
  CHECK(rows == 0);
  CHECK_FAILS(LAMINAR_ALREADY_EXISTS, "already exists", laminar_db_execute(db, "CREATE SOURCE s (a BIGINT)", NULL, &err));
  CHECK_FAILS(LAMINAR_PLAN, "nope", laminar_db_execute(db, "CREATE STREAM x AS SELECT nope FROM s", NULL, &err));

  push_rows(db, "s", 1000);

  /* ad-hoc SELECT over a source's retained rows and over a materialized view */
  CHECK_OK(laminar_db_query(db, "SELECT v FROM s WHERE k = 3", &stream, &err));
  CHECK(drain(&stream, "v", &sum) == 100);
  CHECK(sum == 49800); /* 3 + 13 + ... + 993 */
  CHECK_OK(laminar_db_query(db, "SELECT k, sv FROM totals", &stream, &err));
  CHECK(drain(&stream, "sv", &sum) == 10);
  CHECK(sum == 999 * 1000 / 2);
  /* an empty result still has its schema */
  CHECK_OK(laminar_db_query(db, "SELECT v FROM s WHERE k = 77", &stream, &err));
  CHECK(drain(&stream, "v", &sum) == 0);
  /* SHOW through query */
  {
    struct ArrowArray a;
    CHECK_OK(laminar_db_query(db, "SHOW SOURCES", &stream, &err));
    CHECK(stream.get_next(&stream, &a) == 0);
    CHECK(a.length == 2);
    a.release(&a);
    stream.release(&stream);
  }
  /* query refuses DDL without running it */
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "returns no rows", laminar_db_query(db, "CREATE SOURCE t (a BIGINT)", &stream, &err));
  CHECK_FAILS(LAMINAR_NOT_FOUND, NULL, laminar_db_schema(db, "t", &schema, &err));
  CHECK_FAILS(LAMINAR_PLAN, NULL, laminar_db_query(db, "SELECT missing FROM s", &stream, &err));

  /* insert a whole stream (the result of a query) into another source */
  CHECK_OK(laminar_db_query(db, "SELECT k, v, ts FROM s", &stream, &err));
  CHECK_OK(laminar_db_insert(db, "copy", &stream, &rows, &err));
  CHECK(stream.release == NULL); /* consumed */
  CHECK(rows == 1000);
  CHECK_OK(laminar_db_query(db, "SELECT v FROM copy", &stream, &err));
  CHECK(drain(&stream, "v", &sum) == 1000);
  CHECK(sum == 999 * 1000 / 2);
  /* a stream whose schema does not fit is consumed too, and nothing is applied */
  CHECK_OK(laminar_db_query(db, "SELECT k, CAST(v AS VARCHAR) AS v, ts FROM s", &stream, &err));
  CHECK_FAILS(LAMINAR_INVALID_DATA, "'v'", laminar_db_insert(db, "copy", &stream, &rows, &err));
  CHECK(stream.release == NULL);

  /* schema of a source and of a changelog view */
  CHECK_OK(laminar_db_schema(db, "s", &schema, &err));
  CHECK(strcmp(schema.format, "+s") == 0 && schema.n_children == 3);
  CHECK(column_index(&schema, "ts") == 2);
  schema.release(&schema);
  CHECK_OK(laminar_db_schema(db, "totals", &schema, &err));
  CHECK(column_index(&schema, "__weight") >= 0);
  schema.release(&schema);
  CHECK_FAILS(LAMINAR_NOT_FOUND, "did you mean 'totals'", laminar_db_schema(db, "total", &schema, &err));

  /* catalog and metrics are Arrow batches */
  CHECK_OK(laminar_db_catalog(db, &schema, &array, &err));
  CHECK(array.length == 3); /* s, copy, totals */
  CHECK(column_index(&schema, "kind") == 1 && column_index(&schema, "sql") == 3);
  array.release(&array);
  schema.release(&schema);
  CHECK_OK(laminar_db_metrics(db, &schema, &array, &err));
  CHECK(array.length > 0);
  CHECK(column_index(&schema, "value") == 3);
  array.release(&array);
  schema.release(&schema);

  /* checkpoints need durability, which an in-memory database does not have */
  CHECK_FAILS(LAMINAR_INVALID_STATE, "durability", laminar_db_checkpoint(db, &epoch, &err));

  /* close with children alive: their calls say CLOSED; destroying them afterwards is safe */
  CHECK_OK(laminar_writer_create(db, "s", &w, &err));
  CHECK_OK(laminar_db_subscribe(db, "totals", NULL, &sub, &err));
  laminar_db_close(db);
  CHECK_FAILS(LAMINAR_CLOSED, NULL, laminar_writer_watermark(w, 5, &err));
  {
    struct ArrowSchema s2;
    struct ArrowArray a;
    int64_t wm;
    const char *const one[] = {"k"};
    shared_cols *c = cols_new(1, 1);
    make_schema(&s2, 1, one);
    make_array(&a, c, 1);
    shared_unref(c);
    CHECK_FAILS(LAMINAR_CLOSED, NULL, laminar_writer_write(w, &s2, &a, &err));
    CHECK(a.release == NULL); /* consumed even on failure */
    s2.release(&s2);
    CHECK_FAILS(LAMINAR_CLOSED, NULL, laminar_writer_current_watermark(w, &wm, &err));
    CHECK_FAILS(LAMINAR_CLOSED, NULL, laminar_subscription_next(sub, 1000, &a, &err));
  }
  laminar_subscription_destroy(sub);
  laminar_writer_destroy(w);

  /* the other order: children destroyed first, then the database */
  CHECK_OK(laminar_db_open(":memory:", NULL, &db, &err));
  CHECK_OK(laminar_db_execute(db, "CREATE SOURCE s (k BIGINT); CREATE STREAM t AS SELECT k FROM s", NULL, &err));
  CHECK_OK(laminar_writer_create(db, "s", &w, &err));
  CHECK_OK(laminar_db_subscribe(db, "t", NULL, &sub, &err));
  CHECK_OK(laminar_db_query(db, "SELECT k FROM s", &stream, &err));
  laminar_writer_destroy(w);
  laminar_subscription_destroy(sub);
  laminar_db_close(db);
  /* a query stream stays valid after close */
  CHECK(drain(&stream, "k", &sum) == 0);

  /* after fork() the child gets INVALID_STATE instead of a hang, and closing there returns */
  {
    pid_t pid;
    int status = 0;
    CHECK_OK(laminar_db_open(":memory:", NULL, &db, &err));
    CHECK_OK(laminar_db_execute(db, "CREATE SOURCE f (a BIGINT)", NULL, &err));
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid == 0) {
      laminar_error *e = NULL;
      int ok = laminar_db_execute(db, "CREATE SOURCE g (a BIGINT)", NULL, &e) == LAMINAR_INVALID_STATE &&
               strstr(laminar_error_message(e), "fork") != NULL;
      laminar_error_destroy(e);
      laminar_db_close(db);
      _exit(ok ? 0 : 1);
    }
    CHECK(pid > 0);
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_OK(laminar_db_execute(db, "CREATE SOURCE g (a BIGINT)", NULL, &err)); /* the parent goes on */
    laminar_db_close(db);
  }
  DONE();
}
