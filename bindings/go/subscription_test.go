package laminar

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

func TestNextHonoursTheContextAndTheSubscriptionSurvives(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustExec(t, db, createEvents)
	mustExec(t, db, "CREATE STREAM rows_out AS SELECT k, v FROM events")
	sub, err := db.Subscribe(ctx, "rows_out")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	sc, err := sub.Schema(ctx)
	if err != nil || sc.NumFields() != 2 {
		t.Fatalf("schema %v %v", sc, err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	t0 := time.Now()
	_, err = sub.Next(short) // blocked: nothing was pushed
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > 2*time.Second {
		t.Fatalf("blocked Next: %v after %v", err, time.Since(t0))
	}
	cctx, cancel2 := context.WithCancel(ctx)
	go func() { time.Sleep(30 * time.Millisecond); cancel2() }()
	if _, err := sub.Next(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Next: %v", err)
	}
	rec := record([]event{{1, 2, 3}, {4, 5, 6}})
	defer rec.Release()
	if err := db.Insert(ctx, "events", rec); err != nil {
		t.Fatal(err)
	}
	got, err := sub.Next(ctx)
	if err != nil || got.NumRows() != 2 {
		t.Fatalf("after cancel: %v %v", got, err)
	}
	got.Release()
	select {
	case <-sub.C():
		t.Fatal("unexpected message")
	default:
	}
}

func TestCloseWithUnreadRecordsDoesNotBlock(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustExec(t, db, createEvents)
	mustExec(t, db, "CREATE STREAM rows_out AS SELECT k, v FROM events")
	sub, err := db.SubscribeBuffered(ctx, "rows_out", 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		rec := record([]event{{int64(i), 1, int64(i)}})
		if err := db.Insert(ctx, "events", rec); err != nil {
			t.Fatal(err)
		}
		rec.Release()
	}
	done := make(chan struct{})
	go func() { sub.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked")
	}
	if _, err := sub.Next(ctx); err != io.EOF {
		t.Fatalf("after close: %v", err)
	}
	sub.Close()
}

func TestSubscriptionEndsWithClosedWhenTheDatabaseCloses(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustExec(t, db, createEvents)
	mustExec(t, db, "CREATE STREAM rows_out AS SELECT k FROM events")
	sub, err := db.Subscribe(ctx, "rows_out")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	db.Close()
	timeout, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := sub.Next(timeout); !errors.Is(err, ErrClosed) {
		t.Fatalf("first: %v", err)
	}
	if _, err := sub.Next(timeout); err != io.EOF {
		t.Fatalf("then: %v", err)
	}
	if _, err := db.Subscribe(ctx, "rows_out"); !errors.Is(err, ErrClosed) {
		t.Fatalf("subscribe after close: %v", err)
	}
}

func TestManySubscribeCloseCycles(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustExec(t, db, createEvents)
	mustExec(t, db, "CREATE STREAM rows_out AS SELECT k FROM events")
	for i := 0; i < 300; i++ {
		sub, err := db.Subscribe(ctx, "rows_out")
		if err != nil {
			t.Fatal(err)
		}
		sub.Close()
	}
	if _, err := db.Subscribe(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing stream: %v", err)
	}
}

// A durable database: records carry their epoch, and a subscriber resumes after the last epoch
// it committed, seeing each later result once.
func TestDurableSubscriberResumesAfterItsEpoch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ddl := []string{
		"CREATE SOURCE IF NOT EXISTS t (sym VARCHAR, qty BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)",
		"CREATE STREAM IF NOT EXISTS s AS SELECT sym, SUM(qty) AS q, window_start FROM t GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)",
	}
	db, err := Open(dir, WithConfig("checkpoint_interval", "0"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ddl {
		mustExec(t, db, d)
	}
	sub, err := db.Subscribe(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, "INSERT INTO t VALUES ('A', 1, TIMESTAMP '1970-01-01 00:00:00'), ('B', 2, TIMESTAMP '1970-01-01 00:00:11')")
	m := <-sub.C()
	if m.Err != nil || m.Epoch != 1 {
		t.Fatalf("first result: epoch %d, %v", m.Epoch, m.Err)
	}
	m.Record.Release()
	if e, err := db.Checkpoint(ctx); err != nil || e != 1 {
		t.Fatalf("checkpoint: %d %v", e, err)
	}
	mustExec(t, db, "INSERT INTO t VALUES ('A', 5, TIMESTAMP '1970-01-01 00:00:21')")
	m = <-sub.C()
	if m.Err != nil || m.Epoch != 2 {
		t.Fatalf("second result: epoch %d, %v", m.Epoch, m.Err)
	}
	m.Record.Release()
	sub.Close()
	if err := db.Close(); err != nil { // a last checkpoint keeps epoch 2's results
		t.Fatal(err)
	}
	db, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, d := range ddl {
		mustExec(t, db, d)
	}
	sub, err = db.SubscribeResume(ctx, "s", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	m = <-sub.C()
	if m.Err != nil || m.Epoch != 2 || m.Record.NumRows() != 1 {
		t.Fatalf("resumed: epoch %d, %v", m.Epoch, m.Err)
	}
	if got := m.Record.Column(0).ValueStr(0); got != "B" {
		t.Fatalf("resumed the wrong result: %s", got)
	}
	m.Record.Release()
	if _, err := db.SubscribeResume(ctx, "s", 99); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("resume from the future: %v", err)
	}
}
