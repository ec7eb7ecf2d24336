// A program of a user's own module that requires the Go package of LaminarDB, built by
// scripts/test-dist.sh against the module scripts/dist.sh made (go.mod replaces the module path
// with that directory), with no cargo on PATH and no CGO_LDFLAGS. It prints the windows.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	laminar "example.invalid/laminardb/bindings/go"
)

func main() {
	ctx := context.Background()
	db, err := laminar.Open(":memory:")
	check(err)
	defer db.Close()
	exec(ctx, db, `CREATE SOURCE trades (sym VARCHAR, qty BIGINT, ts TIMESTAMP,
	               WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)`)
	exec(ctx, db, `CREATE STREAM volume AS SELECT sym, SUM(qty) AS total
	               FROM trades GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)`)
	sub, err := db.Subscribe(ctx, "volume")
	check(err)
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
	w, err := db.Writer("trades")
	check(err)
	defer w.Close()
	check(w.Write(ctx, rec))
	check(w.Finish())

	totals := map[string]int64{}
	for len(totals) < 2 {
		out, err := sub.Next(ctx)
		check(err)
		for i := 0; i < int(out.NumRows()); i++ {
			totals[strings.Clone(out.Column(0).(*array.String).Value(i))] = out.Column(1).(*array.Int64).Value(i)
		}
		out.Release()
	}
	keys := make([]string, 0, len(totals))
	for k := range totals {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("%s %d\n", k, totals[k])
	}
	fmt.Println("laminar", laminar.Version())
}

func exec(ctx context.Context, db *laminar.DB, sql string) {
	_, err := db.Exec(ctx, sql)
	check(err)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
