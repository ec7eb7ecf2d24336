//! Nexmark q0, q1 and q2 (NEXMARK.md §3; the stateless ones, which need no join) on 100,000
//! generated events: the streaming output equals DataFusion running the same SQL as a batch query
//! over the same rows.

mod common;

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::nexmark::{bid_schema, NexmarkConfig, NexmarkGenerator};
use laminar_core::{Database, Next};

const BID_SOURCE: &str = "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
    url VARCHAR, date_time TIMESTAMP, extra VARCHAR, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)";

const QUERIES: [(&str, &str); 3] = [
    ("q0", "SELECT auction, bidder, price, date_time, extra FROM bid"),
    ("q1", "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid"),
    ("q2", "SELECT auction, price FROM bid WHERE auction % 123 = 0"),
];

/// DataFusion over the generator's batches as they are (millisecond times: rendered as strings
/// they equal the engine's microsecond ones).
fn oracle(sql: &str, bids: &[RecordBatch]) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    ctx.register_table("bid", Arc::new(MemTable::try_new(bids[0].schema(), vec![bids.to_vec()]).unwrap())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async { ctx.sql(sql).await.unwrap().collect().await.unwrap() })
}

#[test]
fn q0_q1_q2_match_a_batch_oracle_on_generated_events() {
    let generator = NexmarkGenerator::new(NexmarkConfig { seed: 42, ..Default::default() });
    let mut bids = vec![];
    for start in (0..100_000u64).step_by(10_000) {
        bids.push(generator.generate(start, 10_000).unwrap().bid);
    }
    assert_eq!(bids[0].schema(), bid_schema());
    let db = Database::open_in_memory().unwrap();
    db.execute(BID_SOURCE).unwrap();
    let mut subs = vec![];
    for (name, sql) in QUERIES {
        db.execute(&format!("CREATE STREAM {name} AS {sql}")).unwrap();
        subs.push(db.subscribe(name).unwrap());
    }
    let mut w = db.writer("bid").unwrap();
    for b in &bids {
        w.write(b.clone()).unwrap();
    }
    w.finish().unwrap();
    w.flush().unwrap();
    for ((name, sql), sub) in QUERIES.iter().zip(&subs) {
        let mut got = vec![];
        while let Next::Batch(b) = sub.try_next().unwrap() {
            got.push(b);
        }
        let mut got_rows = common::rows(&got);
        let mut want_rows = common::rows(&oracle(sql, &bids));
        got_rows.sort();
        want_rows.sort();
        assert!(!want_rows.is_empty(), "{name} selects rows");
        assert_eq!(got_rows.len(), want_rows.len(), "{name}: row count");
        assert_eq!(got_rows, want_rows, "{name}: rows");
    }
}
