/* Writers: batches consumed on every path, schema checks, watermarks and end of input, and four
 * threads writing to one source at once (one writer each). */
#include "common.h"

#define THREADS 4
#define BATCHES_PER_THREAD 200
#define ROWS_PER_BATCH 500

static const char *const COLS[] = {"k", "v", "ts"};
static laminar_db *g_db;

static void *writer_thread(void *arg) {
  int64_t t = (int64_t)(intptr_t)arg, b, i;
  laminar_writer *w = NULL;
  struct ArrowSchema schema;
  CHECK_OK(laminar_writer_create(g_db, "s", &w, &err));
  make_schema(&schema, 3, COLS);
  for (b = 0; b < BATCHES_PER_THREAD; b++) {
    struct ArrowArray a;
    shared_cols *c = cols_new(3, ROWS_PER_BATCH);
    for (i = 0; i < ROWS_PER_BATCH; i++) {
      c->data[0][i] = t;
      c->data[1][i] = 1;
      c->data[2][i] = b * ROWS_PER_BATCH + i;
    }
    make_array(&a, c, ROWS_PER_BATCH);
    shared_unref(c);
    CHECK_OK(laminar_writer_write(w, &schema, &a, &err));
  }
  schema.release(&schema);
  laminar_writer_destroy(w);
  return NULL;
}

typedef struct cancel_arg {
  laminar_writer *w;
  long delay_ms;
  volatile int done; /* set by the writing thread once a write came back CANCELLED */
} cancel_arg;

/* Cancels after a delay, and again every 50 ms until the writer saw it: a cancel that lands
 * between two writes affects neither, so one cancel alone could leave the next write blocked. */
static void *cancel_writer_later(void *arg) {
  cancel_arg *c = (cancel_arg *)arg;
  int i;
  sleep_ms(c->delay_ms);
  for (i = 0; i < 200 && !__atomic_load_n(&c->done, __ATOMIC_ACQUIRE); i++) {
    laminar_writer_cancel(c->w);
    sleep_ms(50);
  }
  return NULL;
}

/* A write blocked on a full queue is interrupted by laminar_writer_cancel from another thread;
 * the writer stays usable. */
static void test_cancel_blocked_write(void) {
  laminar_db *db = NULL;
  laminar_config *cfg = NULL, *opts = NULL;
  laminar_writer *w = NULL;
  laminar_subscription *stalled = NULL;
  struct ArrowSchema schema;
  pthread_t t;
  cancel_arg ca;
  int i, cancelled = 0;
  double t0;

  CHECK_OK(laminar_config_create(&cfg, &err));
  CHECK_OK(laminar_config_set(cfg, "queue_capacity", "1", &err));
  CHECK_OK(laminar_db_open(":memory:", cfg, &db, &err));
  laminar_config_destroy(cfg);
  CHECK_OK(laminar_db_execute(db, "CREATE SOURCE s (k BIGINT, v BIGINT, ts BIGINT); CREATE STREAM out AS SELECT k FROM s", NULL, &err));
  /* a subscriber that never reads, with on_full = block: the pipeline stalls behind it */
  CHECK_OK(laminar_config_create(&opts, &err));
  CHECK_OK(laminar_config_set(opts, "on_full", "block", &err));
  CHECK_OK(laminar_config_set(opts, "buffer_size", "1", &err));
  CHECK_OK(laminar_db_subscribe(db, "out", opts, &stalled, &err));
  laminar_config_destroy(opts);
  CHECK_OK(laminar_writer_create(db, "s", &w, &err));
  make_schema(&schema, 3, COLS);
  ca.w = w;
  ca.delay_ms = 200;
  ca.done = 0;
  CHECK(pthread_create(&t, NULL, cancel_writer_later, &ca) == 0);
  t0 = now_seconds();
  for (i = 0; i < 20 && !cancelled; i++) {
    struct ArrowArray a;
    laminar_error *e = NULL;
    laminar_status st;
    shared_cols *c = cols_new(3, 1);
    make_array(&a, c, 1);
    shared_unref(c);
    st = laminar_writer_write(w, &schema, &a, &e);
    CHECK(a.release == NULL);
    if (st == LAMINAR_CANCELLED) {
      CHECK(strstr(laminar_error_message(e), "interrupted") != NULL);
      cancelled = 1;
      __atomic_store_n(&ca.done, 1, __ATOMIC_RELEASE);
    } else {
      CHECK(st == LAMINAR_OK);
    }
    laminar_error_destroy(e);
  }
  pthread_join(t, NULL);
  CHECK(cancelled);
  CHECK(now_seconds() - t0 < 5);
  laminar_writer_cancel(w); /* no write in progress: harmless */
  laminar_writer_cancel(NULL);
  /* unstall the pipeline: the writer works again */
  laminar_subscription_destroy(stalled);
  {
    struct ArrowArray a;
    shared_cols *c = cols_new(3, 1);
    make_array(&a, c, 1);
    shared_unref(c);
    CHECK_OK(laminar_writer_write(w, &schema, &a, &err));
    CHECK_OK(laminar_writer_flush(w, &err));
  }
  schema.release(&schema);
  laminar_writer_destroy(w);
  laminar_db_close(db);
}

int main(void) {
  laminar_config *cfg = NULL;
  laminar_writer *w = NULL;
  struct ArrowSchema schema, bad_schema;
  struct ArrowArray a;
  struct ArrowArrayStream stream;
  pthread_t threads[THREADS];
  int64_t wm = 0, i, t;
  shared_cols *c;

  CHECK_OK(laminar_config_create(&cfg, &err));
  CHECK_OK(laminar_config_set(cfg, "queue_capacity", "4", &err)); /* writers block often */
  CHECK_OK(laminar_db_open(":memory:", cfg, &g_db, &err));
  laminar_config_destroy(cfg);
  CHECK_OK(laminar_db_execute(g_db,
      "CREATE SOURCE s (k BIGINT, v BIGINT, ts BIGINT, WATERMARK FOR ts AS ts - 1000);"
      "CREATE MATERIALIZED VIEW per_k AS SELECT k, SUM(v) AS n FROM s GROUP BY k", NULL, &err));

  /* schema checks: a missing column and a wrong type are INVALID_DATA naming the column */
  CHECK_OK(laminar_writer_create(g_db, "s", &w, &err));
  {
    const char *const wrong[] = {"k", "v", "tss"};
    make_schema(&bad_schema, 3, wrong);
    c = cols_new(3, 2);
    make_array(&a, c, 2);
    CHECK_FAILS(LAMINAR_INVALID_DATA, "ts", laminar_writer_write(w, &bad_schema, &a, &err));
    CHECK(a.release == NULL);
    bad_schema.release(&bad_schema);
    /* a released array and a non-struct schema are refused */
    make_schema(&schema, 3, COLS);
    memset(&a, 0, sizeof a);
    CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "released", laminar_writer_write(w, &schema, &a, &err));
    make_array(&a, c, 2);
    schema.format = "l";
    CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "struct", laminar_writer_write(w, &schema, &a, &err));
    CHECK(a.release == NULL);
    schema.format = "+s";
    shared_unref(c);
  }

  /* watermarks: none before input; explicit watermark; never backwards */
  CHECK_OK(laminar_writer_current_watermark(w, &wm, &err));
  CHECK(wm == LAMINAR_NO_WATERMARK);
  CHECK_OK(laminar_writer_watermark(w, 5000, &err));
  CHECK_OK(laminar_writer_flush(w, &err));
  CHECK_OK(laminar_writer_current_watermark(w, &wm, &err));
  CHECK(wm == 5000);
  CHECK_OK(laminar_writer_watermark(w, 10, &err));
  CHECK_OK(laminar_writer_flush(w, &err));
  CHECK_OK(laminar_writer_current_watermark(w, &wm, &err));
  CHECK(wm == 5000);
  CHECK_OK(laminar_writer_schema(w, &bad_schema, &err));
  CHECK(bad_schema.n_children == 3);
  bad_schema.release(&bad_schema);

  /* four threads, one writer each, into one source at once */
  for (t = 0; t < THREADS; t++) CHECK(pthread_create(&threads[t], NULL, writer_thread, (void *)(intptr_t)t) == 0);
  for (t = 0; t < THREADS; t++) CHECK(pthread_join(threads[t], NULL) == 0);
  CHECK_OK(laminar_db_flush(g_db, &err));
  CHECK_OK(laminar_db_query(g_db, "SELECT k, n FROM per_k ORDER BY k", &stream, &err));
  {
    struct ArrowSchema rs;
    struct ArrowArray r;
    CHECK(stream.get_schema(&stream, &rs) == 0);
    CHECK(stream.get_next(&stream, &r) == 0);
    CHECK(r.length == THREADS);
    for (i = 0; i < THREADS; i++) {
      CHECK(int64_at(&r, 0, i) == i);
      CHECK(int64_at(&r, 1, i) == BATCHES_PER_THREAD * ROWS_PER_BATCH);
    }
    r.release(&r);
    rs.release(&rs);
    stream.release(&stream);
  }

  /* a whole stream through one writer (here: the result of a query), consumed */
  {
    int64_t rows = 0;
    /* the source retains its last 65,536 rows; which thread wrote them depends on timing */
    CHECK_OK(laminar_db_query(g_db, "SELECT k, v, ts FROM s LIMIT 1000", &stream, &err));
    CHECK_OK(laminar_writer_write_stream(w, &stream, &rows, &err));
    CHECK(stream.release == NULL);
    CHECK(rows == 1000);
    CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "stream is NULL", laminar_writer_write_stream(w, NULL, &rows, &err));
  }

  /* end of input */
  CHECK_OK(laminar_writer_finish(w, &err));
  CHECK_OK(laminar_writer_flush(w, &err));
  CHECK_OK(laminar_writer_current_watermark(w, &wm, &err));
  CHECK(wm == INT64_MAX);

  /* a dropped source: its writer says so */
  CHECK_OK(laminar_db_execute(g_db, "DROP SOURCE s CASCADE", NULL, &err));
  CHECK_FAILS(LAMINAR_NOT_FOUND, "dropped", laminar_writer_watermark(w, 1, &err));
  laminar_writer_destroy(w);
  schema.release(&schema);
  laminar_db_close(g_db);
  test_cancel_blocked_write();
  DONE();
}
