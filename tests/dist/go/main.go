// A program of a user's own module that requires the Go package of LaminarDB, built by
// scripts/test-dist.sh against the module scripts/dist.sh made (go.mod replaces the module path
// with that directory), with no cargo on PATH and no CGO_LDFLAGS. Rows go in by SQL, the end of
// input by a writer; it prints the windows a subscription delivers, an ad-hoc query's count and
// the library's version.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/apache/arrow-go/v18/arrow/array"

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
	exec(ctx, db, `CREATE TABLE names (sym VARCHAR PRIMARY KEY, name VARCHAR)`)
	exec(ctx, db, `INSERT INTO names VALUES ('A', 'Alpha'), ('B', 'Beta')`)
	sub, err := db.Subscribe(ctx, "volume")
	check(err)
	defer sub.Close()
	exec(ctx, db, `INSERT INTO trades VALUES ('A', 5, TIMESTAMP '2024-01-01 00:00:01'),
	               ('A', 7, TIMESTAMP '2024-01-01 00:00:02'), ('B', 2, TIMESTAMP '2024-01-01 00:00:03')`)
	w, err := db.Writer("trades")
	check(err)
	defer w.Close()
	check(w.Finish()) // end of input: the window closes

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

	rr, err := db.Query(ctx, "SELECT COUNT(*) AS n FROM names")
	check(err)
	defer rr.Release()
	for rr.Next() {
		fmt.Printf("names %d\n", rr.RecordBatch().Column(0).(*array.Int64).Value(0))
	}
	check(rr.Err())
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
