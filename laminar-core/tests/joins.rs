//! Differential tests for streaming joins (DESIGN §8): random keys with skew and NULLs, random
//! out-of-order arrival inside the watermark delay, random batch sizes and random interleaving of
//! the inputs. The final content of a materialized view over each join must equal DataFusion's
//! batch answer to the same SQL over every row pushed. Join kinds: interval (asymmetric bounds),
//! regular (with and without a residual condition), window join, aggregates over a join and over
//! an outer join's changelog, Nexmark q4's two-level shape, DISTINCT, three-way chains;
//! × INNER/LEFT/RIGHT/FULL.
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
    Interval {
        lo: i64,
        hi: i64,
    },
    Regular {
        residual: bool,
    },
    Window {
        size: i64,
    },
    AggOverJoin {
        lo: i64,
        hi: i64,
    },
    Three {
        lo: i64,
        hi: i64,
        lo2: i64,
        hi2: i64,
        regular2: bool,
    },
    /// An aggregate over a regular outer join's changelog (retractions reach the aggregate).
    AggOverChangelog,
    /// Nexmark q4's shape: MAX per left row over an interval join, then COUNT/AVG/MIN/MAX of
    /// those maxima per key — the outer aggregate takes the inner one's retractions.
    TwoLevel {
        lo: i64,
        hi: i64,
    },
    /// SELECT DISTINCT over a join (an append-only one for INNER, a changelog for outer joins).
    Distinct,
    /// Top-N per window (ROW_NUMBER), LAG and a ROWS frame per (window, key), over a TUMBLE of
    /// the left input.
    TopN {
        size: i64,
        n: i64,
        single: Option<&'static str>,
        /// Over a windowed aggregate (SUM(v) per key and window) instead of the window's rows;
        /// `true`: it projects window_start only (the window's end is start + size).
        over_agg: Option<bool>,
    },
    /// SEMI / ANTI: [NOT] EXISTS (correlated on the key, optionally time-bounded) and IN.
    Exists {
        not: bool,
        bounded: Option<(i64, i64)>,
        in_form: bool,
    },
    /// OVER over an unbounded stream: ROW_NUMBER, LAG and a ROWS frame per key in event-time order.
    StreamOver {
        lag: i64,
        rows: i64,
        lead: Option<i64>,
    },
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
    let shape = match r.random_range(0..11) {
        10 => Shape::StreamOver {
            lag: r.random_range(1..4),
            rows: r.random_range(0..5),
            lead: if r.random_bool(0.5) { Some(r.random_range(1..4)) } else { None },
        },
        9 => Shape::Exists {
            not: r.random_bool(0.5),
            bounded: if r.random_bool(0.5) { Some((ms(&mut r), ms(&mut r))) } else { None },
            in_form: r.random_bool(0.25),
        },
        8 => Shape::TopN {
            size: [1000, 2000, 5000][r.random_range(0..3)],
            n: r.random_range(1..4),
            single: [None, Some("ROW_NUMBER"), Some("RANK"), Some("DENSE_RANK")][r.random_range(0..4)],
            over_agg: [None, None, Some(false), Some(true)][r.random_range(0..4)],
        },
        7 => Shape::Distinct,
        5 => Shape::AggOverChangelog,
        6 => Shape::TwoLevel { lo: ms(&mut r), hi: ms(&mut r) },
        0 => Shape::Interval { lo: ms(&mut r), hi: ms(&mut r) },
        1 => Shape::Regular { residual: r.random_bool(0.5) },
        2 => Shape::Window { size: [1000, 2000, 5000][r.random_range(0..3)] },
        3 => Shape::AggOverJoin { lo: ms(&mut r), hi: ms(&mut r) },
        _ => Shape::Three {
            lo: ms(&mut r),
            hi: ms(&mut r),
            lo2: ms(&mut r),
            hi2: ms(&mut r),
            regular2: r.random_bool(0.3),
        },
    };
    let jt = match shape {
        Shape::AggOverJoin { .. }
        | Shape::TwoLevel { .. }
        | Shape::TopN { .. }
        | Shape::Exists { .. }
        | Shape::StreamOver { .. } => "INNER",
        _ => JTS[r.random_range(0..4)],
    };
    let jt2 = JTS[r.random_range(0..4)];
    let filter = match shape {
        Shape::Window { .. }
        | Shape::AggOverJoin { .. }
        | Shape::AggOverChangelog
        | Shape::TwoLevel { .. }
        | Shape::TopN { .. }
        | Shape::StreamOver { .. } => "",
        Shape::Exists { .. } => ["", " WHERE l.v > 20"][r.random_range(0..2)],
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
                format!(
                    "SELECT k, window_start AS ws, window_end AS we, COUNT(*) AS n, MAX(v) AS mx FROM {from} GROUP BY k, window_start, window_end"
                )
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
        Shape::StreamOver { lag, rows, lead } => {
            // LEAD holds rows back for their followers; RANK (ties) is not combined with it.
            let extra = match lead {
                Some(n) => format!("LEAD(v, {n}) OVER (PARTITION BY k ORDER BY ts, id) AS ld"),
                None => "RANK() OVER (PARTITION BY k ORDER BY ts) AS rk".to_string(),
            };
            let q = format!(
                "SELECT id, k, ts, {extra}, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts, id) AS rn, \
                 LAG(v, {lag}) OVER (PARTITION BY k ORDER BY ts, id) AS lg, \
                 SUM(v) OVER (PARTITION BY k ORDER BY ts, id ROWS BETWEEN {rows} PRECEDING AND CURRENT ROW) AS s, \
                 COUNT(v) OVER (PARTITION BY k ORDER BY ts, id ROWS BETWEEN {rows} PRECEDING AND CURRENT ROW) AS c \
                 FROM l"
            );
            (q.clone(), q)
        }
        Shape::Exists { not, bounded, in_form } => {
            let q = if *in_form {
                format!(
                    "SELECT l.id, l.k FROM l WHERE l.k IN (SELECT r.k FROM r WHERE r.v > 30){}",
                    f.replace(" WHERE ", " AND ")
                )
            } else {
                let time = bounded
                    .map(|(lo, hi)| format!(" AND r.ts BETWEEN l.ts - {} AND l.ts + {}", iv(lo), iv(hi)))
                    .unwrap_or_default();
                format!(
                    "SELECT l.id, l.k, l.v FROM l WHERE {}EXISTS (SELECT 1 FROM r WHERE r.k = l.k{time}){}",
                    if *not { "NOT " } else { "" },
                    f.replace(" WHERE ", " AND ")
                )
            };
            (q.clone(), q)
        }
        Shape::TopN { size, n, single, over_agg: Some(start_only) } => {
            // Ranks of per-(window, key) sums; the batch form bins with date_bin.
            let f = single.unwrap_or("ROW_NUMBER");
            let order = if f == "ROW_NUMBER" { "total DESC NULLS LAST, k" } else { "total DESC NULLS LAST" };
            let end = if *start_only { "" } else { ", window_end" };
            let stream = format!(
                "SELECT k, total, ws, r FROM (SELECT k, total, window_start AS ws, {f}() OVER (PARTITION BY window_start ORDER BY {order}) AS r FROM (SELECT k, SUM(v) AS total, window_start{end} FROM l GROUP BY k, TUMBLE(ts, {}))) t WHERE r <= {n}",
                iv(*size)
            );
            let batch = format!(
                "SELECT k, total, ws, r FROM (SELECT k, total, window_start AS ws, {f}() OVER (PARTITION BY window_start ORDER BY {order}) AS r FROM (SELECT k, SUM(v) AS total, date_bin({0}, ts, TIMESTAMP '1970-01-01 00:00:00') AS window_start FROM l GROUP BY k, date_bin({0}, ts, TIMESTAMP '1970-01-01 00:00:00'))) t WHERE r <= {n}",
                iv(*size)
            );
            (stream, batch)
        }
        Shape::TopN { size, n, single, over_agg: None } => {
            let from = |src: &str, tvf: bool| {
                if tvf {
                    format!("TUMBLE({src}, ts, {})", iv(*size))
                } else {
                    format!(
                        "(SELECT *, date_bin({0}, ts, TIMESTAMP '1970-01-01 00:00:00') AS window_start, date_bin({0}, ts, TIMESTAMP '1970-01-01 00:00:00') + {0} AS window_end FROM {src})",
                        iv(*size)
                    )
                }
            };
            // A single ranking function under `<= n` runs as a bounded top-N.
            if let Some(f) = single {
                let order = if *f == "ROW_NUMBER" { "v DESC NULLS LAST, id" } else { "v DESC NULLS LAST" };
                let q = |tvf: bool| {
                    format!(
                        "SELECT id, k, ws, r FROM (SELECT id, k, window_start AS ws, {f}() OVER (PARTITION BY window_start ORDER BY {order}) AS r FROM {}) t WHERE r <= {n}",
                        from("l", tvf)
                    )
                };
                return (q(true), q(false));
            }
            let q = |tvf: bool| {
                format!(
                    "SELECT id, k, ws, rn, prev, s3 FROM (SELECT id, k, window_start AS ws, \
                       ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY v DESC NULLS LAST, id) AS rn, \
                       LAG(id) OVER (PARTITION BY window_start, k ORDER BY ts, id) AS prev, \
                       SUM(v) OVER (PARTITION BY window_end, k ORDER BY ts, id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s3 \
                     FROM {}) t WHERE rn <= {n}",
                    from("l", tvf)
                )
            };
            (q(true), q(false))
        }
        Shape::Distinct => {
            let q = format!("SELECT DISTINCT l.k, r.v % 10 AS rv FROM l {jt} JOIN r ON l.k = r.k{f}");
            (q.clone(), q)
        }
        Shape::AggOverChangelog => {
            let q = format!(
                "SELECT l.k, COUNT(*) AS c, COUNT(r.v) AS cv, SUM(r.v) AS s, MIN(r.v) AS mn, MAX(r.v) AS mx, SUM(l.v) FILTER (WHERE r.v > 50) AS sf \
                 FROM l {jt} JOIN r ON l.k = r.k GROUP BY l.k"
            );
            (q.clone(), q)
        }
        Shape::TwoLevel { lo, hi } => {
            let q = format!(
                "SELECT q.k, COUNT(*) AS c, AVG(q.mx) AS a, MIN(q.mx) AS mn, MAX(q.mx) AS mx2 FROM (\
                 SELECT l.id, l.k, MAX(r.v) AS mx FROM l JOIN r ON l.k = r.k AND r.ts BETWEEN l.ts - {} AND l.ts + {} GROUP BY l.id, l.k\
                 ) q GROUP BY q.k",
                iv(*lo),
                iv(*hi)
            );
            (q.clone(), q)
        }
        Shape::Three { lo, hi, lo2, hi2, regular2 } => {
            let second = if *regular2 {
                String::new()
            } else {
                format!(" AND m.ts BETWEEN r.ts - {} AND r.ts + {}", iv(*lo2), iv(*hi2))
            };
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

use common::{IdKvtRow as Row, id_kvt_batch as batch};

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
            let k = if r.random_range(0..20) == 0 {
                None
            } else {
                Some(r.random_range(0..keys).min(r.random_range(0..keys)) as i64)
            };
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
    let mut extra: Vec<String> = g
        .iter()
        .filter(|(k, n)| w.get(*k) != Some(n))
        .map(|(k, n)| format!("{k} ×{n} (want ×{})", w.get(k).unwrap_or(&0)))
        .collect();
    let mut missing: Vec<String> =
        w.iter().filter(|(k, _)| !g.contains_key(*k)).map(|(k, n)| format!("{k} ×{n}")).collect();
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
    let seeds = common::case_seeds("LAMINAR_JOIN_SEED", "LAMINAR_JOIN_CASES", 1000, 0x70_1000);
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
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.iter().take(4).cloned().collect::<Vec<_>>().join("\n\n")
    );
}

/// MIN and MAX over a retracting input recover the next value when the current extreme is
/// retracted (DESIGN §3 "Views"; the input is an EMIT CHANGES aggregate, which retracts).
#[test]
fn min_and_max_recover_after_their_extreme_is_retracted() {
    let db = common::db(1);
    db.execute("CREATE SOURCE s (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL)").unwrap();
    db.execute("CREATE STREAM latest AS SELECT k, MAX(v) AS mv FROM s GROUP BY k").unwrap();
    db.execute("CREATE MATERIALIZED VIEW lo AS SELECT MIN(mv) AS low, MAX(mv) AS high, COUNT(*) AS n, SUM(mv) AS total FROM latest").unwrap();
    let mut w = db.writer("s").unwrap();
    let state = |db: &Database| common::sorted(&db.query("SELECT * FROM lo").unwrap());
    w.write(common::kvt(&[(1, 5, 0), (2, 3, 0), (3, 7, 0)])).unwrap();
    w.flush().unwrap();
    assert_eq!(state(&db), vec!["3|7|3|15"]);
    // k = 2 moves from 3 (the minimum) to 10: the minimum recovers to 5, the maximum is 10.
    w.write(common::kvt(&[(2, 10, 1)])).unwrap();
    w.flush().unwrap();
    assert_eq!(state(&db), vec!["5|10|3|22"]);
    // k = 1 moves from 5 (the minimum again) to 6, k = 2 from 10 (the maximum) to 11 — and then
    // the maximum is retracted for good when k = 3 takes it from 7 to 12.
    w.write(common::kvt(&[(1, 6, 2), (2, 11, 2)])).unwrap();
    w.write(common::kvt(&[(3, 12, 3)])).unwrap();
    w.flush().unwrap();
    assert_eq!(state(&db), vec!["6|12|3|29"]);
    let plan = common::rows(&db.execute("EXPLAIN CREATE STREAM x AS SELECT MIN(mv) FROM latest").unwrap().batches);
    assert!(plan.iter().any(|r| r[0].contains("RetractingAggregate")), "{plan:?}");
}

/// A regular LEFT join retracts its NULL-padded row when the first match arrives, and the view
/// over it ends equal to the batch join; EXPLAIN names the join, its state and its bound.
#[test]
fn outer_join_retracts_padding_and_explain_shows_the_state_bound() {
    let db = common::db(1);
    db.execute(
        "CREATE SOURCE a (k BIGINT, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
    )
    .unwrap();
    db.execute(
        "CREATE SOURCE b (k BIGINT, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
    )
    .unwrap();
    db.execute("CREATE STREAM j AS SELECT a.k, a.v, b.v AS bv FROM a LEFT JOIN b ON a.k = b.k").unwrap();
    let sub = db.subscribe("j").unwrap();
    let (mut wa, mut wb) = (db.writer("a").unwrap(), db.writer("b").unwrap());
    let kvt = |rows: &[(i64, i64, i64)]| {
        let b = common::kvt(rows);
        RecordBatch::try_new(
            Arc::new(laminar_core::arrow::datatypes::Schema::new(vec![
                laminar_core::arrow::datatypes::Field::new("k", laminar_core::arrow::datatypes::DataType::Int64, true),
                laminar_core::arrow::datatypes::Field::new("v", laminar_core::arrow::datatypes::DataType::Int64, true),
                b.schema().field(2).clone(),
            ])),
            b.columns().to_vec(),
        )
        .unwrap()
    };
    wa.write(kvt(&[(1, 10, 0)])).unwrap();
    wa.flush().unwrap();
    assert_eq!(common::sorted(&common::drain(&sub)), vec!["1|10||1"], "padded at once");
    wb.write(kvt(&[(1, 20, 0), (1, 21, 0)])).unwrap();
    wb.flush().unwrap();
    let rows = common::rows(&common::drain(&sub));
    assert_eq!(rows[0], vec!["1", "10", "", "-1"], "the retraction comes first: {rows:?}");
    let mut rest: Vec<String> = rows[1..].iter().map(|r| r.join("|")).collect();
    rest.sort();
    assert_eq!(rest, vec!["1|10|20|1", "1|10|21|1"]);

    let plan = |sql: &str| {
        common::rows(&db.execute(&format!("EXPLAIN CREATE STREAM x AS {sql}")).unwrap().batches)
            .into_iter()
            .map(|r| r[0].clone())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let p = plan(
        "SELECT a.k, b.v FROM a JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '2' SECOND AND a.ts + INTERVAL '3' SECOND",
    );
    assert!(p.contains("HashJoin INNER") && p.contains("bounded by the watermark on both sides"), "{p}");
    assert!(
        p.contains("a.ts + IntervalMonthDayNano") || p.contains("a.ts +"),
        "left rows are kept until a.ts + 3 s: {p}"
    );
    let p = plan("SELECT a.k, b.v FROM a LEFT JOIN b ON a.k = b.k");
    assert!(p.contains("HashJoin LEFT") && p.contains("unbounded on both sides") && p.contains("changelog"), "{p}");
    let e = db.execute("CREATE STREAM y AS SELECT a.k FROM a JOIN b ON a.v < b.v").unwrap_err();
    assert_eq!(e.kind(), laminar_core::ErrorKind::NotImplemented, "{e}");
    assert!(e.message().contains("equality"), "{e}");
}

/// An interval join's state stays under a bound computed from the watermark delay, the join's
/// upper bound, the out-of-order spread and the input rate while many rows stream through
/// (10 M; `LAMINAR_STATE_ROWS` overrides). Without eviction it would hold every row.
#[test]
fn interval_join_state_stays_bounded() {
    let total: usize = std::env::var("LAMINAR_STATE_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let db = common::db(1);
    for n in ["a", "b"] {
        db.execute(&format!("CREATE SOURCE {n} (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)")).unwrap();
    }
    db.execute("CREATE STREAM j AS SELECT a.k, a.v, b.v AS bv FROM a JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND").unwrap();
    let sub = db.subscribe("j").unwrap();
    let (mut wa, mut wb) = (db.writer("a").unwrap(), db.writer("b").unwrap());
    // One row per millisecond of event time per side, up to 1 s out of order, 1,000 keys.
    const BATCH: usize = 8192;
    let (delay, hi, lo, jitter) = (5_000i64, 2_000i64, 1_000i64, 1_000i64);
    let mut peak = 0u64;
    let mut out_rows = 0usize;
    let mut t = 0i64;
    let mut sent = 0;
    while sent < total {
        let rows: Vec<(i64, i64, i64)> =
            (0..BATCH as i64).map(|i| ((i * 7919) % 1000, i, t + i - (i * 31) % jitter)).collect();
        t += BATCH as i64;
        wa.write(common::kvt(&rows)).unwrap();
        wb.write(common::kvt(&rows)).unwrap();
        sent += 2 * BATCH;
        if (sent / (2 * BATCH)).is_multiple_of(8) {
            wb.flush().unwrap();
            let m = db.metrics().unwrap();
            peak = peak.max(m.streams.iter().find(|s| s.name == "j").unwrap().state_bytes);
            out_rows += common::drain(&sub).iter().map(|b| b.num_rows()).sum::<usize>();
        }
    }
    wb.flush().unwrap();
    peak = peak.max(db.metrics().unwrap().streams.iter().find(|s| s.name == "j").unwrap().state_bytes);
    out_rows += common::drain(&sub).iter().map(|b| b.num_rows()).sum::<usize>();
    // Rows a side holds: those not yet past ts + bound behind the watermark (delay + bound +
    // spread), plus the batch that moved the watermark and one more batch whose rows share a
    // chunk with rows still alive. About 100 bytes a row covers the row, its index entry and
    // its share of the key table.
    let rows_held = |bound: i64| (delay + bound + jitter) as u64 + 2 * BATCH as u64;
    let limit = (rows_held(hi) + rows_held(lo)) * 100;
    let unbounded = total as u64 * 24;
    eprintln!(
        "interval join: {total} rows in, {out_rows} out, peak state {peak} bytes, bound {limit} bytes (all rows would be ≥ {unbounded})"
    );
    assert!(peak > 0, "state was measured");
    assert!(peak <= limit, "peak state {peak} bytes exceeds the bound {limit}");
    assert!(out_rows > 0);
}

/// ASOF joins against a hand-written oracle (DESIGN §8): every left row once, with the right row
/// of its key closest in time on the allowed side (ties: the row pushed last; NEAREST ties: the
/// earlier), NULLs when none or when the tolerance fails. Random operators, written either way
/// round, random tolerance, random interleaving, skewed and NULL keys, out-of-order input.
#[test]
fn asof_differential_random_cases() {
    let cases: u64 =
        std::env::var("LAMINAR_JOIN_CASES").ok().and_then(|s| s.parse().ok()).map(|n: u64| n / 3).unwrap_or(300);
    let mut failures = vec![];
    for seed in 0..cases {
        if let Err(e) = asof_case(0xA50F_0000 + seed) {
            failures.push(format!("seed {}: {e}", 0xA50F_0000 + seed));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} ASOF cases failed:\n{}",
        failures.len(),
        failures.iter().take(4).cloned().collect::<Vec<_>>().join("\n\n")
    );
}

fn asof_case(seed: u64) -> Result<(), String> {
    let mut r = SmallRng::seed_from_u64(seed);
    let op = ["GE", "GT", "LE", "LT", "NEAREST"][r.random_range(0..5)];
    let flip = r.random_bool(0.5);
    let cond = match (op, flip) {
        ("NEAREST", _) => "NEAREST(l.ts, r.ts)".to_string(),
        (o, false) => format!(
            "l.ts {} r.ts",
            [">=", ">", "<=", "<"][["GE", "GT", "LE", "LT"].iter().position(|x| *x == o).unwrap()]
        ),
        (o, true) => format!(
            "r.ts {} l.ts",
            ["<=", "<", ">=", ">"][["GE", "GT", "LE", "LT"].iter().position(|x| *x == o).unwrap()]
        ),
    };
    let tol: Option<i64> =
        if op != "NEAREST" && r.random_bool(0.4) { Some([0, 300, 1500][r.random_range(0..3)]) } else { None };
    let tol_sql = match (tol, op) {
        (Some(t), "GE" | "GT") => format!(" AND l.ts - r.ts <= {}", iv(t)),
        (Some(t), _) => format!(" AND r.ts - l.ts <= {}", iv(t)),
        (None, _) => String::new(),
    };
    let sql =
        format!("SELECT l.id AS lid, r.id AS rid FROM l ASOF JOIN r MATCH_CONDITION({cond}) ON l.k = r.k{tol_sql}");
    let db = common::db(1);
    for n in ["l", "r"] {
        db.execute(&format!("CREATE SOURCE {n} (id BIGINT NOT NULL, k BIGINT, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)")).map_err(|e| e.to_string())?;
    }
    db.execute(&format!("CREATE MATERIALIZED VIEW out AS {sql}")).map_err(|e| format!("{sql}: {e}"))?;
    let keys = r.random_range(1..6);
    let mut data: [Vec<Row>; 2] = [vec![], vec![]];
    let mut id = 0;
    for (s, rows) in data.iter_mut().enumerate() {
        let n = r.random_range(0..100);
        let mut t: i64 = 1_000_000 + r.random_range(0..2000);
        for _ in 0..n {
            t += r.random_range(0..400);
            // Some equal times, to exercise the tie rules.
            let ts = if r.random_range(0..6) == 0 { t - t % 1000 } else { t - r.random_range(0..4000) };
            let k = if r.random_range(0..15) == 0 {
                None
            } else {
                Some(r.random_range(0..keys).min(r.random_range(0..keys)) as i64)
            };
            rows.push((id * 2 + s as i64, k, Some(r.random_range(0..100)), ts));
            id += 1;
        }
    }
    let mut writers: Vec<_> = ["l", "r"].iter().map(|n| db.writer(n).unwrap()).collect();
    let mut pos = [0usize; 2];
    while pos[0] < data[0].len() || pos[1] < data[1].len() {
        let s = if pos[0] >= data[0].len() {
            1
        } else if pos[1] >= data[1].len() {
            0
        } else {
            r.random_range(0..2)
        };
        let m = r.random_range(1..20).min(data[s].len() - pos[s]);
        writers[s].write(batch(&data[s][pos[s]..pos[s] + m])).map_err(|e| e.to_string())?;
        pos[s] += m;
    }
    for w in &mut writers {
        w.finish().map_err(|e| e.to_string())?;
    }
    db.flush().map_err(|e| e.to_string())?;
    if let Some(f) = db.metrics().unwrap().streams.iter().find_map(|s| s.failed.clone()) {
        return Err(format!("{sql}: {f}"));
    }
    let got = common::rows(&db.query("SELECT * FROM out").map_err(|e| e.to_string())?);
    // The oracle. Push order within the right side is its index.
    let mut want = vec![];
    for lrow in &data[0] {
        let cands: Vec<(usize, &Row)> =
            data[1].iter().enumerate().filter(|(_, x)| lrow.1.is_some() && x.1 == lrow.1).collect();
        let lt = lrow.3;
        let best = |ok: &dyn Fn(i64) -> bool, dist: &dyn Fn(i64) -> i64| -> Option<(usize, &Row)> {
            // Closest first; among equal times the one pushed last.
            cands.iter().filter(|(_, x)| ok(x.3)).min_by_key(|(i, x)| (dist(x.3), std::cmp::Reverse(*i))).copied()
        };
        let before = best(&|t| t <= lt, &|t| lt - t);
        let m = match op {
            "GE" => before,
            "GT" => best(&|t| t < lt, &|t| lt - t),
            "LE" => best(&|t| t >= lt, &|t| t - lt),
            "LT" => best(&|t| t > lt, &|t| t - lt),
            _ => {
                let after = best(&|t| t >= lt, &|t| t - lt);
                match (before, after) {
                    (Some(b), Some(a)) => Some(if lt - b.1.3 <= a.1.3 - lt { b } else { a }),
                    (b, a) => b.or(a),
                }
            }
        };
        let m = m.filter(|(_, x)| tol.is_none_or(|t| (x.3 - lt).abs() <= t));
        want.push(vec![lrow.0.to_string(), m.map(|(_, x)| x.0.to_string()).unwrap_or_default()]);
    }
    compare(got, want).map_err(|e| format!("{sql}\n{e}"))
}

/// Tables: keyed upserts by INSERT and by writers, DELETE, ad-hoc SELECT, SHOW TABLES, errors.
#[test]
fn tables_upsert_delete_and_read() {
    let db = common::db(1);
    let e = db.execute("CREATE TABLE t (k BIGINT, v BIGINT)").unwrap_err();
    assert!(e.message().contains("PRIMARY KEY"), "{e}");
    let e = db.execute("CREATE SOURCE s (k BIGINT PRIMARY KEY, v BIGINT)").unwrap_err();
    assert!(e.message().contains("CREATE TABLE"), "{e}");
    let e = db.execute("CREATE TABLE t (k BIGINT, v BIGINT, PRIMARY KEY (kk))").unwrap_err();
    assert!(e.message().contains("did you mean 'k'"), "{e}");
    db.execute("CREATE TABLE prices (sym VARCHAR, px BIGINT, PRIMARY KEY (sym))").unwrap();
    db.execute("CREATE TABLE t2 (id BIGINT PRIMARY KEY, name VARCHAR)").unwrap();
    assert_eq!(db.list(laminar_core::ObjectKind::Table).unwrap(), vec!["prices", "t2"]);
    assert!(db.list(laminar_core::ObjectKind::Source).unwrap().is_empty());
    db.execute("INSERT INTO prices VALUES ('a', 1), ('b', 2), ('a', 3)").unwrap();
    assert_eq!(common::sorted(&db.query("SELECT * FROM prices").unwrap()), vec!["a|3", "b|2"]);
    db.execute("INSERT INTO prices VALUES ('b', 5), ('c', 7)").unwrap();
    let r = db.execute("DELETE FROM prices WHERE px > 6").unwrap();
    assert_eq!(r.rows_affected, 1);
    assert_eq!(common::sorted(&db.query("SELECT * FROM prices").unwrap()), vec!["a|3", "b|5"]);
    let e = db.execute("INSERT INTO prices VALUES (NULL, 1)").unwrap_err();
    assert!(e.message().contains("sym"), "a NULL key is refused: {e}");
    let e = db.execute("DELETE FROM nope").unwrap_err();
    assert_eq!(e.kind(), laminar_core::ErrorKind::NotFound);
    // (Both used to deadlock: the error was built while the engine lock was held.)
    let e = db.execute("INSERT INTO nope VALUES (1)").unwrap_err();
    assert_eq!(e.kind(), laminar_core::ErrorKind::NotFound);
    assert_eq!(db.object("prices").unwrap().kind, laminar_core::ObjectKind::Table);
    db.execute("DELETE FROM prices").unwrap();
    assert!(db.query("SELECT * FROM prices").unwrap().iter().all(|b| b.num_rows() == 0));
    db.execute("DROP TABLE t2").unwrap();
}

/// A stream joined with a table, and aggregates over a table, under random upserts and deletes:
/// the views end equal to the batch answer over the table's final rows (a table change retracts
/// and corrects earlier join output).
#[test]
fn table_differential_random_cases() {
    let cases: u64 =
        std::env::var("LAMINAR_JOIN_CASES").ok().and_then(|s| s.parse().ok()).map(|n: u64| n / 5).unwrap_or(200);
    let mut failures = vec![];
    for seed in 0..cases {
        if let Err(e) = table_case(0x7AB1E_000 + seed) {
            failures.push(format!("seed {}: {e}", 0x7AB1E_000 + seed));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} table cases failed:\n{}",
        failures.len(),
        failures.iter().take(4).cloned().collect::<Vec<_>>().join("\n\n")
    );
}

fn table_case(seed: u64) -> Result<(), String> {
    let mut r = SmallRng::seed_from_u64(seed);
    let db = common::db(r.random_range(1..3));
    let e = |x: laminar_core::Error| x.to_string();
    db.execute("CREATE SOURCE l (id BIGINT NOT NULL, k BIGINT, v BIGINT, ts TIMESTAMP NOT NULL)").map_err(e)?;
    db.execute("CREATE TABLE t (k BIGINT, w BIGINT, PRIMARY KEY (k))").map_err(e)?;
    let jt = ["INNER", "LEFT"][r.random_range(0..2)];
    let queries = [
        ("j", format!("SELECT l.id, l.k, t.w FROM l {jt} JOIN t ON l.k = t.k")),
        ("agg", "SELECT COUNT(*) AS c, SUM(w) AS s, MIN(w) AS mn, MAX(w) AS mx FROM t".to_string()),
        ("byk", "SELECT k % 3 AS g, COUNT(*) AS c, MAX(w) AS mx FROM t GROUP BY k % 3".to_string()),
    ];
    for (n, q) in &queries {
        db.execute(&format!("CREATE MATERIALIZED VIEW {n} AS {q}")).map_err(|x| format!("{q}: {x}"))?;
    }
    let mut wl = db.writer("l").unwrap();
    let mut wt = db.writer("t").unwrap();
    let keys = r.random_range(1..10);
    let mut left: Vec<Row> = vec![];
    for step in 0..r.random_range(1..40) {
        match r.random_range(0..4) {
            0 | 1 => {
                let rows: Vec<Row> = (0..r.random_range(1..10))
                    .map(|i| {
                        (
                            step * 100 + i,
                            if r.random_range(0..15) == 0 { None } else { Some(r.random_range(0..keys)) },
                            Some(0),
                            0,
                        )
                    })
                    .collect();
                wl.write(batch(&rows)).map_err(e)?;
                left.extend(rows);
            }
            2 => {
                let n = r.random_range(1..6);
                let kk: Vec<i64> = (0..n).map(|_| r.random_range(0..keys)).collect();
                let ww: Vec<Option<i64>> = (0..n)
                    .map(|_| if r.random_range(0..8) == 0 { None } else { Some(r.random_range(0..50)) })
                    .collect();
                let b = RecordBatch::try_from_iter(vec![
                    ("k", Arc::new(Int64Array::from(kk)) as ArrayRef),
                    ("w", Arc::new(Int64Array::from(ww)) as ArrayRef),
                ])
                .unwrap();
                wt.write(b).map_err(e)?;
            }
            _ => {
                wt.flush().map_err(e)?;
                let k = r.random_range(0..keys);
                db.execute(&format!("DELETE FROM t WHERE k = {k} OR w > 45")).map_err(e)?;
            }
        }
    }
    wl.flush().map_err(e)?;
    wt.flush().map_err(e)?;
    if let Some(f) = db.metrics().unwrap().streams.iter().find_map(|s| s.failed.clone()) {
        return Err(f);
    }
    let final_t = db.query("SELECT * FROM t").map_err(e)?;
    let ctx = SessionContext::new();
    let lb = batch(&left);
    ctx.register_table("l", Arc::new(MemTable::try_new(lb.schema(), vec![vec![lb]]).unwrap())).unwrap();
    let tschema = db.object("t").unwrap().schema;
    ctx.register_table("t", Arc::new(MemTable::try_new(tschema, vec![final_t]).unwrap())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for (n, q) in &queries {
        let got = common::rows(&db.query(&format!("SELECT * FROM {n}")).map_err(e)?);
        let want = common::rows(&rt.block_on(async { ctx.sql(q).await?.collect().await }).map_err(|x| x.to_string())?);
        // A global aggregate over an empty table: the batch answer has one row, the view none.
        let want = if got.is_empty() && want.len() == 1 && want[0][0] == "0" { vec![] } else { want };
        compare(got, want).map_err(|x| format!("{q}\n{x}"))?;
    }
    Ok(())
}

fn rates_and_orders(db: &Database) {
    db.execute("CREATE TABLE rates (cur VARCHAR, rate DOUBLE, ts TIMESTAMP NOT NULL, PRIMARY KEY (cur), WATERMARK FOR ts AS ts - INTERVAL '30' SECOND)").unwrap();
    db.execute("CREATE SOURCE orders (id BIGINT NOT NULL, cur VARCHAR, amount DOUBLE, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '30' SECOND)").unwrap();
}

/// A temporal join takes the version valid at the left row's event time, not the latest one —
/// even when later versions arrived before the order did.
#[test]
fn temporal_join_picks_the_version_valid_at_event_time() {
    for (jt, unknown) in [("JOIN", None), ("LEFT JOIN", Some("4|GBP|"))] {
        let db = common::db(1);
        rates_and_orders(&db);
        let sql = format!(
            "SELECT o.id, o.cur, r.rate FROM orders o {jt} rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.cur = r.cur"
        );
        db.execute(&format!("CREATE MATERIALIZED VIEW conv AS {sql}")).unwrap();
        let plan = common::rows(&db.execute(&format!("EXPLAIN CREATE STREAM x AS {sql}")).unwrap().batches);
        assert!(plan.iter().any(|r| r[0].contains("TemporalJoin")), "{plan:?}");
        // Versions of EUR at 0 s, 10 s and 20 s (one of them corrected by a later upsert of the
        // same key and time), USD at 0 s; all pushed before any order.
        db.execute("INSERT INTO rates VALUES ('EUR', 1.0, TIMESTAMP '2026-01-01 00:00:00'), ('USD', 2.0, TIMESTAMP '2026-01-01 00:00:00')").unwrap();
        db.execute("INSERT INTO rates VALUES ('EUR', 1.1, TIMESTAMP '2026-01-01 00:00:10')").unwrap();
        db.execute("INSERT INTO rates VALUES ('EUR', 1.2, TIMESTAMP '2026-01-01 00:00:20')").unwrap();
        db.execute(
            "INSERT INTO orders VALUES (1, 'EUR', 10, TIMESTAMP '2026-01-01 00:00:05'), (2, 'EUR', 10, TIMESTAMP '2026-01-01 00:00:15'), \
             (3, 'EUR', 10, TIMESTAMP '2026-01-01 00:00:25'), (4, 'GBP', 10, TIMESTAMP '2026-01-01 00:00:25'), (5, 'USD', 10, TIMESTAMP '2026-01-01 00:00:26')",
        )
        .unwrap();
        let mut w = db.writer("orders").unwrap();
        w.finish().unwrap();
        db.writer("rates").unwrap().finish().unwrap();
        db.flush().unwrap();
        let mut want = vec!["1|EUR|1.0", "2|EUR|1.1", "3|EUR|1.2", "5|USD|2.0"];
        want.extend(unknown);
        want.sort();
        assert_eq!(common::sorted(&db.query("SELECT * FROM conv").unwrap()), want, "{jt}");
    }
}

/// A lookup join reads the table's current row when the left row is processed and never
/// corrects it later.
#[test]
fn lookup_join_reads_the_current_row_and_never_corrects() {
    let db = common::db(1);
    rates_and_orders(&db);
    db.execute("CREATE STREAM enriched AS SELECT o.id, r.rate FROM orders o LEFT JOIN rates FOR SYSTEM_TIME AS OF PROCTIME() AS r ON o.cur = r.cur").unwrap();
    let info = db.object("enriched").unwrap();
    assert_eq!(info.stream_kind, laminar_core::StreamKind::AppendOnly);
    let sub = db.subscribe("enriched").unwrap();
    db.execute("INSERT INTO orders VALUES (1, 'EUR', 10, TIMESTAMP '2026-01-01 00:00:05')").unwrap();
    db.execute("INSERT INTO rates VALUES ('EUR', 1.0, TIMESTAMP '2026-01-01 00:00:00')").unwrap();
    db.execute("INSERT INTO orders VALUES (2, 'EUR', 10, TIMESTAMP '2026-01-01 00:00:06')").unwrap();
    db.execute("INSERT INTO rates VALUES ('EUR', 1.5, TIMESTAMP '2026-01-01 00:00:00')").unwrap();
    db.execute("INSERT INTO orders VALUES (3, 'EUR', 10, TIMESTAMP '2026-01-01 00:00:07')").unwrap();
    db.execute("DELETE FROM rates").unwrap();
    db.execute("INSERT INTO orders VALUES (4, 'EUR', 10, TIMESTAMP '2026-01-01 00:00:08')").unwrap();
    db.flush().unwrap();
    let got: Vec<String> = common::rows(&common::drain(&sub)).into_iter().map(|r| r.join("|")).collect();
    assert_eq!(got, vec!["1|", "2|1.0", "3|1.5", "4|"], "in push order, each row once");
    let plan = common::rows(&db.execute("EXPLAIN CREATE STREAM x AS SELECT o.id FROM orders o JOIN rates FOR SYSTEM_TIME AS OF PROCTIME() AS r ON o.cur = r.cur").unwrap().batches);
    assert!(plan.iter().any(|r| r[0].contains("LookupJoin INNER")), "{plan:?}");
}

/// `WHERE rn <= n` over a single ranking function is planned as a bounded top-N.
#[test]
fn top_n_is_bounded_and_explained() {
    let db = common::db(1);
    db.execute(common::KVT).unwrap();
    let plan = common::rows(&db.execute("EXPLAIN CREATE STREAM x AS SELECT k, v FROM (SELECT k, v, RANK() OVER (PARTITION BY window_start ORDER BY v DESC) AS r FROM TUMBLE(s, ts, INTERVAL '10' SECOND)) t WHERE r <= 3").unwrap().batches);
    assert!(plan.iter().any(|r| r[0].contains("keeping the leading 3 per partition")), "{plan:?}");
    // Over an unbounded stream: bounded history only.
    db.execute("CREATE STREAM y AS SELECT k, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn FROM s").unwrap();
    let e = db
        .execute("CREATE STREAM z AS SELECT k, DENSE_RANK() OVER (PARTITION BY k ORDER BY ts) AS d FROM s")
        .unwrap_err();
    assert_eq!(e.kind(), laminar_core::ErrorKind::NotImplemented, "{e}");
    let e = db.execute("CREATE STREAM z AS SELECT k, RANK() OVER (PARTITION BY k ORDER BY ts) AS r, LEAD(v) OVER (PARTITION BY k ORDER BY ts) AS nx FROM s").unwrap_err();
    assert_eq!(e.kind(), laminar_core::ErrorKind::NotImplemented, "{e}");
    let e = db.execute("CREATE STREAM z AS SELECT k, SUM(v) OVER (PARTITION BY k ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS s FROM s").unwrap_err();
    assert_eq!(e.kind(), laminar_core::ErrorKind::NotImplemented, "{e}");
}

/// Temporal joins on random data against a hand-written oracle: each left row takes the table
/// version of its key with the latest event time at or before its own (equal times: the upsert
/// pushed last); INNER drops rows without one, LEFT keeps them with NULLs.
#[test]
fn temporal_differential_random_cases() {
    let cases: u64 =
        std::env::var("LAMINAR_JOIN_CASES").ok().and_then(|s| s.parse().ok()).map(|n: u64| n / 5).unwrap_or(200);
    let mut failures = vec![];
    for seed in 0..cases {
        if let Err(e) = temporal_case(0x7E_0000 + seed) {
            failures.push(format!("seed {}: {e}", 0x7E_0000 + seed));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} temporal cases failed:\n{}",
        failures.len(),
        failures.iter().take(4).cloned().collect::<Vec<_>>().join("\n\n")
    );
}

fn temporal_case(seed: u64) -> Result<(), String> {
    let mut r = SmallRng::seed_from_u64(seed);
    let inner = r.random_bool(0.5);
    let db = common::db(1);
    let e = |x: laminar_core::Error| x.to_string();
    db.execute("CREATE SOURCE l (id BIGINT NOT NULL, k BIGINT, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)").map_err(e)?;
    db.execute("CREATE TABLE t (k BIGINT, val BIGINT, ts TIMESTAMP NOT NULL, PRIMARY KEY (k), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)").map_err(e)?;
    let sql = format!(
        "SELECT l.id, t.val FROM l {} t FOR SYSTEM_TIME AS OF l.ts ON l.k = t.k",
        if inner { "JOIN" } else { "LEFT JOIN" }
    );
    db.execute(&format!("CREATE MATERIALIZED VIEW out AS {sql}")).map_err(|x| format!("{sql}: {x}"))?;
    let keys = r.random_range(1..6);
    let (mut tl, mut tt) = (1_000_000i64, 1_000_000i64);
    let mut left: Vec<Row> = vec![];
    let mut versions: Vec<(i64, i64, i64)> = vec![]; // k, val, ts in push order
    let mut wl = db.writer("l").unwrap();
    let mut wt = db.writer("t").unwrap();
    for step in 0..r.random_range(1..60) {
        if r.random_bool(0.5) {
            let rows: Vec<Row> = (0..r.random_range(1..8))
                .map(|i| {
                    tl += r.random_range(0..300);
                    (
                        step * 100 + i,
                        if r.random_range(0..12) == 0 { None } else { Some(r.random_range(0..keys)) },
                        Some(0),
                        tl - r.random_range(0..4000),
                    )
                })
                .collect();
            wl.write(batch(&rows)).map_err(e)?;
            left.extend(rows);
        } else {
            let n = r.random_range(1..5);
            let mut ks = vec![];
            let mut vs = vec![];
            let mut ts = vec![];
            for _ in 0..n {
                tt += r.random_range(0..300);
                let t = tt - r.random_range(0..4000);
                let (k, v) = (r.random_range(0..keys), r.random_range(0..100));
                ks.push(k);
                vs.push(v);
                ts.push(t * 1000);
                versions.push((k, v, t));
            }
            let b = RecordBatch::try_from_iter(vec![
                ("k", Arc::new(Int64Array::from(ks)) as ArrayRef),
                ("val", Arc::new(Int64Array::from(vs)) as ArrayRef),
                ("ts", Arc::new(TimestampMicrosecondArray::from(ts)) as ArrayRef),
            ])
            .unwrap();
            wt.write(b).map_err(e)?;
        }
    }
    wl.finish().map_err(e)?;
    wt.finish().map_err(e)?;
    db.flush().map_err(e)?;
    if let Some(f) = db.metrics().unwrap().streams.iter().find_map(|s| s.failed.clone()) {
        return Err(f);
    }
    let got = common::rows(&db.query("SELECT * FROM out").map_err(e)?);
    let mut want = vec![];
    for (id, k, _, ts) in &left {
        let best = versions
            .iter()
            .enumerate()
            .filter(|(_, (vk, _, vt))| Some(*vk) == *k && *vt <= *ts)
            .max_by_key(|(i, (_, _, vt))| (*vt, *i));
        match best {
            Some((_, (_, val, _))) => want.push(vec![id.to_string(), val.to_string()]),
            None if !inner => want.push(vec![id.to_string(), String::new()]),
            None => {}
        }
    }
    compare(got, want).map_err(|x| format!("{sql}\n{x}"))
}

/// STATE TTL bounds a regular join: rows older than the TTL behind the watermark are forgotten,
/// so a later match is missed (documented), and EXPLAIN says so.
#[test]
fn state_ttl_forgets_old_join_rows() {
    let db = common::db(1);
    for n in ["a", "b"] {
        db.execute(&format!("CREATE SOURCE {n} (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)")).unwrap();
    }
    let sql = "SELECT a.k, a.v, b.v AS bv FROM a JOIN b ON a.k = b.k STATE TTL INTERVAL '10' SECOND";
    db.execute(&format!("CREATE MATERIALIZED VIEW j AS {sql}")).unwrap();
    let plan = common::rows(&db.execute(&format!("EXPLAIN CREATE STREAM x AS {sql}")).unwrap().batches);
    assert!(plan.iter().any(|r| r[0].contains("STATE TTL")), "{plan:?}");
    let (mut wa, mut wb) = (db.writer("a").unwrap(), db.writer("b").unwrap());
    wa.write(common::kvt(&[(1, 1, 0)])).unwrap();
    wb.write(common::kvt(&[(1, 2, 5_000)])).unwrap(); // within the TTL: joins
    wa.write(common::kvt(&[(2, 3, 20_000)])).unwrap();
    wb.write(common::kvt(&[(3, 0, 30_000)])).unwrap(); // both watermarks past 0 s + 10 s
    wb.write(common::kvt(&[(1, 9, 31_000)])).unwrap(); // would match a's first row: forgotten
    wb.flush().unwrap();
    assert_eq!(common::sorted(&db.query("SELECT * FROM j").unwrap()), vec!["1|1|2"]);
    let e = db.execute("CREATE STREAM y AS SELECT k FROM a STATE TTL INTERVAL '1' SECOND").unwrap_err();
    assert!(e.message().contains("STATE TTL applies to joins"), "{e}");
}

/// A source with `idle_timeout` stops holding back the watermark of the join reading it once it
/// has had no data that long (processing time, here a manual clock), so the other side's
/// progress closes the join's state.
#[test]
fn idle_source_stops_holding_back_a_join() {
    let clock = Arc::new(laminar_core::ManualClock::default());
    let db = Database::open_with_clock(":memory:", Config::default(), clock).unwrap();
    db.execute("CREATE SOURCE a (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (idle_timeout = '5s')").unwrap();
    db.execute("CREATE SOURCE b (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)").unwrap();
    db.execute("CREATE STREAM j AS SELECT a.k, b.v FROM a LEFT JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '1' SECOND").unwrap();
    let sub = db.subscribe("j").unwrap();
    let (mut wa, mut wb) = (db.writer("a").unwrap(), db.writer("b").unwrap());
    wa.write(common::kvt(&[(1, 1, 0)])).unwrap();
    wa.write(common::kvt(&[(2, 1, 10_000)])).unwrap(); // a's watermark: 9 s
    wb.write(common::kvt(&[(7, 7, 100_000)])).unwrap(); // b's watermark: 99 s
    db.flush().unwrap();
    // a's watermark (9 s) is the join's: the row at 0 s is unmatched and evicted, the one at 10 s
    // still waits.
    assert_eq!(common::sorted(&common::drain(&sub)), vec!["1|"]);
    db.advance_clock(std::time::Duration::from_secs(4)).unwrap();
    db.flush().unwrap();
    assert!(common::drain(&sub).is_empty(), "4 s without data: a still holds the watermark");
    db.advance_clock(std::time::Duration::from_secs(2)).unwrap();
    db.flush().unwrap();
    assert_eq!(common::sorted(&common::drain(&sub)), vec!["2|"], "a idle: b's watermark (99 s) closes the row at 10 s");
    let m = db.metrics().unwrap();
    assert_eq!(m.streams.iter().find(|s| s.name == "j").unwrap().watermark_ms, Some(99_000));
}

/// A join's state moves out and back in through snapshot/restore (the base of checkpoints): a
/// database restored from another's snapshot continues with the same output.
#[test]
fn join_snapshot_restore_continues_exactly() {
    for sql in [
        "SELECT a.k, a.v, b.v AS bv FROM a LEFT JOIN b ON a.k = b.k",
        "SELECT a.k, a.v, b.v AS bv FROM a FULL JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '2' SECOND AND a.ts + INTERVAL '1' SECOND",
    ] {
        let make = || {
            let db = common::db(1);
            for n in ["a", "b"] {
                db.execute(&format!("CREATE SOURCE {n} (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)")).unwrap();
            }
            db.execute(&format!("CREATE STREAM j AS {sql}")).unwrap();
            db
        };
        let x = make();
        x.writer("a").unwrap().write(common::kvt(&[(1, 1, 1000), (2, 2, 2000), (3, 3, 3000)])).unwrap();
        x.writer("b").unwrap().write(common::kvt(&[(2, 20, 2500)])).unwrap();
        let snap = x.snapshot_stream("j").unwrap();
        let y = make();
        y.restore_stream("j", snap).unwrap();
        let (sx, sy) = (x.subscribe("j").unwrap(), y.subscribe("j").unwrap());
        for db in [&x, &y] {
            let (mut wa, mut wb) = (db.writer("a").unwrap(), db.writer("b").unwrap());
            wb.write(common::kvt(&[(1, 10, 1500), (3, 30, 9000), (4, 40, 9500)])).unwrap();
            wa.write(common::kvt(&[(4, 4, 9000)])).unwrap();
            wa.finish().unwrap();
            wb.finish().unwrap();
            db.flush().unwrap();
        }
        let (rx, ry) = (common::sorted(&common::drain(&sx)), common::sorted(&common::drain(&sy)));
        assert!(!rx.is_empty(), "{sql}");
        assert_eq!(rx, ry, "{sql}");
        assert!(
            rx.iter().any(|r| r.starts_with("1|1|10")),
            "a row restored from the snapshot matched a new one: {rx:?}"
        );
    }
}

/// An aggregate over a changelog (MIN/MAX multisets, sums, counts, the last emitted row) moves
/// through snapshot/restore: the restored database recovers the next extreme as the original does.
#[test]
fn retracting_aggregate_snapshot_restore_continues_exactly() {
    let make = || {
        let db = common::db(1);
        db.execute("CREATE SOURCE s (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL)").unwrap();
        db.execute("CREATE STREAM latest AS SELECT k, MAX(v) AS mv FROM s GROUP BY k").unwrap();
        db.execute("CREATE MATERIALIZED VIEW lo AS SELECT k % 2 AS g, MIN(mv) AS low, MAX(mv) AS high, COUNT(*) AS n, AVG(mv) AS a FROM latest GROUP BY k % 2").unwrap();
        db
    };
    let x = make();
    let mut w = x.writer("s").unwrap();
    w.write(common::kvt(&[(1, 5, 0), (2, 3, 0), (3, 7, 0), (4, 1, 0)])).unwrap();
    w.flush().unwrap();
    let y = make();
    for name in ["latest", "lo"] {
        y.restore_stream(name, x.snapshot_stream(name).unwrap()).unwrap();
    }
    let (sx, sy) = (x.subscribe("lo").unwrap(), y.subscribe("lo").unwrap());
    for db in [&x, &y] {
        let mut w = db.writer("s").unwrap();
        // k = 1 moves from 5 to 9 (its group's minimum becomes 7), k = 4 from 1 to 8.
        w.write(common::kvt(&[(1, 9, 1), (4, 8, 1)])).unwrap();
        w.flush().unwrap();
    }
    let (rx, ry) = (common::sorted(&common::drain(&sx)), common::sorted(&common::drain(&sy)));
    assert_eq!(rx, ry);
    assert!(rx.contains(&"1|7|9|2|8.0|1".to_string()), "{rx:?}");
}

/// ASOF and temporal joins move their waiting left rows and kept right rows (with the arrival
/// order that breaks ties) through snapshot/restore.
#[test]
fn asof_snapshot_restore_continues_exactly() {
    let make = || {
        let db = common::db(1);
        for n in ["a", "b"] {
            db.execute(&format!("CREATE SOURCE {n} (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)")).unwrap();
        }
        db.execute("CREATE STREAM j AS SELECT a.k, a.v, b.v AS bv FROM a ASOF JOIN b MATCH_CONDITION(a.ts >= b.ts) ON a.k = b.k").unwrap();
        db
    };
    let x = make();
    x.writer("b").unwrap().write(common::kvt(&[(1, 10, 1000), (1, 11, 1000), (2, 20, 500)])).unwrap();
    x.writer("a").unwrap().write(common::kvt(&[(1, 1, 1500), (2, 2, 600), (3, 3, 700)])).unwrap();
    x.flush().unwrap();
    let y = make();
    y.restore_stream("j", x.snapshot_stream("j").unwrap()).unwrap();
    let (sx, sy) = (x.subscribe("j").unwrap(), y.subscribe("j").unwrap());
    for db in [&x, &y] {
        let (mut wa, mut wb) = (db.writer("a").unwrap(), db.writer("b").unwrap());
        wb.write(common::kvt(&[(1, 12, 1400)])).unwrap();
        wa.write(common::kvt(&[(1, 4, 1200)])).unwrap();
        wa.finish().unwrap();
        wb.finish().unwrap();
        db.flush().unwrap();
    }
    let (rx, ry) = (common::sorted(&common::drain(&sx)), common::sorted(&common::drain(&sy)));
    // 1.5 s takes the row at 1.4 s; 1.2 s the last pushed of the two at 1.0 s.
    assert_eq!(rx, vec!["1|1|12", "1|4|11", "2|2|20", "3|3|"]);
    assert_eq!(rx, ry);
}

/// A per-window top-N and OVER over a stream (pending rows, history, row counts) move through
/// snapshot/restore.
#[test]
fn over_snapshot_restore_continues_exactly() {
    for sql in [
        "SELECT k, v FROM (SELECT k, v, RANK() OVER (PARTITION BY window_start ORDER BY v DESC) AS r FROM TUMBLE(s, ts, INTERVAL '10' SECOND)) t WHERE r <= 2",
        "SELECT k, v, LAG(v) OVER (PARTITION BY k ORDER BY ts) AS p, ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) AS rn FROM s",
    ] {
        let make = || {
            let db = common::db(1);
            db.execute(common::KVT).unwrap();
            db.execute(&format!("CREATE STREAM o AS {sql}")).unwrap();
            db
        };
        let x = make();
        // Watermark 5 s behind: rows up to 3 s are behind it after this batch.
        x.writer("s")
            .unwrap()
            .write(common::kvt(&[(1, 5, 1000), (1, 7, 2000), (2, 1, 3000), (1, 6, 8000), (2, 9, 9000)]))
            .unwrap();
        x.flush().unwrap();
        let y = make();
        y.restore_stream("o", x.snapshot_stream("o").unwrap()).unwrap();
        let (sx, sy) = (x.subscribe("o").unwrap(), y.subscribe("o").unwrap());
        for db in [&x, &y] {
            let mut w = db.writer("s").unwrap();
            w.write(common::kvt(&[(1, 8, 9500), (2, 2, 12000)])).unwrap();
            w.finish().unwrap();
            w.flush().unwrap();
        }
        let (rx, ry) = (common::sorted(&common::drain(&sx)), common::sorted(&common::drain(&sy)));
        assert!(!rx.is_empty(), "{sql}");
        assert_eq!(rx, ry, "{sql}");
    }
}
