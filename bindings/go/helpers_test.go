package laminar

import (
	"context"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

var tsType = &arrow.TimestampType{Unit: arrow.Microsecond}

// eventSchema is (k BIGINT, v BIGINT, ts TIMESTAMP).
var eventSchema = arrow.NewSchema([]arrow.Field{
	{Name: "k", Type: arrow.PrimitiveTypes.Int64},
	{Name: "v", Type: arrow.PrimitiveTypes.Int64},
	{Name: "ts", Type: tsType},
}, nil)

type event struct{ k, v, tsMicros int64 }

func record(events []event) arrow.RecordBatch {
	mem := memory.DefaultAllocator
	kb := array.NewInt64Builder(mem)
	vb := array.NewInt64Builder(mem)
	tb := array.NewTimestampBuilder(mem, tsType)
	defer kb.Release()
	defer vb.Release()
	defer tb.Release()
	for _, e := range events {
		kb.Append(e.k)
		vb.Append(e.v)
		tb.Append(arrow.Timestamp(e.tsMicros))
	}
	cols := []arrow.Array{kb.NewArray(), vb.NewArray(), tb.NewArray()}
	defer func() {
		for _, c := range cols {
			c.Release()
		}
	}()
	return array.NewRecordBatch(eventSchema, cols, int64(len(events)))
}

func openTest(t testing.TB, opts ...Option) *DB {
	t.Helper()
	db, err := Open(":memory:", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustExec(t testing.TB, db *DB, sql string) {
	t.Helper()
	if _, err := db.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

const createEvents = "CREATE SOURCE events (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)"
