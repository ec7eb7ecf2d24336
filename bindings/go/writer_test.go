package laminar

import (
	"context"
	"errors"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/array"
)

func TestConcurrentWritersFromManyGoroutines(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, WithConfig("queue_capacity", "4"))
	mustExec(t, db, createEvents)
	mustExec(t, db, "CREATE MATERIALIZED VIEW per_k AS SELECT k, COUNT(*) AS n, SUM(v) AS s FROM events GROUP BY k")
	const goroutines, records, rows = 8, 40, 250
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			w, err := db.Writer("events")
			if err != nil {
				errs <- err
				return
			}
			defer w.Close()
			for r := 0; r < records; r++ {
				ev := make([]event, rows)
				for i := range ev {
					ev[i] = event{k: int64(g), v: int64(i), tsMicros: int64(r*rows+i) * 1000}
				}
				rec := record(ev)
				err := w.Write(ctx, rec)
				rec.Release()
				if err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	w, _ := db.Writer("events")
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	w.Close()
	r, err := db.Query(ctx, "SELECT k, n, s FROM per_k")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	seen := 0
	for r.Next() {
		b := r.RecordBatch()
		ns, ss := b.Column(1).(*array.Int64), b.Column(2).(*array.Int64)
		for i := 0; i < int(b.NumRows()); i++ {
			seen++
			if ns.Value(i) != records*rows || ss.Value(i) != records*(rows*(rows-1)/2) {
				t.Fatalf("key %d: n=%d s=%d", b.Column(0).(*array.Int64).Value(i), ns.Value(i), ss.Value(i))
			}
		}
	}
	if seen != goroutines {
		t.Fatalf("%d keys", seen)
	}
}

// A windowed aggregate over random, out-of-order rows checked against an oracle computed here.
func TestWindowedAggregateAgainstOracle(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, WithWorkers(2))
	mustExec(t, db, createEvents)
	mustExec(t, db, "CREATE STREAM w AS SELECT k, COUNT(*) AS n, SUM(v) AS s, window_start FROM events GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)")
	sub, err := db.Subscribe(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	rng := rand.New(rand.NewSource(42))
	type key struct{ k, w int64 }
	type agg struct{ n, s int64 }
	oracle := map[key]agg{}
	var all []event
	for i := 0; i < 20000; i++ {
		// 10 ms apart, shuffled by up to 1.5 s (inside the 2 s watermark delay): nothing is late
		e := event{k: rng.Int63n(13), v: rng.Int63n(1000), tsMicros: int64(i)*10_000 + rng.Int63n(1_500_000)}
		all = append(all, e)
		kw := key{e.k, e.tsMicros / 10_000_000}
		a := oracle[kw]
		oracle[kw] = agg{a.n + 1, a.s + e.v}
	}
	w, _ := db.Writer("events")
	defer w.Close()
	for i := 0; i < len(all); i += 777 {
		end := min(i+777, len(all))
		rec := record(all[i:end])
		if err := w.Write(ctx, rec); err != nil {
			t.Fatal(err)
		}
		rec.Release()
	}
	if err := w.Finish(); err != nil {
		t.Fatal(err)
	}
	got := map[key]agg{}
	deadline, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for len(got) < len(oracle) {
		rec, err := sub.Next(deadline)
		if err != nil {
			t.Fatalf("after %d windows: %v", len(got), err)
		}
		ks, ns, ss := rec.Column(0).(*array.Int64), rec.Column(1).(*array.Int64), rec.Column(2).(*array.Int64)
		ws := rec.Column(3).(*array.Timestamp)
		for i := 0; i < int(rec.NumRows()); i++ {
			kw := key{ks.Value(i), int64(ws.Value(i)) / 10_000_000}
			if _, dup := got[kw]; dup {
				t.Fatalf("window %v emitted twice", kw)
			}
			got[kw] = agg{ns.Value(i), ss.Value(i)}
		}
		rec.Release()
	}
	for kw, want := range oracle {
		if got[kw] != want {
			t.Fatalf("window %v: got %v want %v", kw, got[kw], want)
		}
	}
	if wm, ok, err := w.CurrentWatermark(); err != nil || !ok || wm.UnixMilli() != 1<<63-1 {
		t.Fatalf("watermark after finish: %v %v %v", wm.UnixMilli(), ok, err)
	}
}

func TestWatermarkByHand(t *testing.T) {
	db := openTest(t)
	mustExec(t, db, "CREATE SOURCE s (k BIGINT, v BIGINT, ts TIMESTAMP)")
	w, _ := db.Writer("s")
	defer w.Close()
	if _, ok, _ := w.CurrentWatermark(); ok {
		t.Fatal("watermark before any")
	}
	at := time.UnixMilli(1_700_000_000_123)
	if err := w.Watermark(at); err != nil {
		t.Fatal(err)
	}
	w.Flush(context.Background())
	if got, ok, err := w.CurrentWatermark(); err != nil || !ok || !got.Equal(at) {
		t.Fatalf("watermark %v %v %v", got, ok, err)
	}
}

// A Write blocked on a full source queue returns when its context is cancelled.
func TestWriteBlockedOnAFullQueueHonoursTheContext(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, WithConfig("queue_capacity", "1"), WithConfig("on_full", "block"), WithBufferSize(1))
	mustExec(t, db, createEvents)
	mustExec(t, db, "CREATE STREAM rows_out AS SELECT k FROM events")
	stalled, err := db.SubscribeBuffered(ctx, "rows_out", 1) // never read: the pipeline stalls
	if err != nil {
		t.Fatal(err)
	}
	w, _ := db.Writer("events")
	defer w.Close()
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	var werr error
	for i := 0; i < 50 && werr == nil; i++ {
		rec := record([]event{{int64(i), 1, int64(i)}})
		werr = w.Write(short, rec)
		rec.Release()
	}
	if !errors.Is(werr, context.DeadlineExceeded) || !errors.Is(werr, ErrCancelled) {
		t.Fatalf("blocked write: %v", werr)
	}
	if time.Since(t0) > 5*time.Second {
		t.Fatalf("took %v", time.Since(t0))
	}
	stalled.Close() // the pipeline moves again, and so does the writer
	rec := record([]event{{99, 1, 99}})
	defer rec.Release()
	if err := w.Write(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}
