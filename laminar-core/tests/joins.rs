//! Differential tests for streaming joins (DESIGN §8): random keys with skew and NULLs, random
//! out-of-order arrival inside the watermark delay, random batch sizes and random interleaving of
//! the inputs. The final content of a materialized view over each join must equal DataFusion's
//! batch answer to the same SQL over every row pushed. Join kinds: interval (asymmetric bounds),
//! regular (with and without a residual condition), window join, aggregates over a join and
//! three-way chains; × INNER/LEFT/RIGHT/FULL.
//! `LAMINAR_JOIN_CASES` sets the number of cases (default 1000); `LAMINAR_JOIN_SEED` replays one.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use laminar_core::arrow::array::{ArrayRef, Int64Array, TimestampMicrosecondArray};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Config, Database};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
enum Shape {
    Interval { lo: i64, hi: i64 },
    Regular { residual: bool },
    Window { size: i64 },
    AggOverJoin { lo: i64, hi: i64 },
    Three { lo: i64, hi: i64, lo2: i64, hi2: i64, regular2: bool },
}

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    shape: Shape,
    jt: &'static str,
    jt2: &'static str,
    filter: &'static str,
    workers: usize,
}

const JTS: [&str; 4] = ["INNER", "LEFT", "RIGHT", "FULL"];
const FILTERS: [&str; 3] = ["", " WHERE l.v > 20", " WHERE r.v IS NULL OR r.v < 80"];

fn gen_case(seed: u64) -> Case {
    let mut r = SmallRng::seed_from_u64(seed);
    let ms = |r: &mut SmallRng| [0, 500, 1000, 2000, 3000][r.random_range(0..5)];
    let shape = match r.random_range(0..5) {
        0 => Shape::Interval { lo: ms(&mut r), hi: ms(&mut r) },
        1 => Shape::Regular { residual: r.random_bool(0.5) },
        2 => Shape::Window { size: [1000, 2000, 5000][r.random_range(0..3)] },
        3 => Shape::AggOverJoin { lo: ms(&mut r), hi: ms(&mut r) },
        _ => Shape::Three { lo: ms(&mut r), hi: ms(&mut r), lo2: ms(&mut r), hi2: ms(&mut r), regular2: r.random_bool(0.3) },
    };
    let jt = match shape {
        Shape::AggOverJoin { .. } => "INNER",
        _ => JTS[r.random_range(0..4)],
    };
    let jt2 = JTS[r.random_range(0..4)];
    let filter = match shape {
        Shape::Window { .. } | Shape::AggOverJoin { .. } => "",
        _ => FILTERS[r.random_range(0..3)],
    };
    Case { seed, shape, jt, jt2, filter, workers: r.random_range(1..3) }
}

fn iv(ms: i64) -> String {
    format!("INTERVAL '{ms}' MILLISECOND")
}

/// (engine SQL, oracle SQL): the same text except for window TVFs, which the oracle spells out.
fn sql_of(c: &Case) -> (String, String) {
    let (jt, f) = (c.jt, c.filter);
    match &c.shape {
        Shape::Interval { lo, hi } => {
            let q = format!(
                "SELECT l.id AS lid, l.k, l.v, r.id AS rid, r.v AS rv, r.ts AS rts FROM l {jt} JOIN r ON l.k = r.k AND r.ts BETWEEN l.ts - {} AND l.ts + {}{f}",
                iv(*lo),
                iv(*hi)
            );
            (q.clone(), q)
        }
        Shape::Regular { residual } => {
            let q = format!(
                "SELECT l.id AS lid, l.k, r.id AS rid, r.v AS rv FROM l {jt} JOIN r ON l.k = r.k{}{f}",
                if *residual { " AND l.v < r.v" } else { "" }
            );
            (q.clone(), q)
        }
        Shape::Window { size } => {
            let side = |src: &str, tvf: bool| {
                let from = if tvf {
                    format!("TUMBLE({src}, ts, {})", iv(*size))
                } else {
                    format!(
                        "(SELECT *, date_bin({0}, ts, TIMESTAMP '1970-01-01 00:00:00') AS window_start, date_bin({0}, ts, TIMESTAMP '1970-01-01 00:00:00') + {0} AS window_end FROM {src})",
                        iv(*size)
                    )
                };
                format!("SELECT k, window_start AS ws, window_end AS we, COUNT(*) AS n, MAX(v) AS mx FROM {from} GROUP BY k, window_start, window_end")
            };
            let q = |tvf: bool| {
                format!(
                    "SELECT a.k, a.ws, a.n, a.mx, b.k AS bk, b.ws AS bws, b.n AS bn FROM ({}) a {jt} JOIN ({}) b ON a.k = b.k AND a.ws = b.ws AND a.we = b.we",
                    side("l", tvf),
                    side("r", tvf)
                )
            };
            (q(true), q(false))
        }
        Shape::AggOverJoin { lo, hi } => {
            let q = format!(
                "SELECT l.k, COUNT(*) AS c, SUM(r.v) AS s, MIN(r.v) AS mn, MAX(l.v) AS mx FROM l JOIN r ON l.k = r.k AND r.ts BETWEEN l.ts - {} AND l.ts + {} GROUP BY l.k",
                iv(*lo),
                iv(*hi)
            );
            (q.clone(), q)
        }
        Shape::Three { lo, hi, lo2, hi2, regular2 } => {
            let second = if *regular2 { String::new() } else { format!(" AND m.ts BETWEEN r.ts - {} AND r.ts + {}", iv(*lo2), iv(*hi2)) };
            let q = format!(
                "SELECT l.id AS lid, r.id AS rid, m.id AS mid, m.v AS mv FROM l {jt} JOIN r ON l.k = r.k AND r.ts BETWEEN l.ts - {} AND l.ts + {} {} JOIN m ON r.k = m.k{second}{f}",
                iv(*lo),
                iv(*hi),
                c.jt2
            );
            (q.clone(), q)
        }
    }
}

type Row = (i64, Option<i64>, Option<i64>, i64); // id, k, v, ts (ms)

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from_iter_values(rows.iter().map(|x| x.0))) as ArrayRef),
        ("k", Arc::new(Int64Array::from_iter(rows.iter().map(|x| x.1))) as ArrayRef),
        ("v", Arc::new(Int64Array::from_iter(rows.iter().map(|x| x.2))) as ArrayRef),
        ("ts", Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|x| x.3 * 1000))) as ArrayRef),
    ])
    .unwrap()
}

fn run_case(c: &Case) -> Result<(), String> {
    let mut r = SmallRng::seed_from_u64(c.seed ^ 0x5bd1_e995);
    let mut cfg = Config::default();
    cfg.set("workers", &c.workers.to_string()).unwrap();
    let db = Database::open(":memory:", cfg).map_err(|e| e.to_string())?;
    let names = ["l", "r", "m"];
    for n in names {
        db.execute(&format!(
            "CREATE SOURCE {n} (id BIGINT NOT NULL, k BIGINT, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)"
        ))
        .map_err(|e| e.to_string())?;
    }
    let (sql, oracle_sql) = sql_of(c);
    db.execute(&format!("CREATE MATERIALIZED VIEW out AS {sql}")).map_err(|e| format!("{sql}: {e}"))?;

    // Per source: time moves forward; each row's ts is at most 4 s behind the source's newest,
    // so no row is late (the watermark delay is 5 s).
    let keys = r.random_range(1..8);
    let mut data: [Vec<Row>; 3] = [vec![], vec![], vec![]];
    let mut id = 0;
    for (s, rows) in data.iter_mut().enumerate() {
        let n = r.random_range(0..120);
        let mut t: i64 = 1_000_000 + r.random_range(0..3000);
        for _ in 0..n {
            t += r.random_range(0..400);
            let ts = t - r.random_range(0..4000);
            let k = if r.random_range(0..20) == 0 { None } else { Some(r.random_range(0..keys).min(r.random_range(0..keys)) as i64) };
            let v = if r.random_range(0..10) == 0 { None } else { Some(r.random_range(0..100)) };
            rows.push((id * 3 + s as i64, k, v, ts));
            id += 1;
        }
    }
    let mut writers: Vec<_> = names.iter().map(|n| db.writer(n).unwrap()).collect();
    let mut pos = [0usize; 3];
    loop {
        let open: Vec<usize> = (0..3).filter(|&s| pos[s] < data[s].len()).collect();
        if open.is_empty() {
            break;
        }
        let s = open[r.random_range(0..open.len())];
        let m = r.random_range(1..25).min(data[s].len() - pos[s]);
        writers[s].write(batch(&data[s][pos[s]..pos[s] + m])).map_err(|e| e.to_string())?;
        pos[s] += m;
    }
    for w in &mut writers {
        w.finish().map_err(|e| e.to_string())?;
    }
    db.flush().map_err(|e| e.to_string())?;
    let metrics = db.metrics().map_err(|e| e.to_string())?;
    let out_metrics = metrics.streams.iter().find(|s| s.name == "out").expect("out");
    if let Some(f) = &out_metrics.failed {
        return Err(format!("{sql}: stream failed: {f}"));
    }
    if out_metrics.rows_late != 0 {
        return Err(format!("{sql}: {} rows reported late; none were", out_metrics.rows_late));
    }
    let got = common::rows(&db.query("SELECT * FROM out").map_err(|e| e.to_string())?);

    let ctx = SessionContext::new();
    for (s, n) in names.iter().enumerate() {
        let b = batch(&data[s]);
        ctx.register_table(*n, Arc::new(MemTable::try_new(b.schema(), vec![vec![b]]).unwrap())).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let want = rt
        .block_on(async { ctx.sql(&oracle_sql).await?.collect().await })
        .map_err(|e| format!("oracle {oracle_sql}: {e}"))?;
    let want = common::rows(&want);
    compare(got, want).map_err(|e| format!("{sql}\n{e}"))
}

fn compare(got: Vec<Vec<String>>, want: Vec<Vec<String>>) -> Result<(), String> {
    let count = |v: &Vec<Vec<String>>| {
        let mut m: HashMap<String, i64> = HashMap::new();
        for r in v {
            *m.entry(r.join("|")).or_default() += 1;
        }
        m
    };
    let (g, w) = (count(&got), count(&want));
    if g == w {
        return Ok(());
    }
    let mut extra: Vec<String> = g.iter().filter(|(k, n)| w.get(*k) != Some(n)).map(|(k, n)| format!("{k} ×{n} (want ×{})", w.get(k).unwrap_or(&0))).collect();
    let mut missing: Vec<String> = w.iter().filter(|(k, _)| !g.contains_key(*k)).map(|(k, n)| format!("{k} ×{n}")).collect();
    extra.sort();
    missing.sort();
    Err(format!(
        "got {} rows, want {}\n wrong or extra: {}\n missing: {}",
        got.len(),
        want.len(),
        extra.iter().take(8).cloned().collect::<Vec<_>>().join("; "),
        missing.iter().take(8).cloned().collect::<Vec<_>>().join("; ")
    ))
}

#[test]
fn join_differential_random_cases() {
    let cases: u64 = std::env::var("LAMINAR_JOIN_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let seeds: Vec<u64> = match std::env::var("LAMINAR_JOIN_SEED") {
        Ok(s) => vec![s.parse().expect("seed")],
        Err(_) => (0..cases).map(|i| 0x70_1000 + i).collect(),
    };
    let mut failures = vec![];
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for seed in &seeds {
        let c = gen_case(*seed);
        let shape = format!("{:?}", c.shape).split([' ', '{']).next().unwrap().to_string();
        *kinds.entry(format!("{shape}/{}", c.jt)).or_default() += 1;
        if let Err(e) = run_case(&c) {
            failures.push(format!("seed {seed} (replay: LAMINAR_JOIN_SEED={seed}) {c:?}: {e}"));
        }
    }
    let mut k: Vec<_> = kinds.into_iter().collect();
    k.sort();
    eprintln!("{} join cases: {k:?}", seeds.len());
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), seeds.len(), failures.iter().take(4).cloned().collect::<Vec<_>>().join("\n\n"));
}
