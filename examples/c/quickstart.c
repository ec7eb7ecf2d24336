/* LaminarDB from C: a source, a windowed continuous query, rows pushed as Arrow C Data, results
 * read from a subscription, and an ad-hoc query over a materialized view.
 *
 *   cc -o quickstart quickstart.c $(pkg-config --cflags --libs laminar)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <laminar.h>

/* Fails loudly on an error, printing the status name and the engine's message. */
static void check(laminar_status st, laminar_error *err, const char *what) {
  if (st == LAMINAR_OK) return;
  fprintf(stderr, "%s: %s: %s\n", what, laminar_status_str(st), laminar_error_message(err));
  laminar_error_destroy(err);
  exit(1);
}

/* ---- a minimal Arrow producer: a batch of two int64 columns (sym_id, qty) and a timestamp ---- */
#define NCOLS 3
static const char *const NAMES[NCOLS] = {"sym_id", "qty", "ts"};
static const char *const FORMATS[NCOLS] = {"l", "l", "tsu:"}; /* int64, int64, timestamp[us] */

typedef struct batch_data {
  int64_t *cols[NCOLS];
  const void *buffers[NCOLS][2];
  struct ArrowArray children[NCOLS];
  struct ArrowArray *child_ptrs[NCOLS];
  const void *top_buffers[1];
} batch_data;

static void release_child(struct ArrowArray *a) { a->release = NULL; }

static void release_batch(struct ArrowArray *a) {
  batch_data *d = (batch_data *)a->private_data;
  int i;
  for (i = 0; i < NCOLS; i++) free(d->cols[i]);
  free(d);
  a->release = NULL;
}

static void make_batch(struct ArrowArray *out, int64_t n, int64_t first_second) {
  batch_data *d = (batch_data *)calloc(1, sizeof *d);
  int64_t r;
  int i;
  for (i = 0; i < NCOLS; i++) d->cols[i] = (int64_t *)malloc((size_t)n * sizeof(int64_t));
  for (r = 0; r < n; r++) {
    d->cols[0][r] = r % 3;                                   /* three symbols */
    d->cols[1][r] = 10 * (r + 1);                            /* quantity */
    d->cols[2][r] = (first_second + r) * 1000000;            /* one row per second, in µs */
  }
  memset(out, 0, sizeof *out);
  for (i = 0; i < NCOLS; i++) {
    d->buffers[i][0] = NULL; /* no nulls */
    d->buffers[i][1] = d->cols[i];
    d->children[i].length = n;
    d->children[i].n_buffers = 2;
    d->children[i].buffers = d->buffers[i];
    d->children[i].release = release_child;
    d->child_ptrs[i] = &d->children[i];
  }
  out->length = n;
  out->n_buffers = 1;
  out->buffers = d->top_buffers;
  out->n_children = NCOLS;
  out->children = d->child_ptrs;
  out->release = release_batch;
  out->private_data = d;
}

static struct ArrowSchema g_children[NCOLS];
static struct ArrowSchema *g_child_ptrs[NCOLS];
static void release_static_schema(struct ArrowSchema *s) { s->release = NULL; }

static void make_schema(struct ArrowSchema *out) {
  int i;
  memset(out, 0, sizeof *out);
  for (i = 0; i < NCOLS; i++) {
    memset(&g_children[i], 0, sizeof g_children[i]);
    g_children[i].format = FORMATS[i];
    g_children[i].name = NAMES[i];
    g_children[i].release = release_static_schema;
    g_child_ptrs[i] = &g_children[i];
  }
  out->format = "+s";
  out->n_children = NCOLS;
  out->children = g_child_ptrs;
  out->release = release_static_schema;
}

/* ---- reading results: print every row of a batch whose columns are all int64-like ---- */
static void print_batch(const struct ArrowSchema *schema, const struct ArrowArray *batch) {
  int64_t r, c;
  for (r = 0; r < batch->length; r++) {
    for (c = 0; c < batch->n_children; c++) {
      const struct ArrowArray *col = batch->children[c];
      const int64_t *values = (const int64_t *)col->buffers[1];
      printf("%s%s=%lld", c ? "  " : "  ", schema->children[c]->name, (long long)values[r + col->offset]);
    }
    printf("\n");
  }
}

int main(void) {
  laminar_db *db = NULL;
  laminar_writer *writer = NULL;
  laminar_subscription *sub = NULL;
  laminar_error *err = NULL;
  struct ArrowSchema schema, out_schema;
  struct ArrowArray batch;
  struct ArrowArrayStream result;

  printf("LaminarDB %s\n", laminar_version());
  check(laminar_db_open(":memory:", NULL, &db, &err), err, "open");
  check(laminar_db_execute(db,
            "CREATE SOURCE orders (sym_id BIGINT, qty BIGINT, ts TIMESTAMP,"
            "  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);"
            "CREATE STREAM volume AS SELECT sym_id, SUM(qty) AS total, COUNT(*) AS trades"
            "  FROM orders GROUP BY sym_id, TUMBLE(ts, INTERVAL '10' SECOND);"
            "CREATE MATERIALIZED VIEW by_symbol AS SELECT sym_id, SUM(qty) AS total FROM orders GROUP BY sym_id",
            NULL, &err),
        err, "create");

  check(laminar_db_subscribe(db, "volume", NULL, &sub, &err), err, "subscribe");
  check(laminar_writer_create(db, "orders", &writer, &err), err, "writer");
  make_schema(&schema);
  make_batch(&batch, 30, 0); /* 30 rows, one per second: three 10-second windows */
  check(laminar_writer_write(writer, &schema, &batch, &err), err, "write"); /* batch consumed */
  check(laminar_writer_finish(writer, &err), err, "finish");               /* end of input */

  /* Pull the windows as they are emitted; the end of input closes all three. */
  check(laminar_subscription_schema(sub, &out_schema, &err), err, "schema");
  printf("windows (10 s tumbling):\n");
  for (;;) {
    struct ArrowArray out;
    laminar_status st = laminar_subscription_next(sub, 1000, &out, &err);
    if (st == LAMINAR_TIMEOUT) { laminar_error_destroy(err); err = NULL; break; }
    check(st, err, "next");
    if (out.release == NULL) break; /* the subscription ended */
    print_batch(&out_schema, &out);
    out.release(&out);
  }
  out_schema.release(&out_schema);

  /* Ad-hoc SQL over the materialized view. */
  check(laminar_db_query(db, "SELECT sym_id, total FROM by_symbol ORDER BY sym_id", &result, &err), err, "query");
  check(result.get_schema(&result, &out_schema) == 0 ? LAMINAR_OK : LAMINAR_INTERNAL, NULL, "get_schema");
  printf("by_symbol:\n");
  for (;;) {
    struct ArrowArray out;
    if (result.get_next(&result, &out) != 0) {
      fprintf(stderr, "get_next: %s\n", result.get_last_error(&result));
      return 1;
    }
    if (out.release == NULL) break;
    print_batch(&out_schema, &out);
    out.release(&out);
  }
  out_schema.release(&out_schema);
  result.release(&result);

  laminar_subscription_destroy(sub);
  laminar_writer_destroy(writer);
  laminar_db_close(db);
  return 0;
}
