package laminar

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/array"
)

func TestExecQuerySchemaCatalogMetrics(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, WithWorkers(2), WithBufferSize(128))
	mustExec(t, db, createEvents)
	mustExec(t, db, "CREATE MATERIALIZED VIEW per_k AS SELECT k, SUM(v) AS s FROM events GROUP BY k")
	n, err := db.Exec(ctx, "INSERT INTO events VALUES (1, 10, TIMESTAMP '2024-01-01 00:00:00'), (2, 5, TIMESTAMP '2024-01-01 00:00:01')")
	if err != nil || n != 2 {
		t.Fatalf("insert: %d %v", n, err)
	}
	rec := record([]event{{1, 7, 2_000_000}, {3, 1, 3_000_000}})
	defer rec.Release()
	if err := db.Insert(ctx, "events", rec); err != nil {
		t.Fatal(err)
	}
	r, err := db.Query(ctx, "SELECT k, s FROM per_k ORDER BY k")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	got := map[int64]int64{}
	for r.Next() {
		b := r.RecordBatch()
		ks, ss := b.Column(0).(*array.Int64), b.Column(1).(*array.Int64)
		for i := 0; i < int(b.NumRows()); i++ {
			got[ks.Value(i)] = ss.Value(i)
		}
	}
	if r.Err() != nil {
		t.Fatal(r.Err())
	}
	if want := map[int64]int64{1: 17, 2: 5, 3: 1}; len(got) != 3 || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Fatalf("per_k = %v", got)
	}
	sc, err := db.Schema("per_k")
	if err != nil || sc.NumFields() != 3 || sc.Field(2).Name != "__weight" {
		t.Fatalf("schema %v %v", sc, err)
	}
	cat, err := db.Catalog()
	if err != nil || len(cat) != 2 || cat[1].Name != "per_k" || cat[1].StreamKind != "changelog" || cat[1].Inputs[0] != "events" {
		t.Fatalf("catalog %+v %v", cat, err)
	}
	// A keyed table is pushed into like a source, and is not a stream.
	if _, err := db.Exec(ctx, "CREATE TABLE prices (sym VARCHAR PRIMARY KEY, px DOUBLE)"); err != nil {
		t.Fatal(err)
	}
	srcs, _ := db.Sources()
	strs, _ := db.Streams()
	if len(srcs) != 2 || srcs[0] != "events" || srcs[1] != "prices" || len(strs) != 1 || strs[0] != "per_k" {
		t.Fatalf("sources %v streams %v", srcs, strs)
	}
	m, err := db.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	if m.NumCols() != 4 || m.NumRows() == 0 {
		t.Fatalf("metrics %v", m)
	}
	text, err := db.MetricsText()
	if err != nil {
		t.Fatal(err)
	}
	// Two rows inserted by INSERT, two by Insert.
	if !strings.Contains(text, "laminardb_source_records_total{source=\"events\"} 4\n") ||
		!strings.Contains(text, "# TYPE laminardb_checkpoint_duration_seconds histogram\n") {
		t.Fatalf("metrics text:\n%s", text)
	}
	if _, err := db.Checkpoint(ctx); !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), "checkpointing is not enabled") {
		t.Fatalf("checkpoint: %v", err)
	}
	if Version() == "" {
		t.Fatal("no version")
	}
}

func TestErrorSentinels(t *testing.T) {
	ctx := context.Background()
	if _, err := Open("/dev/null/cannot-be-a-directory"); !errors.Is(err, ErrIO) {
		t.Fatalf("open dir: %v", err)
	}
	if _, err := Open(":memory:", WithConfig("wrokers", "2")); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "did you mean 'workers'") {
		t.Fatalf("bad option: %v", err)
	}
	db := openTest(t)
	mustExec(t, db, createEvents)
	cases := []struct {
		err  error
		want error
	}{
		{func() error { _, e := db.Schema("event"); return e }(), ErrNotFound},
		{func() error { _, e := db.Exec(ctx, createEvents); return e }(), ErrAlreadyExists},
		{func() error { _, e := db.Exec(ctx, "CREATE STREAM x AS SELECT nope FROM events"); return e }(), ErrPlan},
		{func() error { _, e := db.Query(ctx, "CREATE SOURCE y (a BIGINT)"); return e }(), ErrInvalidArgument},
	}
	for i, c := range cases {
		if !errors.Is(c.err, c.want) {
			t.Errorf("case %d: %v is not %v", i, c.err, c.want)
		}
		if errors.Is(c.err, ErrClosed) {
			t.Errorf("case %d: %v matched ErrClosed", i, c.err)
		}
	}
	_, err := db.Exec(ctx, "CREATE SOURCE z (a BIGINT);\nSELEC 1")
	var le *Error
	if !errors.As(err, &le) || le.Status != StatusSQLSyntax || le.SQLOffset != int64(strings.Index("CREATE SOURCE z (a BIGINT);\nSELEC 1", "SELEC")) {
		t.Fatalf("syntax error: %#v", err)
	}
	if le.Status.String() != "SQL_SYNTAX" {
		t.Fatal(le.Status.String())
	}
	bad := record([]event{{1, 1, 1}})
	defer bad.Release()
	if err := db.Insert(ctx, "missing", bad); !errors.Is(err, ErrNotFound) {
		t.Fatalf("insert into missing: %v", err)
	}
}

func TestSchemaMismatchNamesTheColumn(t *testing.T) {
	db := openTest(t)
	mustExec(t, db, "CREATE SOURCE s (k VARCHAR, v BIGINT, ts TIMESTAMP)")
	rec := record([]event{{1, 1, 1}})
	defer rec.Release()
	err := db.Insert(context.Background(), "s", rec)
	if !errors.Is(err, ErrSchemaMismatch) || !strings.Contains(err.Error(), "'k'") {
		t.Fatalf("mismatch: %v", err)
	}
	mustExec(t, db, "SHOW SOURCES") // the pipeline is alive
}

func TestCloseIsIdempotentAndChildrenSayClosed(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustExec(t, db, createEvents)
	w, err := db.Writer("events")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, "SHOW SOURCES"); !errors.Is(err, ErrClosed) {
		t.Fatalf("exec after close: %v", err)
	}
	rec := record([]event{{1, 1, 1}})
	defer rec.Release()
	if err := w.Write(ctx, rec); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	w.Close()
	w.Close()
	if err := w.Write(ctx, rec); !errors.Is(err, ErrClosed) {
		t.Fatalf("write on closed writer: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	db2 := openTest(t)
	if _, err := db2.Exec(cancelled, "SHOW SOURCES"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestAFailedStreamIsNamedOnItsErrors(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	mustExec(t, db, createEvents)
	mustExec(t, db, "CREATE STREAM x AS SELECT k, 10 / v AS y FROM events")
	mustExec(t, db, "CREATE MATERIALIZED VIEW mv AS SELECT k, 10 / v AS y FROM events")
	sub, err := db.Subscribe(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	zero := record([]event{{1, 0, 1000}}) // division by zero fails both
	defer zero.Release()
	if err := db.Insert(ctx, "events", zero); err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		rec, err := sub.Next(tctx)
		if rec != nil {
			rec.Release()
			continue
		}
		var le *Error
		if !errors.As(err, &le) || le.Stream != "x" || le.Status != StatusInvalidData || !errors.Is(err, ErrStreamFailed) {
			t.Fatalf("subscription: %#v", err)
		}
		break
	}
	if _, err := db.Subscribe(ctx, "x"); !errors.Is(err, ErrStreamFailed) {
		t.Fatalf("subscribe to a failed stream: %v", err)
	}
	var le *Error
	if _, err := db.Query(ctx, "SELECT * FROM mv"); !errors.As(err, &le) || le.Stream != "mv" || !errors.Is(err, ErrSchemaMismatch) {
		t.Fatalf("query of a failed view: %#v", err)
	}
	if _, err := db.Query(ctx, "SELECT * FROM nope"); err == nil || errors.Is(err, ErrStreamFailed) {
		t.Fatalf("a plain error matched ErrStreamFailed: %v", err)
	}
	if errors.Is(ErrPlan, ErrStreamFailed) || errors.Is(ErrStreamFailed, ErrPlan) {
		t.Fatal("sentinels must not match each other")
	}
}
