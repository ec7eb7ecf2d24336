/* Shared helpers of the C ABI tests: checks, and building/reading Arrow C Data by hand (the tests
 * use only include/laminar.h and libc, as a C user would). */
#ifndef LAMINAR_TEST_COMMON_H
#define LAMINAR_TEST_COMMON_H

#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "laminar.h"

static int g_checks = 0; /* checks run so far */

/* Whether `hay` contains `needle`; a NULL needle matches anything. */
static inline int contains(const char *hay, const char *needle) {
  return needle == NULL || strstr(hay, needle) != NULL;
}

#define CHECK(cond)                                                                   \
  do {                                                                                \
    g_checks++;                                                                       \
    if (!(cond)) {                                                                    \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);        \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

/* Runs a call whose last argument is `&err`; fails the test with the message if it fails. */
#define CHECK_OK(call)                                                                \
  do {                                                                                \
    laminar_error *err = NULL;                                                        \
    laminar_status st_ = (call);                                                      \
    g_checks++;                                                                       \
    if (st_ != LAMINAR_OK) {                                                          \
      fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call,        \
              laminar_status_str(st_), laminar_error_message(err));                   \
      exit(1);                                                                        \
    }                                                                                 \
    CHECK(err == NULL);                                                               \
  } while (0)

/* Runs a call whose last argument is `&err`; checks it fails with `status` and that the message
 * contains `needle` (NULL: any message). */
#define CHECK_FAILS(status, needle, call)                                             \
  do {                                                                                \
    laminar_error *err = NULL;                                                        \
    laminar_status st_ = (call);                                                      \
    g_checks++;                                                                       \
    if (st_ != (status) || err == NULL || laminar_error_status(err) != (status) ||    \
        !contains(laminar_error_message(err), (needle))) {                            \
      fprintf(stderr, "%s:%d: %s: expected %s containing '%s', got %s: %s\n",         \
              __FILE__, __LINE__, #call, laminar_status_str(status),                  \
              (needle) ? (needle) : "", laminar_status_str(st_),                      \
              err ? laminar_error_message(err) : "(no error object)");                \
      exit(1);                                                                        \
    }                                                                                 \
    laminar_error_destroy(err);                                                       \
  } while (0)

#define DONE()                                                                        \
  do {                                                                                \
    printf("%s: %d checks passed\n", __FILE__, g_checks);                             \
    return 0;                                                                         \
  } while (0)

static inline double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void sleep_ms(long ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ building int64 batches */

/* A schema: struct of `n` non-nullable int64 columns named by `names`. */
static inline void schema_release(struct ArrowSchema *s) {
  int64_t i;
  for (i = 0; i < s->n_children; i++) {
    struct ArrowSchema *c = s->children[i];
    free((void *)c->name);
    free(c);
  }
  free(s->children);
  s->release = NULL;
}

static inline void make_schema(struct ArrowSchema *out, int n, const char *const *names) {
  int i;
  memset(out, 0, sizeof *out);
  out->format = "+s";
  out->n_children = n;
  out->children = (struct ArrowSchema **)calloc((size_t)n, sizeof(struct ArrowSchema *));
  for (i = 0; i < n; i++) {
    struct ArrowSchema *c = (struct ArrowSchema *)calloc(1, sizeof *c);
    size_t len = strlen(names[i]);
    char *name = (char *)malloc(len + 1);
    memcpy(name, names[i], len + 1);
    c->format = "l";
    c->name = name;
    c->release = schema_release; /* children own nothing; their release only marks them */
    out->children[i] = c;
  }
  out->release = schema_release;
}

/* Column buffers are shared between arrays (a batch may be pushed more than once); each array
 * holds a reference. */
typedef struct shared_cols {
  int refs;
  pthread_mutex_t lock;
  int n;
  int64_t **data;
} shared_cols;

static inline void shared_unref(shared_cols *c) {
  int last, i;
  pthread_mutex_lock(&c->lock);
  last = --c->refs == 0;
  pthread_mutex_unlock(&c->lock);
  if (!last) return;
  for (i = 0; i < c->n; i++) free(c->data[i]);
  free(c->data);
  pthread_mutex_destroy(&c->lock);
  free(c);
}

typedef struct array_private {
  shared_cols *cols;
  const void **buffers; /* children's buffer pointer pairs, 2 per child */
} array_private;

static inline void child_release(struct ArrowArray *a) { a->release = NULL; }

static inline void array_release(struct ArrowArray *a) {
  array_private *p = (array_private *)a->private_data;
  int64_t i;
  for (i = 0; i < a->n_children; i++) free(a->children[i]);
  free(a->children);
  free((void *)a->buffers);
  free((void *)p->buffers);
  shared_unref(p->cols);
  free(p);
  a->release = NULL;
}

/* Allocates `ncols` columns of `len` rows; fill them through cols->data[i][row]. */
static inline shared_cols *cols_new(int ncols, int64_t len) {
  int i;
  shared_cols *c = (shared_cols *)calloc(1, sizeof *c);
  c->refs = 1;
  pthread_mutex_init(&c->lock, NULL);
  c->n = ncols;
  c->data = (int64_t **)calloc((size_t)ncols, sizeof(int64_t *));
  for (i = 0; i < ncols; i++) c->data[i] = (int64_t *)calloc((size_t)(len > 0 ? len : 1), sizeof(int64_t));
  return c;
}

/* A struct array over `cols` (takes one more reference; drop yours with shared_unref). */
static inline void make_array(struct ArrowArray *out, shared_cols *cols, int64_t len) {
  int i;
  array_private *p = (array_private *)calloc(1, sizeof *p);
  pthread_mutex_lock(&cols->lock);
  cols->refs++;
  pthread_mutex_unlock(&cols->lock);
  p->cols = cols;
  p->buffers = (const void **)calloc((size_t)cols->n * 2, sizeof(void *));
  memset(out, 0, sizeof *out);
  out->length = len;
  out->n_buffers = 1;
  out->buffers = (const void **)calloc(1, sizeof(void *));
  out->n_children = cols->n;
  out->children = (struct ArrowArray **)calloc((size_t)cols->n, sizeof(struct ArrowArray *));
  for (i = 0; i < cols->n; i++) {
    struct ArrowArray *c = (struct ArrowArray *)calloc(1, sizeof *c);
    c->length = len;
    c->n_buffers = 2;
    p->buffers[2 * i] = NULL;
    p->buffers[2 * i + 1] = cols->data[i];
    c->buffers = &p->buffers[2 * i];
    c->release = child_release;
    out->children[i] = c;
  }
  out->private_data = p;
  out->release = array_release;
}

/* ------------------------------------------------------------------ reading results */

/* Index of the column named `name` in a struct schema, or -1. */
static inline int column_index(const struct ArrowSchema *s, const char *name) {
  int64_t i;
  for (i = 0; i < s->n_children; i++)
    if (s->children[i]->name && strcmp(s->children[i]->name, name) == 0) return (int)i;
  return -1;
}

/* Value `row` of int64 column `col` of a struct array (nulls read as 0). */
static inline int64_t int64_at(const struct ArrowArray *a, int col, int64_t row) {
  const struct ArrowArray *c = a->children[col];
  const uint8_t *valid = (const uint8_t *)c->buffers[0];
  int64_t i = row + c->offset + a->offset;
  if (valid && !(valid[i / 8] & (1 << (i % 8)))) return 0;
  return ((const int64_t *)c->buffers[1])[i];
}

/* Sum of an int64 column over a whole batch. */
static inline int64_t sum_column(const struct ArrowArray *a, int col) {
  int64_t r, s = 0;
  for (r = 0; r < a->length; r++) s += int64_at(a, col, r);
  return s;
}

#endif
