/* C ABI push benchmark. Pushes ROWS rows (argv[1], default 10,000,000) of W1 — 1,000 keys,
 * 1-minute TUMBLE with COUNT and SUM — in batches of 8,192, once through the C ABI
 * (laminar_writer_write: Arrow C Data import and validation per batch) and once through the Rust
 * API (laminar_writer_bench_rust_path: the same batches imported beforehand, pushed with
 * SourceWriter::write), each on a fresh database, alternating, best of REPEATS. Prints both
 * rates and their ratio (target >= 0.9). Build: make bench-c. */
#include "../../tests/c/common.h"

#define BATCH 8192
#define KEYS 1000
#define REPEATS 3

static const char *const COLS[] = {"k", "v", "ts"};
static const char *SQL =
    "CREATE SOURCE events (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);"
    "CREATE STREAM w1 AS SELECT k, COUNT(*) AS n, SUM(v) AS s, window_start "
    "FROM events GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)";

typedef struct counter {
  pthread_mutex_t mu;
  int64_t rows;
} counter;

static void on_batch(void *ud, struct ArrowArray *a) {
  counter *c = (counter *)ud;
  pthread_mutex_lock(&c->mu);
  c->rows += a->length;
  pthread_mutex_unlock(&c->mu);
}

static laminar_db *open_db(laminar_subscription **sub, counter *c, laminar_writer **w) {
  laminar_db *db = NULL;
  laminar_subscriber cb;
  CHECK_OK(laminar_db_open(":memory:", NULL, &db, &err));
  CHECK_OK(laminar_db_execute(db, SQL, NULL, &err));
  memset(&cb, 0, sizeof cb);
  cb.struct_size = sizeof cb;
  cb.on_batch = on_batch;
  cb.user_data = c;
  CHECK_OK(laminar_db_subscribe_push(db, "w1", &cb, NULL, sub, &err));
  CHECK_OK(laminar_subscription_request(*sub, UINT64_MAX, &err));
  CHECK_OK(laminar_writer_create(db, "events", w, &err));
  return db;
}

int main(int argc, char **argv) {
  int64_t rows = argc > 1 ? atoll(argv[1]) : 10000000;
  int64_t nb = (rows + BATCH - 1) / BATCH, b, r;
  shared_cols **cols = (shared_cols **)calloc((size_t)nb, sizeof *cols);
  int64_t *lens = (int64_t *)calloc((size_t)nb, sizeof *lens);
  struct ArrowArray *arrays = (struct ArrowArray *)calloc((size_t)nb, sizeof *arrays);
  struct ArrowSchema schema;
  double best_c = 1e30, best_rust = 1e30;
  int rep;

  make_schema(&schema, 3, COLS);
  schema.children[2]->format = "tsu:";
  for (b = 0; b < nb; b++) {
    int64_t first = b * BATCH;
    lens[b] = rows - first < BATCH ? rows - first : BATCH;
    cols[b] = cols_new(3, lens[b]);
    for (r = 0; r < lens[b]; r++) {
      int64_t row = first + r;
      cols[b]->data[0][r] = (row * 7919) % KEYS;
      cols[b]->data[1][r] = row % 100;
      cols[b]->data[2][r] = row * 1000; /* 1,000 events per second of event time, in µs */
    }
  }

  for (rep = 0; rep < REPEATS; rep++) {
    counter c;
    laminar_subscription *sub = NULL;
    laminar_writer *w = NULL;
    laminar_db *db;
    double t0, secs;

    /* C ABI path */
    pthread_mutex_init(&c.mu, NULL);
    c.rows = 0;
    db = open_db(&sub, &c, &w);
    for (b = 0; b < nb; b++) make_array(&arrays[b], cols[b], lens[b]);
    t0 = now_seconds();
    for (b = 0; b < nb; b++) CHECK_OK(laminar_writer_write(w, &schema, &arrays[b], &err));
    CHECK_OK(laminar_writer_flush(w, &err));
    secs = now_seconds() - t0;
    if (secs < best_c) best_c = secs;
    laminar_subscription_destroy(sub);
    laminar_writer_destroy(w);
    laminar_db_close(db);
    pthread_mutex_destroy(&c.mu);

    /* Rust API path, same batches */
    pthread_mutex_init(&c.mu, NULL);
    c.rows = 0;
    db = open_db(&sub, &c, &w);
    for (b = 0; b < nb; b++) make_array(&arrays[b], cols[b], lens[b]);
    CHECK_OK(laminar_writer_bench_rust_path(w, &schema, arrays, (size_t)nb, &secs, &err));
    if (secs < best_rust) best_rust = secs;
    laminar_subscription_destroy(sub);
    laminar_writer_destroy(w);
    laminar_db_close(db);
    pthread_mutex_destroy(&c.mu);
  }

  printf("W1 push, %lld rows in batches of %d, best of %d (library %s):\n", (long long)rows, BATCH, REPEATS, laminar_version());
  printf("  C ABI    (laminar_writer_write):   %12.0f rows/s  (%.3f s)\n", (double)rows / best_c, best_c);
  printf("  Rust API (SourceWriter::write):    %12.0f rows/s  (%.3f s)\n", (double)rows / best_rust, best_rust);
  printf("  ratio C ABI / Rust API: %.3f (target >= 0.9)\n", best_rust / best_c);

  for (b = 0; b < nb; b++) shared_unref(cols[b]);
  free(cols);
  free(lens);
  free(arrays);
  schema.release(&schema);
  return 0;
}
