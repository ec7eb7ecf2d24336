package laminar_test

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	laminar "example.invalid/laminardb/bindings/go"
)

// A source, a 10-second tumbling window, three rows pushed as an Arrow record, and the windows
// read from a subscription once the input ends.
func Example() {
	ctx := context.Background()
	db, err := laminar.Open(":memory:")
	if err != nil {
		panic(err)
	}
	defer db.Close()
	db.Exec(ctx, `CREATE SOURCE trades (sym VARCHAR, qty BIGINT, ts TIMESTAMP,
	              WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)`)
	db.Exec(ctx, `CREATE STREAM volume AS SELECT sym, SUM(qty) AS total
	              FROM trades GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)`)
	sub, _ := db.Subscribe(ctx, "volume")
	defer sub.Close()

	schema := arrow.NewSchema([]arrow.Field{
		{Name: "sym", Type: arrow.BinaryTypes.String},
		{Name: "qty", Type: arrow.PrimitiveTypes.Int64},
		{Name: "ts", Type: &arrow.TimestampType{Unit: arrow.Microsecond}},
	}, nil)
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	b.Field(0).(*array.StringBuilder).AppendValues([]string{"A", "A", "B"}, nil)
	b.Field(1).(*array.Int64Builder).AppendValues([]int64{5, 7, 2}, nil)
	b.Field(2).(*array.TimestampBuilder).AppendValues([]arrow.Timestamp{1_000_000, 2_000_000, 3_000_000}, nil)
	rec := b.NewRecordBatch()
	defer rec.Release()

	w, _ := db.Writer("trades")
	defer w.Close()
	w.Write(ctx, rec)
	w.Finish() // end of input: the window closes

	totals := map[string]int64{}
	for len(totals) < 2 {
		out, err := sub.Next(ctx)
		if err != nil {
			panic(err)
		}
		for i := 0; i < int(out.NumRows()); i++ {
			// Value aliases the record's memory, which Release frees: clone what outlives it.
			sym := strings.Clone(out.Column(0).(*array.String).Value(i))
			totals[sym] = out.Column(1).(*array.Int64).Value(i)
		}
		out.Release()
	}
	fmt.Println("A:", totals["A"], "B:", totals["B"])
	// Output: A: 12 B: 2
}

// Errors are *laminar.Error values (errors.As gives the status and message) and match the
// sentinels with errors.Is.
func ExampleError() {
	db, _ := laminar.Open(":memory:")
	defer db.Close()
	_, err := db.Schema("nope")
	var le *laminar.Error
	if errors.As(err, &le) {
		fmt.Println(le.Status, errors.Is(err, laminar.ErrNotFound))
	}
	// Output: NOT_FOUND true
}
