//! `UNION ALL` of streams: differential cases against DataFusion batch SQL over the same rows —
//! two and three inputs (nested or not, a source read twice) with filters and projections in each
//! branch, an aggregate above a union, a windowed aggregate (TUMBLE/HOP, EMIT ON WINDOW CLOSE or
//! CHANGES) above a union of sources whose watermarks progress differently with out-of-order and
//! late rows (windows assigned in each branch, over a union stream, or per-branch windowed
//! aggregates united), unions of changelogs (aggregates, an outer join) with an aggregate above,
//! a union as a join input — plus the watermark (the minimum of the inputs), the order of a
//! self-union, EXPLAIN, the refusals, snapshot/restore and checkpoint recovery of streams with
//! unions.
//! `LAMINAR_UNION_CASES` sets the number of random cases (default 200); `LAMINAR_UNION_SEED`
//! replays one.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use laminar_core::arrow::array::{AsArray, Int64Array, TimestampMicrosecondArray};
use laminar_core::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit, TimestampMicrosecondType};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Config, Database, ErrorKind, Next};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SOURCES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone, Copy)]
enum Win {
    Tumble(i64),
    Hop(i64, i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum WinMode {
    Tvf,
    Stream,
    Aggregates,
}

#[derive(Debug, Clone)]
enum Shape {
    /// The union itself into a view: `n` inputs (the third possibly the first source again),
    /// optionally written nested with parentheses.
    Plain { n: usize, nested: bool, self_union: bool },
    /// A non-windowed GROUP BY (EMIT CHANGES) above the union.
    AggAbove { n: usize },
    /// A windowed aggregate above the union: windows assigned in each branch (`Tvf`), over a
    /// union stream read by a second stream (`Stream`), or over a union of per-branch windowed
    /// aggregates (`Aggregates`, Nexmark q5's shape).
    Windowed { n: usize, win: Win, mode: WinMode, changes: bool },
    /// The union as an input of a join (regular or interval), on the left or the right.
    JoinAbove { bounded: bool, left: bool },
    /// Inputs that are changelogs (GROUP BY aggregates), possibly mixed with an append-only one,
    /// with an aggregate above.
    Changelogs { mixed: bool },
    /// An outer join's changelog united with an append-only source, into a view.
    OuterJoin { jt: &'static str, agg: bool },
}

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    shape: Shape,
    /// Per branch: a WHERE condition ("" for none) and the expression selected as v.
    filters: Vec<&'static str>,
    exprs: Vec<&'static str>,
    workers: usize,
}

const FILTERS: [&str; 4] = ["", "v > 20", "v IS NULL OR v < 80", "k IS NOT NULL AND k <> 1"];
const EXPRS: [&str; 4] = ["v", "v * 2", "v + k", "CAST(v AS INT)"];

fn gen_case(seed: u64) -> Case {
    let mut r = SmallRng::seed_from_u64(seed);
    let n = r.random_range(2..4);
    let shape = match r.random_range(0..10) {
        0 | 1 => Shape::Plain { n, nested: r.random_bool(0.5), self_union: r.random_bool(0.3) },
        2 => Shape::AggAbove { n },
        3..=6 => {
            let win = if r.random_bool(0.5) {
                Win::Tumble([1000, 2000, 5000][r.random_range(0..3)])
            } else {
                let slide = [1000, 2000][r.random_range(0..2)];
                Win::Hop(slide, slide * r.random_range(1..4) + [0, 500][r.random_range(0..2)])
            };
            let mode = [WinMode::Tvf, WinMode::Stream, WinMode::Aggregates][r.random_range(0..3)];
            // EMIT applies to every aggregate of a query: the inner ones of `Aggregates` close.
            Shape::Windowed { n, win, mode, changes: mode != WinMode::Aggregates && r.random_range(0..4) == 0 }
        }
        7 | 8 => Shape::Changelogs { mixed: r.random_bool(0.5) },
        9 if r.random_bool(0.5) => Shape::JoinAbove { bounded: r.random_bool(0.5), left: r.random_bool(0.5) },
        _ => Shape::OuterJoin { jt: ["LEFT", "RIGHT", "FULL"][r.random_range(0..3)], agg: r.random_bool(0.5) },
    };
    let filters = (0..3).map(|_| FILTERS[r.random_range(0..FILTERS.len())]).collect();
    let exprs = (0..3).map(|_| EXPRS[r.random_range(0..EXPRS.len())]).collect();
    Case { seed, shape, filters, exprs, workers: r.random_range(1..3) }
}

fn iv(ms: i64) -> String {
    format!("INTERVAL '{ms}' MILLISECOND")
}

fn wher(f: &str) -> String {
    if f.is_empty() { String::new() } else { format!(" WHERE {f}") }
}

/// Windows (start, end) in ms containing ts.
fn windows(w: Win, ts: i64) -> Vec<(i64, i64)> {
    let (slide, size) = match w {
        Win::Tumble(s) => (s, s),
        Win::Hop(sl, sz) => (sl, sz),
    };
    ((ts - size).div_euclid(slide) - 1..=ts.div_euclid(slide) + 1)
        .map(|k| (k * slide, k * slide + size))
        .filter(|&(s, e)| s <= ts && ts < e)
        .collect()
}

/// The branches of the union: `SELECT id, k, <expr> AS v[, ts] FROM <rel i> [WHERE …]`.
fn branches(c: &Case, n: usize, rel: &dyn Fn(usize) -> String, extra: &str) -> Vec<String> {
    (0..n).map(|i| format!("SELECT id, k, {} AS v{extra} FROM {}{}", c.exprs[i], rel(i), wher(c.filters[i]))).collect()
}

/// What the engine runs (statements, the view to read) and the oracle's query (over tables
/// a, b, c, and for windowed shapes `t`: each row with its windows, late pairs left out).
struct Sql {
    statements: Vec<String>,
    oracle: String,
    /// The stream whose late rows to collect (windowed shapes).
    late: bool,
}

fn sql_of(c: &Case) -> Sql {
    let src = |i: usize| SOURCES[i].to_string();
    match &c.shape {
        Shape::Plain { n, nested, self_union } => {
            let rel = |i: usize| if *self_union && i == 2 { "a".to_string() } else { src(i) };
            let b = branches(c, *n, &rel, "");
            let q = if *nested && *n == 3 {
                format!("{} UNION ALL ({} UNION ALL {})", b[0], b[1], b[2])
            } else {
                b.join(" UNION ALL ")
            };
            Sql { statements: vec![format!("CREATE MATERIALIZED VIEW out AS {q}")], oracle: q, late: false }
        }
        Shape::AggAbove { n } => {
            let b = branches(c, *n, &src, "");
            let q = format!(
                "SELECT k, COUNT(*) AS c, COUNT(v) AS cv, SUM(v) AS s, MIN(v) AS mn, MAX(id) AS mx FROM ({}) u GROUP BY k",
                b.join(" UNION ALL ")
            );
            Sql { statements: vec![format!("CREATE MATERIALIZED VIEW out AS {q}")], oracle: q, late: false }
        }
        Shape::Windowed { n, win, mode: WinMode::Aggregates, .. } => {
            let group = match win {
                Win::Tumble(s) => format!("TUMBLE(ts, {})", iv(*s)),
                Win::Hop(sl, sz) => format!("HOP(ts, {}, {})", iv(*sl), iv(*sz)),
            };
            let b = (0..*n)
                .map(|i| {
                    format!(
                        "SELECT k, window_start, window_end, COUNT(*) AS c, SUM({}) AS sv FROM {}{} GROUP BY k, {}",
                        c.exprs[i],
                        src(i),
                        wher(c.filters[i]),
                        group
                    )
                })
                .collect::<Vec<_>>();
            let ob = (0..*n)
                .map(|i| {
                    let f = if c.filters[i].is_empty() { String::new() } else { format!(" AND ({})", c.filters[i]) };
                    format!(
                        "SELECT k, ws, we, COUNT(*) AS c, SUM({}) AS sv FROM t WHERE src = {i}{f} GROUP BY k, ws, we",
                        c.exprs[i]
                    )
                })
                .collect::<Vec<_>>();
            let outer = "SUM(c) AS total, MAX(c) AS mx, COUNT(*) AS n, SUM(sv) AS s";
            Sql {
                statements: vec![format!(
                    "CREATE MATERIALIZED VIEW out AS SELECT window_start, window_end, {outer} FROM ({}) u GROUP BY window_start, window_end LATE DATA TO late",
                    b.join(" UNION ALL ")
                )],
                oracle: format!(
                    "SELECT ws AS window_start, we AS window_end, {outer} FROM ({}) u GROUP BY ws, we",
                    ob.join(" UNION ALL ")
                ),
                late: true,
            }
        }
        Shape::Windowed { n, win, mode, changes } => {
            let aggs = "COUNT(*) AS c, COUNT(v) AS cv, SUM(v) AS s, MAX(v) AS mx, MIN(id) AS mi";
            let emit = if *changes { "EMIT CHANGES" } else { "EMIT ON WINDOW CLOSE" };
            let oracle_branches = (0..*n)
                .map(|i| {
                    format!(
                        "SELECT id, k, {} AS v, ws, we FROM t WHERE src = {i}{}",
                        c.exprs[i],
                        if c.filters[i].is_empty() { String::new() } else { format!(" AND ({})", c.filters[i]) }
                    )
                })
                .collect::<Vec<_>>();
            let oracle = format!(
                "SELECT k, ws AS window_start, we AS window_end, {aggs} FROM ({}) u GROUP BY k, ws, we",
                oracle_branches.join(" UNION ALL ")
            );
            let group = match win {
                Win::Tumble(s) => format!("TUMBLE(ts, {})", iv(*s)),
                Win::Hop(sl, sz) => format!("HOP(ts, {}, {})", iv(*sl), iv(*sz)),
            };
            let statements = if *mode == WinMode::Tvf {
                let tvf = |i: usize| match win {
                    Win::Tumble(s) => format!("TUMBLE({}, ts, {})", src(i), iv(*s)),
                    Win::Hop(sl, sz) => format!("HOP({}, ts, {}, {})", src(i), iv(*sl), iv(*sz)),
                };
                let b = branches(c, *n, &tvf, ", window_start, window_end");
                vec![format!(
                    "CREATE MATERIALIZED VIEW out AS SELECT k, window_start, window_end, {aggs} FROM ({}) u GROUP BY k, window_start, window_end {emit} LATE DATA TO late",
                    b.join(" UNION ALL ")
                )]
            } else {
                let b = branches(c, *n, &src, ", ts");
                vec![
                    format!("CREATE STREAM u AS {}", b.join(" UNION ALL ")),
                    format!(
                        "CREATE MATERIALIZED VIEW out AS SELECT k, window_start, window_end, {aggs} FROM u GROUP BY k, {group} {emit} LATE DATA TO late"
                    ),
                ]
            };
            Sql { statements, oracle, late: true }
        }
        Shape::Changelogs { mixed } => {
            let first = if *mixed {
                format!("SELECT k AS g, 1 AS c, v AS mx FROM a{}", wher(c.filters[0]))
            } else {
                format!("SELECT k AS g, COUNT(*) AS c, MAX(v) AS mx FROM a{} GROUP BY k", wher(c.filters[0]))
            };
            let second = format!(
                "SELECT k % 3 AS g, COUNT(v) AS c, MIN({}) AS mx FROM b{} GROUP BY k % 3",
                c.exprs[1],
                wher(c.filters[1])
            );
            let q = format!(
                "SELECT g, COUNT(*) AS n, SUM(c) AS s, MIN(mx) AS mn, MAX(mx) AS mx, AVG(c) AS av FROM ({first} UNION ALL {second}) u GROUP BY g"
            );
            Sql { statements: vec![format!("CREATE MATERIALIZED VIEW out AS {q}")], oracle: q, late: false }
        }
        Shape::JoinAbove { bounded, left } => {
            let u = branches(c, 2, &src, ", ts").join(" UNION ALL ");
            let cond = if *bounded {
                format!(" AND m.ts BETWEEN u.ts - {} AND u.ts + {}", iv(1000), iv(2000))
            } else {
                String::new()
            };
            let from = if *left {
                format!("({u}) u JOIN c m ON u.k = m.k{cond}")
            } else {
                format!("c m JOIN ({u}) u ON m.k = u.k{cond}")
            };
            let q = format!("SELECT u.id, u.k, u.v, m.id AS mid, m.v AS mv FROM {from}");
            Sql { statements: vec![format!("CREATE MATERIALIZED VIEW out AS {q}")], oracle: q, late: false }
        }
        Shape::OuterJoin { jt, agg } => {
            let u = format!(
                "SELECT a.k, b.v, a.id FROM a {jt} JOIN b ON a.k = b.k UNION ALL SELECT k, {} AS v, id FROM c{}",
                c.exprs[2],
                wher(c.filters[2])
            );
            let q = if *agg {
                format!("SELECT k, COUNT(*) AS n, SUM(v) AS s, MAX(id) AS mx FROM ({u}) x GROUP BY k")
            } else {
                u
            };
            Sql { statements: vec![format!("CREATE MATERIALIZED VIEW out AS {q}")], oracle: q, late: false }
        }
    }
}

use common::{IdKvtRow as Row, id_kvt_batch as batch};

/// Runs one case; returns the rows of the view and the late pairs reported.
fn run_case(c: &Case) -> Result<(usize, usize), String> {
    let mut r = SmallRng::seed_from_u64(c.seed ^ 0x2545_f491);
    let mut cfg = Config::default();
    cfg.set("workers", &c.workers.to_string()).unwrap();
    let db = Database::open(":memory:", cfg).map_err(|e| e.to_string())?;
    for n in SOURCES {
        db.execute(&format!(
            "CREATE SOURCE {n} (id BIGINT NOT NULL, k BIGINT, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)"
        ))
        .map_err(|e| e.to_string())?;
    }
    let sql = sql_of(c);
    for st in &sql.statements {
        db.execute(st).map_err(|e| format!("{st}: {e}"))?;
    }
    let late_sub = if sql.late { Some(db.subscribe("late").map_err(|e| e.to_string())?) } else { None };

    // Per source: its own event-time progress (the sources are up to 20 s apart, so their
    // watermarks differ), rows out of order inside the watermark delay (never late for their
    // own source's watermark), and now and then a row far behind (probably late).
    let keys = r.random_range(1..6);
    let mut data: [Vec<Row>; 3] = [vec![], vec![], vec![]];
    let mut behind: HashSet<i64> = HashSet::new();
    let mut id = 0;
    for rows in data.iter_mut() {
        let n = r.random_range(0..100);
        let mut t: i64 = 1_000_000 + r.random_range(0..20_000);
        for _ in 0..n {
            t += r.random_range(0..500);
            let mut ts = t - r.random_range(0..2500);
            if r.random_range(0..20) == 0 && !matches!(c.shape, Shape::JoinAbove { .. }) {
                ts -= r.random_range(3000..15000);
                behind.insert(id);
            }
            let k = if r.random_range(0..15) == 0 { None } else { Some(r.random_range(0..keys) as i64) };
            let v = if r.random_range(0..10) == 0 { None } else { Some(r.random_range(0..100)) };
            rows.push((id, k, v, ts));
            id += 1;
        }
    }
    let mut writers: Vec<_> = SOURCES.iter().map(|n| db.writer(n).unwrap()).collect();
    let mut pos = [0usize; 3];
    let mut newest = [i64::MIN; 3];
    loop {
        let open: Vec<usize> = (0..3).filter(|&s| pos[s] < data[s].len()).collect();
        if open.is_empty() {
            break;
        }
        let s = open[r.random_range(0..open.len())];
        let m = r.random_range(1..20).min(data[s].len() - pos[s]);
        let chunk = &data[s][pos[s]..pos[s] + m];
        newest[s] = newest[s]
            .max(chunk.iter().filter(|x| !behind.contains(&x.0)).map(|x| x.3 + 2500).max().unwrap_or(i64::MIN));
        writers[s].write(batch(chunk)).map_err(|e| e.to_string())?;
        pos[s] += m;
        // An explicit watermark that keeps every later on-time row of the source on time.
        if r.random_range(0..6) == 0 && newest[s] > i64::MIN {
            writers[s].watermark(newest[s] - 2500 - 3000 - r.random_range(0..2000)).map_err(|e| e.to_string())?;
        }
    }
    for w in &mut writers {
        w.finish().map_err(|e| e.to_string())?;
    }
    db.flush().map_err(|e| e.to_string())?;
    let metrics = db.metrics().map_err(|e| e.to_string())?;
    for st in metrics.streams.iter() {
        if let Some(f) = &st.failed {
            return Err(format!("stream {} failed: {f}", st.name));
        }
    }
    let got = common::rows(&db.query("SELECT * FROM out").map_err(|e| e.to_string())?);

    let mut late_pairs: HashSet<(i64, i64, i64)> = HashSet::new();
    if let Some(ls) = &late_sub {
        while let Next::Batch(b) = ls.try_next().map_err(|e| e.to_string())? {
            let rid = b.column_by_name("id").unwrap().as_primitive::<Int64Type>().clone();
            let ws = b.column_by_name("window_start").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
            let we = b.column_by_name("window_end").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
            for j in 0..b.num_rows() {
                late_pairs.insert((rid.value(j), ws.value(j) / 1000, we.value(j) / 1000));
            }
        }
    }
    // The union's watermark is the minimum of its inputs': a row on time for its own source is
    // never late for the union.
    if let Some(p) = late_pairs.iter().find(|p| !behind.contains(&p.0)) {
        return Err(format!("row {} was reported late although it was on time for its source (pair {p:?})", p.0));
    }
    if !sql.late {
        let late: u64 = metrics.streams.iter().map(|s| s.rows_late).sum();
        if late != 0 {
            return Err(format!("{late} rows reported late without windows"));
        }
    }

    let ctx = SessionContext::new();
    for (s, n) in SOURCES.iter().enumerate() {
        let b = batch(&data[s]);
        ctx.register_table(*n, Arc::new(MemTable::try_new(b.schema(), vec![vec![b]]).unwrap())).unwrap();
    }
    if let Shape::Windowed { win, .. } = &c.shape {
        let (mut src, mut idc, mut k, mut v, mut ws, mut we) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (s, rows) in data.iter().enumerate() {
            for x in rows {
                for (a, e) in windows(*win, x.3) {
                    if !late_pairs.contains(&(x.0, a, e)) {
                        src.push(s as i64);
                        idc.push(x.0);
                        k.push(x.1);
                        v.push(x.2);
                        ws.push(a * 1000);
                        we.push(e * 1000);
                    }
                }
            }
        }
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("src", DataType::Int64, false),
            Field::new("id", DataType::Int64, false),
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Int64, true),
            Field::new("ws", ts.clone(), false),
            Field::new("we", ts, false),
        ]));
        let t = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(src)),
                Arc::new(Int64Array::from(idc)),
                Arc::new(Int64Array::from(k)),
                Arc::new(Int64Array::from(v)),
                Arc::new(TimestampMicrosecondArray::from(ws)),
                Arc::new(TimestampMicrosecondArray::from(we)),
            ],
        )
        .unwrap();
        ctx.register_batch("t", t).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let want = rt
        .block_on(async { ctx.sql(&sql.oracle).await?.collect().await })
        .map_err(|e| format!("oracle {}: {e}", sql.oracle))?;
    let n = got.len();
    compare(got, common::rows(&want)).map_err(|e| format!("{}\n{e}", sql.statements.join(";\n")))?;
    Ok((n, late_pairs.len()))
}

fn same_value(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-300),
        _ => false,
    }
}

fn compare(mut got: Vec<Vec<String>>, mut want: Vec<Vec<String>>) -> Result<(), String> {
    let key = |r: &Vec<String>| r.join("|");
    got.sort_by_key(key);
    want.sort_by_key(key);
    let ok = got.len() == want.len()
        && got.iter().zip(&want).all(|(g, w)| g.len() == w.len() && g.iter().zip(w).all(|(a, b)| same_value(a, b)));
    if ok {
        return Ok(());
    }
    let (g, w): (Vec<String>, Vec<String>) = (got.iter().map(key).collect(), want.iter().map(key).collect());
    Err(format!("got {} rows, want {}: {}", got.len(), want.len(), common::difference(&g, &w)))
}

#[test]
fn union_differential_random_cases() {
    let seeds = common::case_seeds("LAMINAR_UNION_SEED", "LAMINAR_UNION_CASES", 200, 0x0A11_0000);
    let mut failures = vec![];
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let (mut rows, mut late) = (0, 0);
    for seed in &seeds {
        let c = gen_case(*seed);
        let shape = format!("{:?}", c.shape).split([' ', '{']).next().unwrap().to_string();
        *kinds.entry(shape).or_default() += 1;
        match run_case(&c) {
            Ok((n, l)) => {
                rows += n;
                late += l;
            }
            Err(e) => failures.push(format!("seed {seed} (replay: LAMINAR_UNION_SEED={seed}) {c:?}: {e}")),
        }
    }
    let mut k: Vec<_> = kinds.into_iter().collect();
    k.sort();
    eprintln!("{} union cases: {k:?}; {rows} result rows, {late} late pairs", seeds.len());
    if seeds.len() >= 50 {
        assert!(rows > 0 && late > 0, "the cases exercise results and late rows: {rows} rows, {late} late pairs");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.iter().take(4).cloned().collect::<Vec<_>>().join("\n\n")
    );
}

fn two_sources(db: &Database, extra: &str) {
    for n in ["a", "b"] {
        db.execute(&format!("CREATE SOURCE {n} (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND){extra}")).unwrap();
    }
}

fn plan(db: &Database, sql: &str) -> String {
    common::rows(&db.execute(&format!("EXPLAIN CREATE STREAM x AS {sql}")).unwrap().batches)
        .into_iter()
        .map(|r| r[0].clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A self-union passes each batch once per input, in input order: every row twice.
#[test]
fn self_union_counts_rows_twice_in_order() {
    let db = common::db(1);
    db.execute(common::KVT).unwrap();
    db.execute("CREATE STREAM d AS SELECT k, v, 1 AS branch FROM s UNION ALL SELECT k, v, 2 AS branch FROM s").unwrap();
    let sub = db.subscribe("d").unwrap();
    let mut w = db.writer("s").unwrap();
    w.write(common::kvt(&[(1, 10, 0), (2, 20, 0)])).unwrap();
    w.flush().unwrap();
    let rows: Vec<String> = common::rows(&common::drain(&sub)).into_iter().map(|r| r.join("|")).collect();
    assert_eq!(rows, vec!["1|10|1", "2|20|1", "1|10|2", "2|20|2"]);
    db.execute("CREATE MATERIALIZED VIEW n AS SELECT k, COUNT(*) AS c FROM (SELECT k FROM s UNION ALL SELECT k FROM s) u GROUP BY k").unwrap();
    w.write(common::kvt(&[(1, 1, 0), (1, 2, 0), (3, 3, 0)])).unwrap();
    w.flush().unwrap();
    assert_eq!(common::sorted(&db.query("SELECT * FROM n").unwrap()), vec!["1|4", "3|2"]);
}

/// The union's watermark is the minimum of its inputs': a window above it closes only when the
/// slower input passes its end; an input with no watermark yet holds it back; an idle source
/// stops holding it back.
#[test]
fn union_watermark_is_the_minimum_of_its_inputs() {
    let clock = Arc::new(laminar_core::ManualClock::default());
    let db = Database::open_with_clock(":memory:", Config::default(), clock).unwrap();
    db.execute("CREATE SOURCE a (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)").unwrap();
    db.execute("CREATE SOURCE b (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (idle_timeout = '5s')").unwrap();
    db.execute("CREATE STREAM u AS SELECT k, v, ts FROM a UNION ALL SELECT k, v, ts FROM b").unwrap();
    db.execute("CREATE STREAM w AS SELECT k, SUM(v) AS s, window_start FROM u GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND) EMIT ON WINDOW CLOSE").unwrap();
    let sub = db.subscribe("w").unwrap();
    let (mut wa, mut wb) = (db.writer("a").unwrap(), db.writer("b").unwrap());
    wa.write(common::kvt(&[(1, 1, 1000), (1, 2, 30_000)])).unwrap(); // a's watermark: 29 s
    db.flush().unwrap();
    assert!(common::drain(&sub).is_empty(), "b has no watermark yet: it holds the union back");
    wb.write(common::kvt(&[(1, 10, 5000)])).unwrap(); // b's watermark: 4 s
    db.flush().unwrap();
    assert!(common::drain(&sub).is_empty(), "b's watermark (4 s) does not close [0, 10)");
    let m = db.metrics().unwrap();
    assert_eq!(m.streams.iter().find(|s| s.name == "u").unwrap().watermark_ms, Some(4000));
    wb.write(common::kvt(&[(2, 20, 12_000)])).unwrap(); // b's watermark: 11 s
    db.flush().unwrap();
    assert_eq!(common::sorted(&common::drain(&sub)), vec!["1|11|1970-01-01T00:00:00"]);
    // b goes idle: a's watermark (29 s) closes [10, 20) and [20, 30) is still open.
    db.advance_clock(std::time::Duration::from_secs(6)).unwrap();
    db.flush().unwrap();
    assert_eq!(common::sorted(&common::drain(&sub)), vec!["2|20|1970-01-01T00:00:10"]);
    let m = db.metrics().unwrap();
    assert_eq!(m.streams.iter().find(|s| s.name == "w").unwrap().watermark_ms, Some(29_000));
}

/// EXPLAIN shows the union, its inputs' kinds and its own, with each input's plan below it.
#[test]
fn explain_shows_the_union_and_its_inputs() {
    let db = common::db(1);
    two_sources(&db, "");
    db.execute("CREATE SOURCE c (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL)").unwrap();
    let p = plan(&db, "SELECT k, v FROM a WHERE v > 1 UNION ALL SELECT k, v * 2 FROM b UNION ALL SELECT k, v FROM c");
    assert!(p.contains("Stream x [append-only]"), "{p}");
    assert!(p.contains("UnionAll: 3 inputs (append-only, append-only, append-only) → append-only"), "{p}");
    for n in ["a", "b", "c"] {
        assert!(p.contains(&format!("Input: {n}")), "{p}");
    }
    let p = plan(
        &db,
        "SELECT k, COUNT(*) AS n FROM (SELECT k, v FROM a UNION ALL SELECT k, MAX(v) FROM b GROUP BY k) u GROUP BY k",
    );
    assert!(p.contains("UnionAll: 2 inputs (append-only, changelog) → changelog"), "{p}");
    assert!(p.contains("RetractingAggregate"), "an aggregate over the union's changelog takes retractions: {p}");
    let lines: Vec<&str> = p.lines().collect();
    let at = lines.iter().position(|l| l.contains("UnionAll")).unwrap();
    let indent = |l: &str| l.len() - l.trim_start().len();
    assert!(lines[at + 1..].iter().any(|l| l.contains("Input: a") && indent(l) > indent(lines[at])), "{p}");
}

/// Types are coerced across the inputs (names come from the first); the union's output keeps
/// the first input's names. UNION without ALL is DISTINCT over UNION ALL.
#[test]
fn union_coerces_types_and_union_distinct_deduplicates() {
    let db = common::db(1);
    two_sources(&db, "");
    db.execute("CREATE MATERIALIZED VIEW m AS SELECT k, CAST(v AS INT) AS x FROM a UNION ALL SELECT k, v AS y FROM b")
        .unwrap();
    let info = db.object("m").unwrap();
    assert_eq!(info.schema.field(1).name(), "x");
    assert_eq!(info.schema.field(1).data_type(), &DataType::Int64);
    db.execute("CREATE MATERIALIZED VIEW d AS SELECT k FROM a UNION SELECT k FROM b").unwrap();
    db.writer("a").unwrap().write(common::kvt(&[(1, 5, 0), (2, 6, 0), (1, 7, 0)])).unwrap();
    db.writer("b").unwrap().write(common::kvt(&[(2, 7_000_000_000, 0), (3, 8, 0)])).unwrap();
    db.flush().unwrap();
    assert_eq!(common::sorted(&db.query("SELECT * FROM m").unwrap()), vec!["1|5", "1|7", "2|6", "2|7000000000", "3|8"]);
    assert_eq!(common::sorted(&db.query("SELECT * FROM d").unwrap()), vec!["1", "2", "3"]);
}

/// Refusals: an upsert input (NOT_IMPLEMENTED, says to emit CHANGES); inputs of different widths;
/// LATE DATA TO over windowed inputs of different shapes; unaggregated session windows.
#[test]
fn union_refuses_upsert_inputs_clearly() {
    let db = common::db(1);
    two_sources(&db, "");
    db.execute("CREATE STREAM up AS SELECT k, COUNT(*) AS n FROM a GROUP BY k EMIT ON UPDATE").unwrap();
    let e = db.execute("CREATE STREAM x AS SELECT k, n FROM up UNION ALL SELECT k, v FROM b").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotImplemented, "{e}");
    assert!(e.message().contains("upsert") && e.message().contains("CHANGES"), "{e}");
    let e = db.execute("CREATE STREAM x AS SELECT k, v FROM a UNION ALL SELECT k FROM b").unwrap_err();
    assert_ne!(e.kind(), ErrorKind::Internal, "{e}");
    // Late rows of windowed inputs go to one stream: they must have one shape.
    db.execute("CREATE SOURCE c (k BIGINT NOT NULL, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts)").unwrap();
    let q = "SELECT k, window_start, COUNT(*) AS n FROM (SELECT k, window_start, window_end FROM TUMBLE(a, ts, INTERVAL '1' SECOND) UNION ALL SELECT k, window_start, window_end FROM TUMBLE(c, ts, INTERVAL '1' SECOND)) u GROUP BY k, window_start, window_end";
    let e = db.execute(&format!("CREATE STREAM x AS {q} LATE DATA TO late")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Plan, "{e}");
    assert!(e.message().contains("same columns"), "{e}");
    db.execute(&format!("CREATE STREAM x AS {q}")).unwrap();
    // A session window's bounds are known only after its aggregate.
    let e = db
        .execute("CREATE STREAM y AS SELECT k, window_start FROM SESSION(a, ts, INTERVAL '1' SECOND) UNION ALL SELECT k, window_start FROM SESSION(b, ts, INTERVAL '1' SECOND)")
        .unwrap_err();
    assert!(e.message().contains("session window bounds"), "{e}");
}

/// A stream with a union between stateful operators (windows below, a changelog aggregate
/// above) moves through snapshot/restore: the restored database continues exactly.
#[test]
fn union_snapshot_restore_continues_exactly() {
    let sqls = [
        "SELECT k, COUNT(*) AS n, SUM(s) AS t FROM (SELECT k, SUM(v) AS s FROM a GROUP BY k UNION ALL SELECT k, v FROM b) u GROUP BY k",
        "SELECT k, window_start, COUNT(*) AS n, MAX(v) AS mx FROM (SELECT k, v, window_start, window_end FROM TUMBLE(a, ts, INTERVAL '2' SECOND) UNION ALL SELECT k, v, window_start, window_end FROM TUMBLE(b, ts, INTERVAL '2' SECOND)) u GROUP BY k, window_start, window_end",
    ];
    for sql in sqls {
        let make = || {
            let db = common::db(1);
            two_sources(&db, "");
            db.execute(&format!("CREATE STREAM j AS {sql}")).unwrap();
            db
        };
        let x = make();
        x.writer("a").unwrap().write(common::kvt(&[(1, 1, 1000), (2, 2, 2000), (1, 3, 3000)])).unwrap();
        x.writer("b").unwrap().write(common::kvt(&[(1, 10, 1500), (2, 20, 2500)])).unwrap();
        x.flush().unwrap();
        let y = make();
        y.restore_stream("j", x.snapshot_stream("j").unwrap()).unwrap();
        let (sx, sy) = (x.subscribe("j").unwrap(), y.subscribe("j").unwrap());
        for db in [&x, &y] {
            let (mut wa, mut wb) = (db.writer("a").unwrap(), db.writer("b").unwrap());
            wa.write(common::kvt(&[(1, 4, 3500), (3, 5, 6000)])).unwrap();
            wb.write(common::kvt(&[(1, 30, 3900), (2, 40, 7000)])).unwrap();
            wa.finish().unwrap();
            wb.finish().unwrap();
            db.flush().unwrap();
        }
        let (rx, ry) = (common::sorted(&common::drain(&sx)), common::sorted(&common::drain(&sy)));
        assert!(!rx.is_empty(), "{sql}");
        assert_eq!(rx, ry, "{sql}");
    }
}

const DURABLE_DDL: &[&str] = &[
    "CREATE SOURCE a (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
    "CREATE SOURCE b (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)",
    // Windows assigned below the union, a windowed aggregate above it.
    "CREATE MATERIALIZED VIEW w AS SELECT k, window_start, COUNT(*) AS n, SUM(v) AS s FROM (SELECT k, v, window_start, window_end FROM TUMBLE(a, ts, INTERVAL '2' SECOND) UNION ALL SELECT k, v * 10, window_start, window_end FROM TUMBLE(b, ts, INTERVAL '2' SECOND)) u GROUP BY k, window_start, window_end",
    // A changelog input (an aggregate) and an append-only one, an aggregate over changelogs above.
    "CREATE MATERIALIZED VIEW g AS SELECT k, COUNT(*) AS n, SUM(s) AS t, MAX(s) AS mx FROM (SELECT k, SUM(v) AS s FROM a GROUP BY k UNION ALL SELECT k, v FROM b WHERE v % 2 = 0) u GROUP BY k",
    // A union stream read by a windowed view.
    "CREATE STREAM un AS SELECT k, v, ts FROM a UNION ALL SELECT k, v, ts FROM b",
    "CREATE MATERIALIZED VIEW h AS SELECT k, window_start, MAX(v) AS mx, COUNT(*) AS n FROM un GROUP BY k, HOP(ts, INTERVAL '1' SECOND, INTERVAL '3' SECOND)",
];

/// Batch `i` of source `s` (b runs 2 s behind a in event time; both in order, so nothing is late).
fn durable_batch(s: usize, i: i64) -> RecordBatch {
    let rows: Vec<(i64, i64, i64)> = (0..10)
        .map(
            |j| if s == 0 { (j % 5, i * 10 + j, i * 1000 + j * 100) } else { (j % 3, i + j, i * 1000 - 2000 + j * 90) },
        )
        .collect();
    common::kvt(&rows.iter().map(|r| (r.0, r.1, r.2.max(0))).collect::<Vec<_>>())
}

fn durable_push(db: &Database, from: i64, to: i64) {
    let (mut wa, mut wb) = (db.writer("a").unwrap(), db.writer("b").unwrap());
    for i in from..to {
        wa.write(durable_batch(0, i)).unwrap();
        wb.write(durable_batch(1, i)).unwrap();
    }
    db.flush().unwrap();
}

fn durable_views(db: &Database) -> Vec<Vec<String>> {
    ["w", "g", "h"].iter().map(|v| common::sorted(&db.query(&format!("SELECT * FROM {v}")).unwrap())).collect()
}

fn durable_finish(db: &Database) {
    db.writer("a").unwrap().finish().unwrap();
    db.writer("b").unwrap().finish().unwrap();
    db.flush().unwrap();
}

/// A database whose streams have unions (stateful operators below and above them) checkpoints and
/// recovers: after a crash its views are those at the checkpoint (durability 'checkpoint') or at
/// the crash (`wal`), and the rest of the input brings them to the uninterrupted run's result.
#[test]
fn streams_with_unions_checkpoint_and_recover_exactly() {
    const N: i64 = 12;
    let reference = {
        let db = common::db(2);
        for d in DURABLE_DDL {
            db.execute(d).unwrap();
        }
        durable_push(&db, 0, N);
        durable_finish(&db);
        durable_views(&db)
    };
    assert!(reference.iter().all(|v| !v.is_empty()));
    for level in ["wal", "checkpoint"] {
        let dir = common::tmpdir(&format!("union-{level}"));
        let open = || {
            let mut c = Config::default();
            c.set("durability", level).unwrap();
            c.set("checkpoint_interval", "0").unwrap();
            c.set("workers", "2").unwrap();
            Database::open(dir.to_str().unwrap(), c).unwrap()
        };
        let db = open();
        for d in DURABLE_DDL {
            db.execute(d).unwrap();
        }
        durable_push(&db, 0, 5);
        db.checkpoint().unwrap();
        let at_checkpoint = durable_views(&db);
        durable_push(&db, 5, 8);
        let before = durable_views(&db);
        db.close_abruptly();

        let db = open();
        let info = db.recovery().unwrap();
        assert!(info.warnings.is_empty(), "{level}: {info:?}");
        let resumed = if level == "wal" {
            assert_eq!(durable_views(&db), before, "{level}: after recovery");
            8
        } else {
            assert_eq!(durable_views(&db), at_checkpoint, "{level}: after recovery");
            5
        };
        durable_push(&db, resumed, N);
        durable_finish(&db);
        assert_eq!(durable_views(&db), reference, "{level}: at the end");
        db.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A table's changelog (upserts retract the old row, deletes retract) united with a source.
#[test]
fn union_of_a_table_and_a_source() {
    let db = common::db(1);
    db.execute("CREATE SOURCE s (k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL)").unwrap();
    db.execute("CREATE TABLE t (k BIGINT PRIMARY KEY, v BIGINT)").unwrap();
    db.execute("CREATE MATERIALIZED VIEW m AS SELECT k, v FROM t UNION ALL SELECT k, v FROM s WHERE v > 0").unwrap();
    db.execute("CREATE MATERIALIZED VIEW n AS SELECT k, COUNT(*) AS c, SUM(v) AS sv FROM (SELECT k, v FROM t UNION ALL SELECT k, v FROM s) u GROUP BY k").unwrap();
    db.execute("INSERT INTO t VALUES (1, 10), (2, 20)").unwrap();
    db.writer("s").unwrap().write(common::kvt(&[(1, 5, 0), (3, 0, 0)])).unwrap();
    db.execute("INSERT INTO t VALUES (1, 11)").unwrap();
    db.execute("DELETE FROM t WHERE k = 2").unwrap();
    db.flush().unwrap();
    assert_eq!(common::sorted(&db.query("SELECT * FROM m").unwrap()), vec!["1|11", "1|5"]);
    assert_eq!(common::sorted(&db.query("SELECT * FROM n").unwrap()), vec!["1|2|16", "3|1|0"]);
}
