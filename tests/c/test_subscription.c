/* Subscriptions: pull reads with timeouts and cancel from another thread, the pull
 * ArrowArrayStream, stream errors, and push callbacks — order of calls, request(n) credits and
 * back-pressure reaching the writer, cancel and destroy from inside a callback, callbacks after
 * close. */
#include "common.h"

static const char *const COLS[] = {"k", "v", "ts"};

typedef struct state {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int schema_calls, batch_calls, error_calls, close_calls, freed;
  int bad_order;           /* a callback came before on_schema or after on_close */
  laminar_status error_status;
  int64_t rows;
  laminar_subscription *sub; /* for calls from inside callbacks */
  int request_each;        /* request(1) from inside each on_batch */
  int cancel_after;        /* cancel from inside on_batch after this many batches */
  int destroy_inside;      /* destroy the subscription from inside the first on_batch */
} state;

static void st_init(state *s) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
}

static void st_free(state *s) {
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
}

static void on_schema(void *ud, struct ArrowSchema *schema) {
  state *s = (state *)ud;
  pthread_mutex_lock(&s->mu);
  if (s->schema_calls || s->batch_calls || s->close_calls) s->bad_order = 1;
  s->schema_calls++;
  pthread_mutex_unlock(&s->mu);
  CHECK(strcmp(schema->format, "+s") == 0);
  /* left unreleased on purpose: LaminarDB releases it after the callback */
}

static void on_batch(void *ud, struct ArrowArray *batch) {
  state *s = (state *)ud;
  int n;
  pthread_mutex_lock(&s->mu);
  if (!s->schema_calls || s->close_calls) s->bad_order = 1;
  n = ++s->batch_calls;
  s->rows += batch->length;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  batch->release(batch); /* released by the callback (the other allowed way) */
  if (s->request_each) CHECK(laminar_subscription_request(s->sub, 1, NULL) == LAMINAR_OK);
  if (s->cancel_after && n == s->cancel_after) laminar_subscription_cancel(s->sub);
  if (s->destroy_inside && n == 1) laminar_subscription_destroy(s->sub);
}

static void on_error(void *ud, const laminar_error *e) {
  state *s = (state *)ud;
  pthread_mutex_lock(&s->mu);
  if (s->close_calls) s->bad_order = 1;
  s->error_calls++;
  s->error_status = laminar_error_status(e);
  pthread_mutex_unlock(&s->mu);
}

static void on_close(void *ud) {
  state *s = (state *)ud;
  pthread_mutex_lock(&s->mu);
  if (s->close_calls || !s->schema_calls) s->bad_order = 1;
  s->close_calls++;
  pthread_mutex_unlock(&s->mu);
}

static void user_data_free(void *ud) {
  state *s = (state *)ud;
  pthread_mutex_lock(&s->mu);
  if (!s->close_calls) s->bad_order = 1;
  s->freed++;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static laminar_subscriber subscriber(state *s) {
  laminar_subscriber sub;
  memset(&sub, 0, sizeof sub);
  sub.struct_size = sizeof sub;
  sub.on_schema = on_schema;
  sub.on_batch = on_batch;
  sub.on_error = on_error;
  sub.on_close = on_close;
  sub.user_data = s;
  sub.user_data_free = user_data_free;
  return sub;
}

/* Waits (up to 10 s) until *field >= want; reads it under the lock. */
static int wait_for(state *s, const int *field, int want) {
  double deadline = now_seconds() + 10;
  int ok;
  pthread_mutex_lock(&s->mu);
  while (*field < want && now_seconds() < deadline) {
    pthread_mutex_unlock(&s->mu);
    sleep_ms(2);
    pthread_mutex_lock(&s->mu);
  }
  ok = *field >= want;
  pthread_mutex_unlock(&s->mu);
  return ok;
}

/* Waits (up to 10 s) until s->rows >= want. */
static int wait_rows(state *s, int64_t want) {
  double deadline = now_seconds() + 10;
  int ok;
  pthread_mutex_lock(&s->mu);
  while (s->rows < want && now_seconds() < deadline) {
    pthread_mutex_unlock(&s->mu);
    sleep_ms(2);
    pthread_mutex_lock(&s->mu);
  }
  ok = s->rows >= want;
  pthread_mutex_unlock(&s->mu);
  return ok;
}

static void push(laminar_writer *w, int64_t first_ts, int64_t len) {
  struct ArrowSchema schema;
  struct ArrowArray a;
  shared_cols *c = cols_new(3, len);
  int64_t i;
  for (i = 0; i < len; i++) {
    c->data[0][i] = i % 3;
    c->data[1][i] = 1;
    c->data[2][i] = first_ts + i;
  }
  make_schema(&schema, 3, COLS);
  make_array(&a, c, len);
  shared_unref(c);
  CHECK_OK(laminar_writer_write(w, &schema, &a, &err));
  schema.release(&schema);
}

static laminar_db *open_db(const char *queue_capacity) {
  laminar_db *db = NULL;
  laminar_config *cfg = NULL;
  CHECK_OK(laminar_config_create(&cfg, &err));
  CHECK_OK(laminar_config_set(cfg, "queue_capacity", queue_capacity, &err));
  CHECK_OK(laminar_db_open(":memory:", cfg, &db, &err));
  laminar_config_destroy(cfg);
  CHECK_OK(laminar_db_execute(db,
      "CREATE SOURCE s (k BIGINT, v BIGINT, ts BIGINT, WATERMARK FOR ts AS ts - 0);"
      "CREATE STREAM rows_out AS SELECT k, v FROM s;"
      "CREATE STREAM windows AS SELECT k, COUNT(*) AS n FROM s GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)",
      NULL, &err));
  return db;
}

typedef struct canceller_arg {
  laminar_subscription *sub;
  long delay_ms;
} canceller_arg;

static void *cancel_later(void *arg) {
  canceller_arg *c = (canceller_arg *)arg;
  sleep_ms(c->delay_ms);
  laminar_subscription_cancel(c->sub);
  laminar_subscription_cancel(c->sub); /* idempotent */
  return NULL;
}

typedef struct writer_arg {
  laminar_writer *w;
  int batches;
  volatile int done; /* batches pushed so far */
} writer_arg;

static void *write_many(void *arg) {
  writer_arg *a = (writer_arg *)arg;
  int i;
  for (i = 0; i < a->batches; i++) {
    push(a->w, i * 10, 10);
    __atomic_store_n(&a->done, i + 1, __ATOMIC_RELEASE);
  }
  return NULL;
}

static void test_pull(void) {
  laminar_db *db = open_db("64");
  laminar_writer *w = NULL;
  laminar_subscription *sub = NULL;
  struct ArrowArray a;
  struct ArrowSchema schema;
  pthread_t t;
  canceller_arg ca;

  CHECK_OK(laminar_db_subscribe(db, "rows_out", NULL, &sub, &err));
  CHECK_OK(laminar_subscription_schema(sub, &schema, &err));
  CHECK(schema.n_children == 2);
  schema.release(&schema);
  CHECK_FAILS(LAMINAR_TIMEOUT, NULL, laminar_subscription_next(sub, 30, &a, &err));
  CHECK_FAILS(LAMINAR_TIMEOUT, NULL, laminar_subscription_next(sub, 0, &a, &err));
  CHECK_OK(laminar_writer_create(db, "s", &w, &err));
  push(w, 0, 7);
  CHECK_OK(laminar_subscription_next(sub, -1, &a, &err));
  CHECK(a.release != NULL && a.length == 7 && a.n_children == 2);
  a.release(&a);
  {
    /* results before the first checkpoint belong to epoch 1 (an in-memory database never
       checkpoints) */
    uint64_t epoch = 99;
    CHECK_OK(laminar_subscription_epoch(sub, &epoch, &err));
    CHECK(epoch == 1);
    CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "out_epoch", laminar_subscription_epoch(sub, NULL, &err));
  }
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "push subscriptions", laminar_subscription_request(sub, 1, &err));

  /* cancel from another thread ends a blocked read with the end of the subscription */
  ca.sub = sub;
  ca.delay_ms = 50;
  CHECK(pthread_create(&t, NULL, cancel_later, &ca) == 0);
  CHECK_OK(laminar_subscription_next(sub, -1, &a, &err));
  CHECK(a.release == NULL);
  pthread_join(t, NULL);
  CHECK_OK(laminar_subscription_next(sub, -1, &a, &err));
  CHECK(a.release == NULL);
  laminar_subscription_destroy(sub);

  /* the pull stream: get_next blocks until data; cancel ends it */
  {
    struct ArrowArrayStream stream;
    CHECK_OK(laminar_db_subscribe(db, "rows_out", NULL, &sub, &err));
    CHECK_OK(laminar_subscription_stream(sub, &stream, &err));
    push(w, 10, 5);
    CHECK(stream.get_next(&stream, &a) == 0);
    CHECK(a.release != NULL && a.length == 5);
    a.release(&a);
    laminar_subscription_destroy(sub); /* the stream shares the subscription: still readable */
    push(w, 20, 4);
    CHECK(stream.get_next(&stream, &a) == 0);
    CHECK(a.length == 4);
    a.release(&a);
    stream.release(&stream);
  }

  /* a subscriber that lags is ended; the stream reports errno and the full error */
  {
    struct ArrowArrayStream stream;
    laminar_config *opts = NULL;
    laminar_error *e = NULL;
    int i;
    CHECK_OK(laminar_config_create(&opts, &err));
    CHECK_OK(laminar_config_set(opts, "buffer_size", "1", &err));
    CHECK_OK(laminar_db_subscribe(db, "rows_out", opts, &sub, &err));
    laminar_config_destroy(opts);
    CHECK_OK(laminar_subscription_stream(sub, &stream, &err));
    for (i = 0; i < 4; i++) push(w, 30 + i, 1);
    CHECK_OK(laminar_writer_flush(w, &err));
    CHECK(stream.get_next(&stream, &a) == 12); /* ENOMEM */
    CHECK(strstr(stream.get_last_error(&stream), "lagged") != NULL);
    CHECK(laminar_error_from_stream(&stream, &e) == LAMINAR_RESOURCE_EXHAUSTED);
    CHECK(e != NULL && strstr(laminar_error_message(e), "lagged") != NULL);
    laminar_error_destroy(e);
    stream.release(&stream);
    CHECK(laminar_error_from_stream(&stream, &e) == LAMINAR_INVALID_ARGUMENT); /* released */
    CHECK(e == NULL);
    laminar_subscription_destroy(sub);
  }
  laminar_writer_destroy(w);
  laminar_db_close(db);
}

static void test_push_basic(void) {
  laminar_db *db = open_db("64");
  laminar_writer *w = NULL;
  state s;
  laminar_subscriber cb;
  int i;

  st_init(&s);
  cb = subscriber(&s);
  CHECK_OK(laminar_db_subscribe_push(db, "windows", &cb, NULL, &s.sub, &err));
  CHECK_OK(laminar_writer_create(db, "s", &w, &err));
  for (i = 0; i < 10; i++) push(w, i * 500, 300); /* ts 0..4799: 5 windows x 3 keys */
  CHECK_OK(laminar_writer_finish(w, &err));
  CHECK_OK(laminar_writer_flush(w, &err)); /* every window is in the subscription's buffer */
  CHECK(wait_for(&s, &s.schema_calls, 1));
  sleep_ms(100);
  pthread_mutex_lock(&s.mu);
  CHECK(s.schema_calls == 1);
  CHECK(s.batch_calls == 0); /* nothing before the first request, though data is waiting */
  pthread_mutex_unlock(&s.mu);
  CHECK_OK(laminar_subscription_request(s.sub, UINT64_MAX, &err));
  CHECK(wait_rows(&s, 15));
  laminar_subscription_destroy(s.sub); /* waits for on_close */
  CHECK(s.close_calls == 1 && s.freed == 1 && s.error_calls == 0 && !s.bad_order);
  CHECK(s.rows == 15);
  st_free(&s);

  /* push-only and pull-only calls are refused on the other kind */
  st_init(&s);
  cb = subscriber(&s);
  CHECK_OK(laminar_db_subscribe_push(db, "rows_out", &cb, NULL, &s.sub, &err));
  {
    struct ArrowArray a;
    struct ArrowArrayStream stream;
    CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "push subscription", laminar_subscription_next(s.sub, 0, &a, &err));
    CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "push subscription", laminar_subscription_stream(s.sub, &stream, &err));
  }
  laminar_subscription_destroy(s.sub);
  CHECK(s.close_calls == 1 && s.freed == 1 && !s.bad_order);
  st_free(&s);

  /* a struct_size that was not set is refused, and no callback runs */
  st_init(&s);
  cb = subscriber(&s);
  cb.struct_size = 0;
  CHECK_FAILS(LAMINAR_INVALID_ARGUMENT, "struct_size", laminar_db_subscribe_push(db, "rows_out", &cb, NULL, &s.sub, &err));
  CHECK(s.sub == NULL);
  cb.struct_size = sizeof cb;
  CHECK_FAILS(LAMINAR_NOT_FOUND, "did you mean", laminar_db_subscribe_push(db, "window", &cb, NULL, &s.sub, &err));
  CHECK(s.schema_calls == 0 && s.freed == 0);
  st_free(&s);
  laminar_writer_destroy(w);
  laminar_db_close(db);
}

static void test_backpressure(void) {
  /* One batch granted at a time, on_full = block, tiny buffers: the writer must stall instead of
   * memory growing, then finish once the subscriber reads. */
  laminar_db *db = open_db("2");
  laminar_writer *w = NULL;
  laminar_config *opts = NULL;
  state s;
  laminar_subscriber cb;
  writer_arg wa;
  pthread_t t;
  int stalled_at;

  st_init(&s);
  cb = subscriber(&s);
  CHECK_OK(laminar_config_create(&opts, &err));
  CHECK_OK(laminar_config_set(opts, "on_full", "block", &err));
  CHECK_OK(laminar_config_set(opts, "buffer_size", "1", &err));
  CHECK_OK(laminar_db_subscribe_push(db, "rows_out", &cb, opts, &s.sub, &err));
  laminar_config_destroy(opts);
  CHECK_OK(laminar_subscription_request(s.sub, 1, &err));
  CHECK_OK(laminar_writer_create(db, "s", &w, &err));
  wa.w = w;
  wa.batches = 60;
  wa.done = 0;
  CHECK(pthread_create(&t, NULL, write_many, &wa) == 0);
  /* wait until the writer has made no progress for 300 ms (it stalled), at most 10 s */
  {
    double deadline = now_seconds() + 10, since = now_seconds();
    int last = -1;
    for (;;) {
      int now = __atomic_load_n(&wa.done, __ATOMIC_ACQUIRE);
      if (now != last) {
        last = now;
        since = now_seconds();
      }
      if (now_seconds() - since >= 0.3 || now_seconds() > deadline) break;
      sleep_ms(10);
    }
    stalled_at = last;
  }
  CHECK(wait_for(&s, &s.batch_calls, 1));
  pthread_mutex_lock(&s.mu);
  CHECK(s.batch_calls == 1); /* exactly the one batch granted */
  pthread_mutex_unlock(&s.mu);
  /* credit 1 + subscription buffer 1 + pending 1 + source queue 2, with slack */
  CHECK(stalled_at <= 8);
  /* now read one at a time: each on_batch grants the next */
  s.request_each = 1;
  CHECK_OK(laminar_subscription_request(s.sub, 1, &err));
  CHECK(pthread_join(t, NULL) == 0);
  CHECK(wait_for(&s, &s.batch_calls, 60));
  laminar_subscription_destroy(s.sub);
  CHECK(s.rows == 600 && s.close_calls == 1 && s.freed == 1 && s.error_calls == 0 && !s.bad_order);
  st_free(&s);
  laminar_writer_destroy(w);
  laminar_db_close(db);
}

static void test_cancel_and_destroy_inside(void) {
  laminar_db *db = open_db("64");
  laminar_writer *w = NULL;
  state s;
  laminar_subscriber cb;
  int i;

  CHECK_OK(laminar_writer_create(db, "s", &w, &err));

  /* cancel from inside on_batch: ends with on_close alone */
  st_init(&s);
  s.cancel_after = 2;
  cb = subscriber(&s);
  CHECK_OK(laminar_db_subscribe_push(db, "rows_out", &cb, NULL, &s.sub, &err));
  CHECK_OK(laminar_subscription_request(s.sub, UINT64_MAX, &err));
  for (i = 0; i < 20; i++) push(w, i, 1);
  CHECK(wait_for(&s, &s.freed, 1));
  CHECK(s.batch_calls >= 2 && s.close_calls == 1 && s.error_calls == 0 && !s.bad_order);
  laminar_subscription_destroy(s.sub);
  CHECK(s.freed == 1);
  st_free(&s);

  /* destroy from inside on_batch: no deadlock; on_close and user_data_free follow */
  st_init(&s);
  s.destroy_inside = 1;
  cb = subscriber(&s);
  CHECK_OK(laminar_db_subscribe_push(db, "rows_out", &cb, NULL, &s.sub, &err));
  CHECK_OK(laminar_subscription_request(s.sub, UINT64_MAX, &err));
  for (i = 0; i < 5; i++) push(w, i, 1);
  CHECK(wait_for(&s, &s.freed, 1));
  CHECK(s.close_calls == 1 && s.error_calls == 0 && !s.bad_order);
  sleep_ms(20);
  st_free(&s);
  laminar_writer_destroy(w);
  laminar_db_close(db);
}

static void test_callbacks_after_close(void) {
  laminar_db *db = open_db("64");
  laminar_writer *w = NULL;
  state s;
  laminar_subscriber cb;

  st_init(&s);
  cb = subscriber(&s);
  CHECK_OK(laminar_db_subscribe_push(db, "rows_out", &cb, NULL, &s.sub, &err));
  CHECK_OK(laminar_subscription_request(s.sub, UINT64_MAX, &err));
  CHECK_OK(laminar_writer_create(db, "s", &w, &err));
  push(w, 0, 3);
  CHECK(wait_for(&s, &s.batch_calls, 1));
  laminar_db_close(db);
  /* the subscription ends by itself: on_error(CLOSED), then on_close, then user_data_free */
  CHECK(wait_for(&s, &s.freed, 1));
  CHECK(s.error_calls == 1 && s.error_status == LAMINAR_CLOSED && s.close_calls == 1 && !s.bad_order);
  /* calls after close say so; cancel is harmless; destroy after close is safe */
  CHECK_FAILS(LAMINAR_CLOSED, NULL, laminar_subscription_request(s.sub, 5, &err));
  laminar_subscription_cancel(s.sub);
  laminar_subscription_destroy(s.sub);
  CHECK(s.freed == 1 && s.close_calls == 1);
  laminar_writer_destroy(w);
  st_free(&s);
}

/* A subscriber that was never granted a credit still learns that the database closed. */
static void test_close_without_credits(void) {
  laminar_db *db = open_db("64");
  state s;
  laminar_subscriber cb;

  st_init(&s);
  cb = subscriber(&s);
  CHECK_OK(laminar_db_subscribe_push(db, "rows_out", &cb, NULL, &s.sub, &err));
  CHECK(wait_for(&s, &s.schema_calls, 1));
  laminar_db_close(db);
  CHECK(wait_for(&s, &s.freed, 1));
  CHECK(s.batch_calls == 0 && s.error_calls == 1 && s.error_status == LAMINAR_CLOSED && s.close_calls == 1);
  CHECK(!s.bad_order);
  laminar_subscription_destroy(s.sub);
  st_free(&s);
}

/* on_full = block: a callback that calls back into the database while the pipeline waits for
 * it must not deadlock. */
static laminar_db *g_reentrant_db;
static void on_batch_reentrant(void *ud, struct ArrowArray *batch) {
  struct ArrowSchema sch;
  struct ArrowArray arr;
  CHECK(laminar_db_schema(g_reentrant_db, "rows_out", &sch, NULL) == LAMINAR_OK);
  sch.release(&sch);
  CHECK(laminar_db_metrics(g_reentrant_db, &sch, &arr, NULL) == LAMINAR_OK);
  arr.release(&arr);
  sch.release(&sch);
  on_batch(ud, batch);
}

static void test_block_subscriber_calls_back_into_the_database(void) {
  laminar_db *db = open_db("2");
  laminar_writer *w = NULL;
  laminar_config *opts = NULL;
  state s;
  laminar_subscriber cb;
  int i;

  g_reentrant_db = db;
  st_init(&s);
  cb = subscriber(&s);
  cb.on_batch = on_batch_reentrant;
  CHECK_OK(laminar_config_create(&opts, &err));
  CHECK_OK(laminar_config_set(opts, "on_full", "block", &err));
  CHECK_OK(laminar_config_set(opts, "buffer_size", "1", &err));
  CHECK_OK(laminar_db_subscribe_push(db, "rows_out", &cb, opts, &s.sub, &err));
  laminar_config_destroy(opts);
  CHECK_OK(laminar_subscription_request(s.sub, UINT64_MAX, &err));
  CHECK_OK(laminar_writer_create(db, "s", &w, &err));
  for (i = 0; i < 40; i++) push(w, i, 5);
  CHECK_OK(laminar_writer_flush(w, &err));
  CHECK(wait_for(&s, &s.batch_calls, 40));
  laminar_subscription_destroy(s.sub);
  CHECK(s.rows == 200 && s.close_calls == 1 && !s.bad_order);
  st_free(&s);
  laminar_writer_destroy(w);
  laminar_db_close(db);
}

int main(void) {
  test_close_without_credits();
  test_block_subscriber_calls_back_into_the_database();
  test_pull();
  test_push_basic();
  test_backpressure();
  test_cancel_and_destroy_inside();
  test_callbacks_after_close();
  DONE();
}
