package laminar

// The C half of BenchmarkW1: the same W1 rows built and pushed through the C ABI by C code, so
// the benchmark prints Go and C side by side in one run. Not part of the API.

/*
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <laminar.h>

typedef struct { int64_t *cols[3]; const void *bufs[3][2]; struct ArrowArray kids[3]; struct ArrowArray *kid_ptrs[3]; const void *top[1]; } lgb_batch;

static void lgb_release_child(struct ArrowArray *a) { a->release = NULL; }
static void lgb_release(struct ArrowArray *a) {
	lgb_batch *b = (lgb_batch *)a->private_data;
	int i;
	for (i = 0; i < 3; i++) free(b->cols[i]);
	free(b);
	a->release = NULL;
}
static void lgb_release_schema(struct ArrowSchema *s) { s->release = NULL; }

static double lgb_now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

// Pushes W1 rows [0, events) in batches of 8192 into `source` and waits until the windows of
// `stream` have counted every row (column "n" is the second); returns seconds, or -status.
static double lgb_push_w1(laminar_db *db, const char *source, const char *stream, int64_t events) {
	static const char *names[3] = {"k", "v", "ts"};
	static const char *formats[3] = {"l", "l", "tsu:"};
	struct ArrowSchema kids[3], *kid_ptrs[3], schema;
	int64_t nb = (events + 8191) / 8192, b, r, counted = 0;
	struct ArrowArray *arrays = (struct ArrowArray *)calloc((size_t)nb, sizeof *arrays);
	laminar_writer *w = NULL;
	laminar_subscription *sub = NULL;
	laminar_status st;
	double t0, secs;
	int i;
	memset(&schema, 0, sizeof schema);
	for (i = 0; i < 3; i++) {
		memset(&kids[i], 0, sizeof kids[i]);
		kids[i].format = formats[i];
		kids[i].name = names[i];
		kids[i].release = lgb_release_schema;
		kid_ptrs[i] = &kids[i];
	}
	schema.format = "+s";
	schema.n_children = 3;
	schema.children = kid_ptrs;
	schema.release = lgb_release_schema;
	for (b = 0; b < nb; b++) {
		int64_t first = b * 8192, n = events - first < 8192 ? events - first : 8192;
		lgb_batch *d = (lgb_batch *)calloc(1, sizeof *d);
		for (i = 0; i < 3; i++) d->cols[i] = (int64_t *)malloc((size_t)n * sizeof(int64_t));
		for (r = 0; r < n; r++) {
			uint64_t x = (uint64_t)(first + r);
			d->cols[0][r] = (int64_t)((x * 2654435761u) % 1000);
			d->cols[1][r] = (int64_t)((x * 7919u) % 1000);
			d->cols[2][r] = 1700000000000000LL + (int64_t)x * 1000;
		}
		for (i = 0; i < 3; i++) {
			d->bufs[i][0] = NULL;
			d->bufs[i][1] = d->cols[i];
			d->kids[i].length = n;
			d->kids[i].n_buffers = 2;
			d->kids[i].buffers = d->bufs[i];
			d->kids[i].release = lgb_release_child;
			d->kid_ptrs[i] = &d->kids[i];
		}
		arrays[b].length = n;
		arrays[b].n_buffers = 1;
		arrays[b].buffers = d->top;
		arrays[b].n_children = 3;
		arrays[b].children = d->kid_ptrs;
		arrays[b].release = lgb_release;
		arrays[b].private_data = d;
	}
	if ((st = laminar_db_subscribe(db, stream, NULL, &sub, NULL)) != LAMINAR_OK) return -(double)st;
	if ((st = laminar_writer_create(db, source, &w, NULL)) != LAMINAR_OK) return -(double)st;
	t0 = lgb_now();
	for (b = 0; b < nb; b++)
		if ((st = laminar_writer_write(w, &schema, &arrays[b], NULL)) != LAMINAR_OK) return -(double)st;
	laminar_writer_finish(w, NULL);
	while (counted < events) {
		struct ArrowArray out;
		if ((st = laminar_subscription_next(sub, 30000, &out, NULL)) != LAMINAR_OK || out.release == NULL) return -(double)(st ? st : LAMINAR_INTERNAL);
		{
			const int64_t *n = (const int64_t *)out.children[1]->buffers[1];
			for (r = 0; r < out.length; r++) counted += n[r + out.children[1]->offset];
		}
		out.release(&out);
	}
	secs = lgb_now() - t0;
	laminar_subscription_destroy(sub);
	laminar_writer_destroy(w);
	free(arrays);
	return secs;
}
*/
import "C"

import (
	"runtime"
	"time"
)

// benchPushW1FromC pushes W1 through the C ABI from C (see lgb_push_w1).
func benchPushW1FromC(db *DB, source, stream string, events int) (time.Duration, error) {
	h, done, err := db.handle()
	if err != nil {
		return 0, err
	}
	defer done()
	s, f1 := cstr(source)
	defer f1()
	st, f2 := cstr(stream)
	defer f2()
	secs := float64(C.lgb_push_w1(h, s, st, C.int64_t(events)))
	runtime.KeepAlive(db)
	if secs < 0 {
		return 0, &Error{Status: Status(-secs), Message: "the C push failed", SQLOffset: -1}
	}
	return time.Duration(secs * float64(time.Second)), nil
}
