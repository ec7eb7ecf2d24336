/* End to end from C: a source and a windowed stream, 1,000,000 rows pushed as Arrow C Data in
 * batches of 8,192, every window received through push callbacks; the window counts and sums
 * must add up to exactly what was pushed, and each window's count must match the rows generated
 * for it. */
#include "common.h"

#define ROWS 1000000
#define BATCH 8192
#define KEYS 100
#define WINDOW_MS 1000
#define ROWS_PER_MS 4 /* event time advances 1 ms every 4 rows: 250 windows */

static const char *const COLS[] = {"k", "v", "ts"};

typedef struct totals {
  pthread_mutex_t mu;
  int closed, errors, schema_ok;
  int col_n, col_sv, col_k, col_ws;
  int64_t windows, count, sum;
  int64_t *per_window; /* count per window index */
  int64_t nwin;
} totals;

static void on_schema(void *ud, struct ArrowSchema *s) {
  totals *t = (totals *)ud;
  t->col_n = column_index(s, "n");
  t->col_sv = column_index(s, "sv");
  t->col_k = column_index(s, "k");
  t->col_ws = column_index(s, "window_start");
  t->schema_ok = t->col_n >= 0 && t->col_sv >= 0 && t->col_k >= 0 && t->col_ws >= 0;
  s->release(s);
}

static void on_batch(void *ud, struct ArrowArray *a) {
  totals *t = (totals *)ud;
  int64_t r;
  pthread_mutex_lock(&t->mu);
  t->windows += a->length;
  for (r = 0; r < a->length; r++) {
    int64_t n = int64_at(a, t->col_n, r);
    int64_t ws_us = int64_at(a, t->col_ws, r); /* TIMESTAMP is microseconds */
    int64_t w = ws_us / 1000 / WINDOW_MS;
    t->count += n;
    t->sum += int64_at(a, t->col_sv, r);
    if (w >= 0 && w < t->nwin) t->per_window[w] += n;
  }
  pthread_mutex_unlock(&t->mu);
  a->release(a);
}

static void on_error(void *ud, const laminar_error *e) {
  totals *t = (totals *)ud;
  fprintf(stderr, "subscription error: %s\n", laminar_error_message(e));
  t->errors++;
}

static void on_close(void *ud) {
  totals *t = (totals *)ud;
  pthread_mutex_lock(&t->mu);
  t->closed = 1;
  pthread_mutex_unlock(&t->mu);
}

int main(void) {
  laminar_db *db = NULL;
  laminar_writer *w = NULL;
  laminar_subscription *sub = NULL;
  laminar_subscriber cb;
  struct ArrowSchema schema;
  totals t;
  int64_t pushed = 0, pushed_sum = 0, i, w_i, expected_windows = 0;
  double t0;

  memset(&t, 0, sizeof t);
  pthread_mutex_init(&t.mu, NULL);
  t.nwin = ROWS / ROWS_PER_MS / WINDOW_MS + 1;
  t.per_window = (int64_t *)calloc((size_t)t.nwin, sizeof(int64_t));

  CHECK_OK(laminar_db_open(":memory:", NULL, &db, &err));
  CHECK_OK(laminar_db_execute(db,
      "CREATE SOURCE events (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND);"
      "CREATE STREAM per_window AS SELECT k, COUNT(*) AS n, SUM(v) AS sv, window_start "
      "FROM events GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)",
      NULL, &err));
  memset(&cb, 0, sizeof cb);
  cb.struct_size = sizeof cb;
  cb.on_schema = on_schema;
  cb.on_batch = on_batch;
  cb.on_error = on_error;
  cb.on_close = on_close;
  cb.user_data = &t;
  CHECK_OK(laminar_db_subscribe_push(db, "per_window", &cb, NULL, &sub, &err));
  CHECK_OK(laminar_subscription_request(sub, UINT64_MAX, &err));

  /* ts is declared TIMESTAMP: push int64 microseconds under the Arrow format "tsu:" */
  make_schema(&schema, 3, COLS);
  schema.children[2]->format = "tsu:";
  CHECK_OK(laminar_writer_create(db, "events", &w, &err));
  t0 = now_seconds();
  for (i = 0; i < ROWS; i += BATCH) {
    int64_t len = ROWS - i < BATCH ? ROWS - i : BATCH, r;
    struct ArrowArray a;
    shared_cols *c = cols_new(3, len);
    for (r = 0; r < len; r++) {
      int64_t row = i + r;
      c->data[0][r] = (row * 7919) % KEYS;
      c->data[1][r] = row % 1000;
      c->data[2][r] = (row / ROWS_PER_MS) * 1000; /* µs */
      pushed_sum += row % 1000;
    }
    make_array(&a, c, len);
    shared_unref(c);
    CHECK_OK(laminar_writer_write(w, &schema, &a, &err));
    pushed += len;
  }
  CHECK_OK(laminar_writer_finish(w, &err));
  CHECK_OK(laminar_writer_flush(w, &err));
  {
    double deadline = now_seconds() + 30;
    for (;;) {
      int64_t c;
      pthread_mutex_lock(&t.mu);
      c = t.count;
      pthread_mutex_unlock(&t.mu);
      if (c >= pushed || now_seconds() > deadline) break;
      sleep_ms(5);
    }
  }
  printf("pushed %lld rows in %.2f s; received %lld window rows\n", (long long)pushed, now_seconds() - t0, (long long)t.windows);
  laminar_subscription_destroy(sub);
  CHECK(t.closed && t.errors == 0 && t.schema_ok);
  CHECK(pushed == ROWS);
  CHECK(t.count == pushed);
  CHECK(t.sum == pushed_sum);
  for (w_i = 0; w_i < t.nwin; w_i++) {
    int64_t first = w_i * WINDOW_MS * ROWS_PER_MS, last = first + WINDOW_MS * ROWS_PER_MS;
    if (last > ROWS) last = ROWS;
    if (first >= ROWS) break;
    CHECK(t.per_window[w_i] == last - first);
    expected_windows++;
  }
  CHECK(expected_windows == 250);
  CHECK(t.windows == expected_windows * KEYS); /* every key appears in every window */
  schema.release(&schema);
  laminar_writer_destroy(w);
  laminar_db_close(db);
  free(t.per_window);
  pthread_mutex_destroy(&t.mu);
  DONE();
}
