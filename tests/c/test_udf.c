/* Scalar functions written in C: `affine(a, b) = a * 2 + b` (nulls in, null out) in a windowed
 * continuous query and in an ad-hoc SELECT, equal to the same computation done here; failing
 * functions (an error, a short result, the wrong type, no result) fail their statement or stream
 * with a clear message and the database goes on; bad registrations are refused and leave
 * user_data to the caller; user_data_free runs exactly once, after the last holder let go. */
#include "common.h"

#define ROWS 20000
#define BATCH 4096
#define KEYS 7
#define WINDOW_MS 1000

enum mode { GOOD, FAIL, SHORT, WRONG_TYPE, NO_RESULT };

typedef struct fn_state {
  enum mode mode;
  pthread_mutex_t mu;
  int64_t calls, rows;
  int freed;
} fn_state;

static void fn_free(void *ud) {
  fn_state *s = (fn_state *)ud;
  pthread_mutex_lock(&s->mu);
  s->freed++;
  pthread_mutex_unlock(&s->mu);
}

/* A result column: int64 values + validity, freed by its release. */
typedef struct result_private {
  int64_t *values;
  uint8_t *valid;
  const void *buffers[2];
} result_private;

static void result_release(struct ArrowArray *a) {
  result_private *p = (result_private *)a->private_data;
  free(p->values);
  free(p->valid);
  free(p);
  a->release = NULL;
}

static void static_schema_release(struct ArrowSchema *s) { s->release = NULL; }

static int is_valid(const struct ArrowArray *c, int64_t i) {
  const uint8_t *v = (const uint8_t *)c->buffers[0];
  i += c->offset;
  return v == NULL || (v[i / 8] >> (i % 8)) & 1;
}

static int affine(void *ud, struct ArrowArray *args, struct ArrowSchema *args_schema, struct ArrowArray *out,
                  struct ArrowSchema *out_schema, char *error, size_t error_size) {
  fn_state *s = (fn_state *)ud;
  int64_t n = args->length, i;
  const struct ArrowArray *a = args->children[0], *b = args->children[1];
  const int64_t *av = (const int64_t *)a->buffers[1], *bv = (const int64_t *)b->buffers[1];
  result_private *p;
  /* Both arguments are int64, as declared. */
  if (args->n_children != 2 || strcmp(args_schema->children[0]->format, "l") != 0 ||
      strcmp(args_schema->children[1]->format, "l") != 0) {
    snprintf(error, error_size, "unexpected arguments");
    return 1;
  }
  pthread_mutex_lock(&s->mu);
  s->calls++;
  s->rows += n;
  pthread_mutex_unlock(&s->mu);
  if (s->mode == FAIL) {
    snprintf(error, error_size, "the model is not loaded (%lld rows)", (long long)n);
    return 7;
  }
  if (s->mode == NO_RESULT) return 0;
  if (s->mode == SHORT && n > 0) n--;
  p = (result_private *)calloc(1, sizeof *p);
  p->values = (int64_t *)calloc((size_t)(n > 0 ? n : 1), sizeof(int64_t));
  p->valid = (uint8_t *)calloc((size_t)(n / 8 + 1), 1);
  for (i = 0; i < n; i++) {
    if (is_valid(a, i) && is_valid(b, i)) {
      p->values[i] = av[i + a->offset] * 2 + bv[i + b->offset];
      p->valid[i / 8] |= (uint8_t)(1 << (i % 8));
    }
  }
  p->buffers[0] = p->valid;
  p->buffers[1] = p->values;
  memset(out, 0, sizeof *out);
  out->length = n;
  out->null_count = -1;
  out->n_buffers = 2;
  out->buffers = p->buffers;
  out->private_data = p;
  out->release = result_release;
  memset(out_schema, 0, sizeof *out_schema);
  /* WRONG_TYPE hands back the int64 values declared as float64 ("g"). */
  out_schema->format = s->mode == WRONG_TYPE ? "g" : "l";
  out_schema->name = "";
  out_schema->flags = ARROW_FLAG_NULLABLE;
  out_schema->release = static_schema_release;
  return 0;
}

static const char *const ARG_NAMES[] = {"a", "b"};

/* Registers `name` in mode `m` on `db` (or, with db NULL, in `cfg`). */
static laminar_status add(laminar_config *cfg, laminar_db *db, const char *name, fn_state *s, laminar_error **err) {
  struct ArrowSchema args, ret;
  laminar_scalar_function f;
  laminar_status st;
  make_schema(&args, 2, ARG_NAMES);
  memset(&ret, 0, sizeof ret);
  ret.format = "l";
  ret.name = "";
  ret.release = static_schema_release;
  memset(&f, 0, sizeof f);
  f.struct_size = sizeof f;
  f.name = name;
  f.arg_types = &args;
  f.return_type = &ret;
  f.volatility = LAMINAR_VOLATILITY_IMMUTABLE;
  f.call = affine;
  f.user_data = s;
  f.user_data_free = fn_free;
  st = db ? laminar_db_register_scalar_function(db, &f, err) : laminar_config_add_scalar_function(cfg, &f, err);
  args.release(&args);
  return st;
}

static void state_init(fn_state *s, enum mode m) {
  memset(s, 0, sizeof *s);
  s->mode = m;
  pthread_mutex_init(&s->mu, NULL);
}

/* Reads every batch of a query's stream: calls `row(ud, batch, r)` per row; returns the rows. */
static int64_t read_query(laminar_db *db, const char *sql, void (*row)(void *, const struct ArrowArray *, int64_t),
                          void *ud) {
  struct ArrowArrayStream st;
  struct ArrowArray a;
  int64_t rows = 0, r;
  CHECK_OK(laminar_db_query(db, sql, &st, &err));
  for (;;) {
    CHECK(st.get_next(&st, &a) == 0);
    if (a.release == NULL) break;
    for (r = 0; r < a.length; r++) row(ud, &a, r);
    rows += a.length;
    a.release(&a);
  }
  st.release(&st);
  return rows;
}

/* ad hoc: columns k, v, y with y = affine(k, v) */
static int64_t g_bad_rows = 0;
static void check_row(void *ud, const struct ArrowArray *a, int64_t r) {
  (void)ud;
  if (int64_at(a, 2, r) != int64_at(a, 0, r) * 2 + int64_at(a, 1, r)) g_bad_rows++;
}

/* window sums: columns k, ws (µs), s */
typedef struct sums {
  int64_t got[KEYS][ROWS / 1000 + 2];
  int64_t want[KEYS][ROWS / 1000 + 2];
} sums;
static void window_row(void *ud, const struct ArrowArray *a, int64_t r) {
  sums *s = (sums *)ud;
  int64_t k = int64_at(a, 0, r), w = int64_at(a, 1, r) / 1000 / WINDOW_MS;
  if (k >= 0 && k < KEYS && w >= 0 && w < ROWS / 1000 + 2) s->got[k][w] += int64_at(a, 2, r);
}

static void one_value(void *ud, const struct ArrowArray *a, int64_t r) {
  *(int64_t *)ud = int64_at(a, 0, r);
}

int main(void) {
  static const char *const COLS[] = {"k", "v", "ts"};
  static sums s;
  laminar_config *cfg = NULL;
  laminar_db *db = NULL;
  laminar_writer *w = NULL;
  struct ArrowSchema schema;
  fn_state good, failing, short_, wrong, none, refused;
  int64_t i, x = 0;
  int k, win;

  state_init(&good, GOOD);
  state_init(&failing, FAIL);
  state_init(&short_, SHORT);
  state_init(&wrong, WRONG_TYPE);
  state_init(&none, NO_RESULT);
  state_init(&refused, GOOD);

  CHECK_OK(laminar_config_create(&cfg, &err));
  CHECK_OK(laminar_config_set(cfg, "workers", "2", &err));
  CHECK_OK(add(cfg, NULL, "affine", &good, &err));
  /* Refused registrations: user_data stays ours (no free). */
  CHECK_FAILS(LAMINAR_ALREADY_EXISTS, "built-in", add(cfg, NULL, "abs", &refused, &err));
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "lowercase", add(cfg, NULL, "Affine", &refused, &err));
  {
    laminar_scalar_function f;
    memset(&f, 0, sizeof f);
    f.name = "x";
    CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "struct_size", laminar_config_add_scalar_function(cfg, &f, &err));
    f.struct_size = sizeof f;
    CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "call is NULL", laminar_config_add_scalar_function(cfg, &f, &err));
    CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "function is NULL", laminar_config_add_scalar_function(cfg, NULL, &err));
  }
  CHECK(refused.freed == 0);

  CHECK_OK(laminar_db_open(":memory:", cfg, &db, &err));
  CHECK_OK(laminar_db_execute(db,
      "CREATE SOURCE events (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);"
      "CREATE MATERIALIZED VIEW per_window AS SELECT k, window_start AS ws, SUM(affine(k, v)) AS s "
      "FROM events GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)",
      NULL, &err));

  make_schema(&schema, 3, COLS);
  schema.children[2]->format = "tsu:";
  CHECK_OK(laminar_writer_create(db, "events", &w, &err));
  for (i = 0; i < ROWS; i += BATCH) {
    int64_t len = ROWS - i < BATCH ? ROWS - i : BATCH, r;
    struct ArrowArray a;
    shared_cols *c = cols_new(3, len);
    for (r = 0; r < len; r++) {
      int64_t row = i + r, kk = (row * 7919) % KEYS, v = (row * 37) % 101 - 50, ts_ms = row;
      c->data[0][r] = kk;
      c->data[1][r] = v;
      c->data[2][r] = ts_ms * 1000; /* µs */
      s.want[kk][ts_ms / WINDOW_MS] += kk * 2 + v;
    }
    make_array(&a, c, len);
    shared_unref(c);
    CHECK_OK(laminar_writer_write(w, &schema, &a, &err));
  }
  {
    /* one row far ahead closes every window of the data */
    struct ArrowArray a;
    shared_cols *c = cols_new(3, 1);
    c->data[2][0] = (int64_t)ROWS * 1000 * 1000;
    make_array(&a, c, 1);
    shared_unref(c);
    CHECK_OK(laminar_writer_write(w, &schema, &a, &err));
  }
  CHECK_OK(laminar_writer_flush(w, &err));

  read_query(db, "SELECT k, ws, s FROM per_window", window_row, &s);
  for (k = 0; k < KEYS; k++)
    for (win = 0; win < ROWS / 1000; win++) CHECK(s.got[k][win] == s.want[k][win]);
  CHECK(good.calls > 0 && good.rows >= ROWS);

  /* Ad hoc, over the source's retained rows. */
  CHECK(read_query(db, "SELECT k, v, affine(k, v) AS y FROM events", check_row, NULL) == ROWS + 1);
  CHECK(g_bad_rows == 0);
  read_query(db, "SELECT affine(20, 1) AS y", one_value, &x);
  CHECK(x == 41);

  /* Failing functions: each fails its statement or stream; the database goes on. */
  CHECK_OK(add(NULL, db, "failing", &failing, &err));
  CHECK_OK(add(NULL, db, "short_result", &short_, &err));
  CHECK_OK(add(NULL, db, "wrong_type", &wrong, &err));
  CHECK_OK(add(NULL, db, "no_result", &none, &err));
  {
    static const char *const CASES[][2] = {
        {"failing", "the model is not loaded (1 rows)"},
        {"short_result", "returned 0 values for 1 rows"},
        {"wrong_type", "returned Float64 where Int64 was declared"},
        {"no_result", "without a result"},
    };
    size_t c;
    for (c = 0; c < sizeof CASES / sizeof CASES[0]; c++) {
      char sql[200];
      struct ArrowArrayStream st;
      laminar_error *err = NULL;
      laminar_status status;
      snprintf(sql, sizeof sql, "SELECT %s(1, 2) AS y", CASES[c][0]);
      status = laminar_db_query(db, sql, &st, &err);
      if (status == LAMINAR_OK) {
        /* the failure may come with the first batch */
        struct ArrowArray a;
        CHECK(st.get_next(&st, &a) != 0);
        CHECK(contains(st.get_last_error(&st), CASES[c][1]));
        CHECK(contains(st.get_last_error(&st), CASES[c][0]));
        st.release(&st);
      } else {
        CHECK(status == LAMINAR_INVALID_DATA);
        CHECK(contains(laminar_error_message(err), CASES[c][1]));
        CHECK(contains(laminar_error_message(err), CASES[c][0]));
        laminar_error_destroy(err);
      }
    }
  }
  /* A continuous query over a failing function fails that stream only. */
  CHECK_OK(laminar_db_execute(db,
      "CREATE SOURCE s2 (k BIGINT, v BIGINT);"
      "CREATE MATERIALIZED VIEW m_failing AS SELECT k, failing(k, v) AS y FROM s2;"
      "CREATE MATERIALIZED VIEW m_fine AS SELECT k, v, affine(k, v) AS y FROM s2;"
      "INSERT INTO s2 VALUES (1, 2), (3, 4)",
      NULL, &err));
  {
    struct ArrowArrayStream st;
    laminar_error *err = NULL;
    laminar_status status;
    int64_t t0 = (int64_t)now_seconds();
    /* wait until the stream has failed */
    for (;;) {
      status = laminar_db_query(db, "SELECT * FROM m_failing", &st, &err);
      if (status != LAMINAR_OK) break;
      st.release(&st);
      CHECK((int64_t)now_seconds() - t0 < 30);
      sleep_ms(10);
    }
    CHECK(contains(laminar_error_message(err), "the model is not loaded"));
    laminar_error_destroy(err);
  }
  g_bad_rows = 0;
  CHECK(read_query(db, "SELECT k, v, y FROM m_fine", check_row, NULL) == 2);
  read_query(db, "SELECT affine(1, 1) AS y", one_value, &x);
  CHECK(x == 3);

  {
    /* SHOW FUNCTIONS lists them */
    struct ArrowArrayStream st;
    struct ArrowArray a;
    int64_t n = 0;
    CHECK_OK(laminar_db_query(db, "SHOW FUNCTIONS", &st, &err));
    for (;;) {
      CHECK(st.get_next(&st, &a) == 0);
      if (a.release == NULL) break;
      n += a.length;
      a.release(&a);
    }
    st.release(&st);
    CHECK(n == 5);
  }

  schema.release(&schema);
  laminar_writer_destroy(w);
  laminar_db_close(db);
  /* The config still holds `affine`; the database's functions are gone. */
  CHECK(good.freed == 0);
  CHECK(failing.freed == 1 && short_.freed == 1 && wrong.freed == 1 && none.freed == 1);
  laminar_config_destroy(cfg);
  CHECK(good.freed == 1);
  CHECK(refused.freed == 0);
  DONE();
}
