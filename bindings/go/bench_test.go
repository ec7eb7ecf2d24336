package laminar

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"
)

// BenchmarkW1 pushes W1 (DESIGN §8: key (i*2654435761) mod 1000, value (i*7919) mod 1000, time
// base + i ms, 1-minute TUMBLE COUNT/SUM, batches of 8,192) through the Go package until the last
// window arrives, and the same rows built and pushed by C through the C ABI in the same run;
// reports both rates (go-rows/s, c-rows/s) and their ratio. LAMINAR_W1_EVENTS sets the size
// (default 10,000,000).
func BenchmarkW1(b *testing.B) {
	events := 10_000_000
	if s := os.Getenv("LAMINAR_W1_EVENTS"); s != "" {
		events, _ = strconv.Atoi(s)
	}
	const batch = 8192
	var recs []interface{ Release() }
	var batches []func() error
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		db, err := Open(":memory:")
		if err != nil {
			b.Fatal(err)
		}
		mustExec(b, db, "CREATE SOURCE events (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)")
		mustExec(b, db, "CREATE STREAM w1 AS SELECT k, COUNT(*) AS n, SUM(v) AS s, window_start FROM events GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)")
		sub, err := db.SubscribeBuffered(ctx, "w1", 1<<16)
		if err != nil {
			b.Fatal(err)
		}
		w, _ := db.Writer("events")
		batches = batches[:0]
		for start := 0; start < events; start += batch {
			n := min(batch, events-start)
			ev := make([]event, n)
			for j := range ev {
				x := int64(start + j)
				ev[j] = event{k: (x * 2654435761) % 1000, v: (x * 7919) % 1000, tsMicros: 1_700_000_000_000_000 + x*1000}
			}
			rec := record(ev)
			recs = append(recs, rec)
			batches = append(batches, func() error { return w.Write(ctx, rec) })
		}
		b.StartTimer()
		t0 := time.Now()
		for _, push := range batches {
			if err := push(); err != nil {
				b.Fatal(err)
			}
		}
		w.Finish()
		var counted int64
		for counted < int64(events) {
			rec, err := sub.Next(ctx)
			if err != nil {
				b.Fatal(err)
			}
			col := rec.Column(1)
			for k := 0; k < col.Len(); k++ {
				counted += col.(interface{ Value(int) int64 }).Value(k)
			}
			rec.Release()
		}
		elapsed := time.Since(t0)
		b.StopTimer()
		sub.Close()
		w.Close()
		db.Close()

		cdb, err := Open(":memory:")
		if err != nil {
			b.Fatal(err)
		}
		mustExec(b, cdb, "CREATE SOURCE events (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)")
		mustExec(b, cdb, "CREATE STREAM w1 AS SELECT k, COUNT(*) AS n, SUM(v) AS s, window_start FROM events GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)")
		cElapsed, err := benchPushW1FromC(cdb, "events", "w1", events)
		cdb.Close()
		if err != nil {
			b.Fatal(err)
		}
		goRate, cRate := float64(events)/elapsed.Seconds(), float64(events)/cElapsed.Seconds()
		b.ReportMetric(goRate, "go-rows/s")
		b.ReportMetric(cRate, "c-rows/s")
		b.ReportMetric(goRate/cRate, "go/c")
		b.Logf("W1 %d events: Go %.0f rows/s, C %.0f rows/s, ratio %.3f", events, goRate, cRate, goRate/cRate)
		for _, r := range recs {
			r.Release()
		}
		recs = recs[:0]
	}
}
