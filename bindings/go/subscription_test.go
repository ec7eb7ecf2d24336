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
