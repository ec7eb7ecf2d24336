/* Malformed Arrow data from the caller: a string column with invalid UTF-8, with offsets past its
 * data buffer, with decreasing offsets, and a child shorter than its struct. Each is refused with
 * LAMINAR_INVALID_DATA naming the column, through both import paths (C Data batch and C Stream),
 * before the engine reads it. Run under ASan: an out-of-bounds read here fails the test. */
#include "common.h"

/* One batch of (k VARCHAR NOT NULL, n BIGINT NOT NULL), its buffers owned by the test. */
typedef struct bad_batch {
  int32_t offsets[4];
  char data[8];
  int64_t n[3];
  int64_t length;       /* rows in the struct */
  int64_t child_length; /* rows in child k */
} bad_batch;

static void noop_release_schema(struct ArrowSchema *s) { s->release = NULL; }

static struct ArrowSchema g_child_schemas[2];
static struct ArrowSchema *g_child_ptrs[2] = {&g_child_schemas[0], &g_child_schemas[1]};

static void batch_schema(struct ArrowSchema *out) {
  memset(g_child_schemas, 0, sizeof g_child_schemas);
  g_child_schemas[0].format = "u";
  g_child_schemas[0].name = "k";
  g_child_schemas[0].release = noop_release_schema;
  g_child_schemas[1].format = "l";
  g_child_schemas[1].name = "n";
  g_child_schemas[1].release = noop_release_schema;
  memset(out, 0, sizeof *out);
  out->format = "+s";
  out->n_children = 2;
  out->children = g_child_ptrs;
  out->release = noop_release_schema;
}

/* Owns a copy of the batch's buffers: LaminarDB reads an imported array until it releases it
 * (after the call returns, when the pipeline has processed it), so the test's `bad_batch`, which
 * it rewrites for the next case, cannot be the buffers themselves. */
typedef struct batch_private {
  bad_batch copy;
  struct ArrowArray children[2];
  struct ArrowArray *child_ptrs[2];
  const void *k_buffers[3];
  const void *n_buffers[2];
  const void *buffers[1];
} batch_private;

static void child_noop(struct ArrowArray *a) { a->release = NULL; }
static void batch_release(struct ArrowArray *a) {
  free(a->private_data);
  a->release = NULL;
}

static void batch_array(struct ArrowArray *out, bad_batch *b) {
  batch_private *p = (batch_private *)calloc(1, sizeof *p);
  p->copy = *b;
  b = &p->copy;
  p->k_buffers[0] = NULL;
  p->k_buffers[1] = b->offsets;
  p->k_buffers[2] = b->data;
  p->n_buffers[0] = NULL;
  p->n_buffers[1] = b->n;
  p->children[0].length = b->child_length;
  p->children[0].n_buffers = 3;
  p->children[0].buffers = p->k_buffers;
  p->children[0].release = child_noop;
  p->children[1].length = b->length;
  p->children[1].n_buffers = 2;
  p->children[1].buffers = p->n_buffers;
  p->children[1].release = child_noop;
  p->child_ptrs[0] = &p->children[0];
  p->child_ptrs[1] = &p->children[1];
  memset(out, 0, sizeof *out);
  out->length = b->length;
  out->n_buffers = 1;
  out->buffers = p->buffers;
  out->n_children = 2;
  out->children = p->child_ptrs;
  out->private_data = p;
  out->release = batch_release;
}

/* A stream of one batch. */
typedef struct one_stream {
  bad_batch *b;
  int sent;
} one_stream;

static int stream_schema(struct ArrowArrayStream *s, struct ArrowSchema *out) {
  (void)s;
  batch_schema(out);
  return 0;
}
static int stream_next(struct ArrowArrayStream *s, struct ArrowArray *out) {
  one_stream *o = (one_stream *)s->private_data;
  if (o->sent) {
    memset(out, 0, sizeof *out); /* end of stream: a released array */
    return 0;
  }
  o->sent = 1;
  batch_array(out, o->b);
  return 0;
}
static const char *stream_error(struct ArrowArrayStream *s) {
  (void)s;
  return "no error";
}
static void stream_release(struct ArrowArrayStream *s) { s->release = NULL; }

static void good(bad_batch *b) {
  memset(b, 0, sizeof *b);
  b->offsets[0] = 0;
  b->offsets[1] = 2;
  b->offsets[2] = 4;
  b->offsets[3] = 6;
  memcpy(b->data, "aabbcc", 6);
  b->n[0] = 1;
  b->n[1] = 2;
  b->n[2] = 3;
  b->length = 3;
  b->child_length = 3;
}

static laminar_db *g_db;
static laminar_writer *g_w;

/* Pushes `b` through both paths and checks the outcome. */
static void push_both(bad_batch *b, laminar_status want, const char *needle) {
  struct ArrowSchema schema;
  struct ArrowArray a;
  struct ArrowArrayStream stream;
  one_stream o = {b, 0};
  int64_t rows = 0;
  batch_schema(&schema);
  batch_array(&a, b);
  if (want == LAMINAR_OK) {
    CHECK_OK(laminar_writer_write(g_w, &schema, &a, &err));
  } else {
    CHECK_FAILS(want, needle, laminar_writer_write(g_w, &schema, &a, &err));
  }
  CHECK(a.release == NULL);
  memset(&stream, 0, sizeof stream);
  stream.get_schema = stream_schema;
  stream.get_next = stream_next;
  stream.get_last_error = stream_error;
  stream.release = stream_release;
  stream.private_data = &o;
  if (want == LAMINAR_OK) {
    CHECK_OK(laminar_writer_write_stream(g_w, &stream, &rows, &err));
  } else {
    CHECK_FAILS(want, needle, laminar_writer_write_stream(g_w, &stream, &rows, &err));
  }
  CHECK(stream.release == NULL);
}

int main(void) {
  bad_batch b;
  struct ArrowArrayStream result;
  struct ArrowSchema rs;
  struct ArrowArray r;
  CHECK_OK(laminar_db_open(":memory:", NULL, &g_db, &err));
  CHECK_OK(laminar_db_execute(g_db,
      "CREATE SOURCE s (k VARCHAR NOT NULL, n BIGINT NOT NULL);"
      "CREATE MATERIALIZED VIEW u AS SELECT upper(k) AS uk, length(k) AS len, n FROM s", NULL, &err));
  CHECK_OK(laminar_writer_create(g_db, "s", &g_w, &err));

  good(&b);
  push_both(&b, LAMINAR_OK, NULL);

  good(&b); /* invalid UTF-8 */
  b.data[2] = (char)0xff;
  b.data[3] = (char)0xfe;
  push_both(&b, LAMINAR_INVALID_DATA, "'k'");

  good(&b); /* the last offset points past the data buffer */
  b.offsets[3] = 853772;
  push_both(&b, LAMINAR_INVALID_DATA, "'k'");

  good(&b); /* decreasing offsets */
  b.offsets[1] = 5;
  b.offsets[2] = 1;
  push_both(&b, LAMINAR_INVALID_DATA, "'k'");

  good(&b); /* a child shorter than the struct */
  b.child_length = 1;
  push_both(&b, LAMINAR_INVALID_DATA, NULL);

  /* only the two good batches arrived, and they read back right */
  CHECK_OK(laminar_writer_flush(g_w, &err));
  CHECK_OK(laminar_db_query(g_db, "SELECT count(*) AS c, sum(len) AS l, min(uk) AS m FROM u", &result, &err));
  CHECK(result.get_schema(&result, &rs) == 0);
  CHECK(result.get_next(&result, &r) == 0);
  CHECK(r.length == 1);
  CHECK(((const int64_t *)r.children[0]->buffers[1])[0] == 6);
  CHECK(((const int64_t *)r.children[1]->buffers[1])[0] == 12);
  r.release(&r);
  rs.release(&rs);
  result.release(&result);
  laminar_writer_destroy(g_w);
  laminar_db_close(g_db);
  DONE();
}
