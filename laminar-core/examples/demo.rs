//! The main demo: a source with a watermark, a one-minute tumbling VWAP per symbol, a
//! subscription that prints each window as it closes, and an ad-hoc query over a materialized view.

use std::sync::Arc;

use laminar_core::Database;
use laminar_core::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::arrow::util::pretty::pretty_format_batches;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = Database::open_in_memory()?;
    db.execute(
        "CREATE SOURCE trades (sym VARCHAR NOT NULL, price DOUBLE, qty DOUBLE, ts TIMESTAMP NOT NULL,
                               WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
         CREATE STREAM vwap AS
           SELECT sym, SUM(price * qty) / SUM(qty) AS vwap, COUNT(*) AS trades, window_start, window_end
           FROM trades GROUP BY sym, TUMBLE(ts, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE;
         CREATE MATERIALIZED VIEW totals AS SELECT sym, SUM(qty) AS volume FROM trades GROUP BY sym",
    )?;
    let sub = db.subscribe("vwap")?;
    let mut w = db.writer("trades")?;
    let syms = ["AAPL", "MSFT", "NVDA"];
    // Three minutes of trades, one every 2 seconds per symbol.
    for i in 0..90i64 {
        let n = syms.len();
        let batch = RecordBatch::try_from_iter(vec![
            ("sym", Arc::new(StringArray::from_iter_values(syms)) as ArrayRef),
            (
                "price",
                Arc::new(Float64Array::from_iter_values((0..n).map(|j| 100.0 + j as f64 * 50.0 + (i % 7) as f64))),
            ),
            ("qty", Arc::new(Float64Array::from_iter_values((0..n).map(|j| 1.0 + ((i + j as i64) % 5) as f64)))),
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from_iter_values(
                    (0..n).map(|_| (1_700_000_000_000 + i * 2000) * 1000),
                )),
            ),
        ])?;
        w.write(batch)?;
    }
    w.finish()?; // end of input: every window closes
    w.flush()?;
    println!("Windows as they closed:");
    let mut batches = vec![];
    while let laminar_core::Next::Batch(b) = sub.try_next()? {
        batches.push(b);
    }
    println!("{}", pretty_format_batches(&batches)?);
    println!("Ad-hoc query over the materialized view:");
    println!("{}", pretty_format_batches(&db.query("SELECT * FROM totals ORDER BY sym")?)?);
    db.close();
    Ok(())
}
