package laminar

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// affine(a, b) = a*2 + b, null when either is null.
func affine(args []arrow.Array) (arrow.Array, error) {
	a, b := args[0].(*array.Int64), args[1].(*array.Int64)
	bld := array.NewInt64Builder(memory.DefaultAllocator)
	defer bld.Release()
	for i := 0; i < a.Len(); i++ {
		if a.IsNull(i) || b.IsNull(i) {
			bld.AppendNull()
		} else {
			bld.Append(a.Value(i)*2 + b.Value(i))
		}
	}
	return bld.NewArray(), nil
}

func affineFunction(name string, fn func([]arrow.Array) (arrow.Array, error)) ScalarFunction {
	i64 := arrow.PrimitiveTypes.Int64
	return ScalarFunction{Name: name, Args: []arrow.DataType{i64, i64}, Returns: i64, Fn: fn}
}

// queryInts reads every row of a query whose columns are all int64.
func queryInts(t *testing.T, db *DB, sql string) ([][]int64, error) {
	t.Helper()
	r, err := db.Query(context.Background(), sql)
	if err != nil {
		return nil, err
	}
	defer r.Release()
	var rows [][]int64
	for r.Next() {
		b := r.RecordBatch()
		for i := 0; i < int(b.NumRows()); i++ {
			row := make([]int64, b.NumCols())
			for c := range row {
				row[c] = b.Column(c).(*array.Int64).Value(i)
			}
			rows = append(rows, row)
		}
	}
	return rows, r.Err()
}

func TestScalarFunctionInAWindowAndAdHocEqualsGo(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, WithWorkers(2), WithFunction(affineFunction("affine", affine)))
	mustExec(t, db, createEvents)
	mustExec(t, db, "CREATE MATERIALIZED VIEW w AS SELECT k, CAST(window_start AS BIGINT) AS ws, SUM(affine(k, v)) AS s "+
		"FROM events GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)")
	var evs []event
	want := map[[2]int64]int64{}
	for i := int64(0); i < 5000; i++ {
		e := event{k: i * 7919 % 7, v: i*37%101 - 50, tsMicros: i * 1000}
		evs = append(evs, e)
		want[[2]int64{e.k, e.tsMicros / 1_000_000 * 1_000_000}] += e.k*2 + e.v
	}
	rec := record(evs)
	defer rec.Release()
	if err := db.Insert(ctx, "events", rec); err != nil {
		t.Fatal(err)
	}
	far := record([]event{{0, 0, 3600 * 1_000_000}}) // closes every window of the data
	defer far.Release()
	if err := db.Insert(ctx, "events", far); err != nil {
		t.Fatal(err)
	}
	rows, err := queryInts(t, db, "SELECT k, ws, s FROM w")
	if err != nil {
		t.Fatal(err)
	}
	got := map[[2]int64]int64{}
	for _, r := range rows {
		got[[2]int64{r[0], r[1]}] = r[2]
	}
	if len(got) != len(want) {
		t.Fatalf("%d windows, want %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("window %v: %d, want %d", k, got[k], v)
		}
	}
	// Ad hoc over the source's retained rows.
	rows, err = queryInts(t, db, "SELECT k, v, affine(k, v) FROM events")
	if err != nil || len(rows) != len(evs)+1 {
		t.Fatalf("%d rows, %v", len(rows), err)
	}
	for _, r := range rows {
		if r[2] != r[0]*2+r[1] {
			t.Fatalf("row %v", r)
		}
	}
	// Registered on the open database too; SHOW FUNCTIONS lists both.
	if err := db.RegisterFunction(affineFunction("affine2", affine)); err != nil {
		t.Fatal(err)
	}
	if rows, err := queryInts(t, db, "SELECT affine2(20, 1)"); err != nil || rows[0][0] != 41 {
		t.Fatalf("%v %v", rows, err)
	}
	r, err := db.Query(ctx, "SHOW FUNCTIONS")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for r.Next() {
		n += int(r.RecordBatch().NumRows())
	}
	r.Release()
	if n != 2 {
		t.Fatalf("SHOW FUNCTIONS: %d rows", n)
	}
}

func TestFailingFunctionsFailTheirStatementAndTheDatabaseGoesOn(t *testing.T) {
	db := openTest(t)
	cases := []struct {
		name, says string
		fn         func([]arrow.Array) (arrow.Array, error)
	}{
		{"failing", "the model is not loaded", func([]arrow.Array) (arrow.Array, error) {
			return nil, errors.New("the model is not loaded")
		}},
		{"panics", "panic: runtime error: index out of range", func(args []arrow.Array) (arrow.Array, error) {
			var xs []int
			return nil, fmt.Errorf("%d", xs[len(args)])
		}},
		{"short", "returned 0 values for 1 rows", func([]arrow.Array) (arrow.Array, error) {
			b := array.NewInt64Builder(memory.DefaultAllocator)
			defer b.Release()
			return b.NewArray(), nil
		}},
		{"wrong_type", "returned Utf8 where Int64 was declared", func(args []arrow.Array) (arrow.Array, error) {
			b := array.NewStringBuilder(memory.DefaultAllocator)
			defer b.Release()
			b.Append("x")
			return b.NewArray(), nil
		}},
		{"nothing", "nil array", func([]arrow.Array) (arrow.Array, error) { return nil, nil }},
	}
	for _, c := range cases {
		if err := db.RegisterFunction(affineFunction(c.name, c.fn)); err != nil {
			t.Fatal(err)
		}
		_, err := queryInts(t, db, fmt.Sprintf("SELECT %s(1, 2)", c.name))
		if !errors.Is(err, ErrInvalidData) || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), c.name) {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	// A continuous query over a failing function fails that stream only.
	if err := db.RegisterFunction(affineFunction("affine", affine)); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, "CREATE SOURCE s (k BIGINT, v BIGINT);"+
		"CREATE MATERIALIZED VIEW bad AS SELECT k, failing(k, v) AS y FROM s;"+
		"CREATE MATERIALIZED VIEW good AS SELECT k, v, affine(k, v) AS y FROM s;"+
		"INSERT INTO s VALUES (1, 2), (3, 4)")
	if _, err := queryInts(t, db, "SELECT * FROM bad"); !errors.Is(err, ErrStreamFailed) || !strings.Contains(err.Error(), "the model is not loaded") {
		t.Fatalf("bad: %v", err)
	}
	rows, err := queryInts(t, db, "SELECT k, v, y FROM good ORDER BY k")
	if err != nil || len(rows) != 2 || rows[0][2] != 4 || rows[1][2] != 10 {
		t.Fatalf("good: %v %v", rows, err)
	}
	// Refused registrations.
	if err := db.RegisterFunction(affineFunction("abs", affine)); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("abs: %v", err)
	}
	if err := db.RegisterFunction(affineFunction("Affine", affine)); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "lowercase") {
		t.Fatalf("Affine: %v", err)
	}
	if err := db.RegisterFunction(affineFunction("no_fn", nil)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("no_fn: %v", err)
	}
}

func TestADurableDatabaseReopensWithTheFunctionsGivenToOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	f := WithFunction(affineFunction("affine", affine))
	db, err := Open(dir, f)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, "CREATE SOURCE s (k BIGINT, v BIGINT); CREATE MATERIALIZED VIEW m AS SELECT k, affine(k, v) AS y FROM s")
	if _, err := db.Exec(ctx, "INSERT INTO s VALUES (1, 2)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(dir); !errors.Is(err, ErrPlan) || !strings.Contains(err.Error(), "affine") {
		t.Fatalf("reopen without the function: %v", err)
	}
	db, err = Open(dir, f)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := queryInts(t, db, "SELECT k, y FROM m")
	if err != nil || len(rows) != 1 || rows[0][1] != 4 {
		t.Fatalf("%v %v", rows, err)
	}
}
