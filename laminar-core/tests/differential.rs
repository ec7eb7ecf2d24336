//! Differential tests (DESIGN §8): random multi-key, out-of-order input with random batch sizes,
//! random watermark advances and rows beyond the allowed lateness; the final output of every
//! window kind × aggregate × EMIT mode must equal DataFusion batch SQL over the same rows minus
//! the (row, window) pairs the engine reported late through `LATE DATA TO`.
//!
//! Window membership for the oracle is enumerated by brute force from the window definitions;
//! sessions are computed in SQL with window functions; every aggregate is computed by DataFusion.
//! `LAMINAR_DIFF_CASES` sets the number of cases (default 1000); `LAMINAR_DIFF_SEED` replays one.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::SessionContext;
use laminar_core::arrow::array::{ArrayRef, AsArray, Int64Array, TimestampMicrosecondArray};
use laminar_core::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimestampMicrosecondType};
use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Config, Database, ManualClock, Next};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy)]
enum Win {
    Tumble(i64),
    Hop(i64, i64),
    Session(i64),
    Cumulate(i64, i64),
    None,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Emit {
    Close,
    Final,
    Update,
    Changes,
    Every,
}

const AGGS: &[(&str, bool)] = &[
    ("COUNT(*)", false),
    ("COUNT(v)", false),
    ("SUM(v)", false),
    ("AVG(v)", true),
    ("MIN(v)", false),
    ("MAX(v)", false),
    ("COUNT(DISTINCT v)", false),
    ("STDDEV(v)", true),
    ("VAR_POP(v)", true),
    ("SUM(v) FILTER (WHERE v > 50)", false),
    ("MAX(v * 2 + k)", false),
];

struct Case {
    seed: u64,
    win: Win,
    emit: Emit,
    lateness_ms: i64,
    aggs: Vec<usize>,
    workers: usize,
    having: bool,
}

/// Windows (start, end) in ms containing ts, enumerated from the definitions.
fn oracle_windows(w: Win, ts: i64) -> Vec<(i64, i64)> {
    let mut out = vec![];
    match w {
        Win::Tumble(size) => {
            for k in (ts / size - 2)..=(ts / size + 2) {
                let (s, e) = (k * size, k * size + size);
                if s <= ts && ts < e {
                    out.push((s, e));
                }
            }
        }
        Win::Hop(slide, size) => {
            for k in (ts - size) / slide - 2..=ts / slide + 2 {
                let (s, e) = (k * slide, k * slide + size);
                if s <= ts && ts < e {
                    out.push((s, e));
                }
            }
        }
        Win::Cumulate(step, max) => {
            for b in [(ts / max - 1) * max, (ts / max) * max, (ts / max + 1) * max] {
                for n in 1..=max / step {
                    if b <= ts && ts < b + n * step && ts < b + max {
                        out.push((b, b + n * step));
                    }
                }
            }
        }
        Win::Session(_) | Win::None => {}
    }
    out
}

fn gen_case(seed: u64) -> Case {
    let mut r = SmallRng::seed_from_u64(seed);
    let win = match r.random_range(0..5) {
        0 => Win::Tumble([2000, 5000, 10000][r.random_range(0..3)]),
        1 => {
            let slide = [1000, 2000, 3000][r.random_range(0..3)];
            Win::Hop(slide, slide * r.random_range(1..4) + [0, 500][r.random_range(0..2)])
        }
        2 => Win::Session([1000, 3000, 6000][r.random_range(0..3)]),
        3 => {
            let step = [1000, 2000][r.random_range(0..2)];
            Win::Cumulate(step, step * r.random_range(1..4))
        }
        _ => Win::None,
    };
    let emit = loop {
        let e = [Emit::Close, Emit::Final, Emit::Update, Emit::Changes, Emit::Every][r.random_range(0..5)];
        match (win, e) {
            (Win::Session(_), Emit::Update | Emit::Every) => continue,
            (Win::None, Emit::Close | Emit::Final) => continue,
            _ => break e,
        }
    };
    let lateness_ms = if matches!(win, Win::None) { 0 } else { [0, 0, 1000, 4000][r.random_range(0..4)] };
    let n_aggs = r.random_range(1..4);
    let mut aggs: Vec<usize> = (0..n_aggs).map(|_| r.random_range(0..AGGS.len())).collect();
    aggs.sort_unstable();
    aggs.dedup();
    Case { seed, win, emit, lateness_ms, aggs, workers: r.random_range(1..3), having: r.random_range(0..5) == 0 }
}

fn iv(ms: i64) -> String {
    format!("INTERVAL '{ms}' MILLISECOND")
}

fn run_case(c: &Case) -> Result<(), String> {
    let mut r = SmallRng::seed_from_u64(c.seed ^ 0x9e37_79b9);
    let clock = Arc::new(ManualClock::default());
    let mut cfg = Config::default();
    cfg.set("workers", &c.workers.to_string()).unwrap();
    let db = Database::open_with_clock(":memory:", cfg, clock).map_err(|e| e.to_string())?;
    db.execute("CREATE SOURCE s (rid BIGINT NOT NULL, k BIGINT NOT NULL, v BIGINT, ts TIMESTAMP NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '3' SECOND)")
        .map_err(|e| e.to_string())?;
    let agg_sql: Vec<String> = c.aggs.iter().enumerate().map(|(i, &a)| format!("{} AS a{i}", AGGS[a].0)).collect();
    let (group, windowed) = match c.win {
        Win::Tumble(s) => (format!("TUMBLE(ts, {})", iv(s)), true),
        Win::Hop(sl, sz) => (format!("HOP(ts, {}, {})", iv(sl), iv(sz)), true),
        Win::Session(g) => (format!("SESSION(ts, {})", iv(g)), true),
        Win::Cumulate(st, mx) => (format!("CUMULATE(ts, {}, {})", iv(st), iv(mx)), true),
        Win::None => (String::new(), false),
    };
    let emit = match c.emit {
        Emit::Close => "EMIT ON WINDOW CLOSE".to_string(),
        Emit::Final => "EMIT FINAL".into(),
        Emit::Update => "EMIT ON UPDATE".into(),
        Emit::Changes => "EMIT CHANGES".into(),
        Emit::Every => "EMIT EVERY INTERVAL '1' SECOND".into(),
    };
    let having = if c.having { " HAVING COUNT(*) > 1" } else { "" };
    let sql = if windowed {
        format!(
            "CREATE STREAM out AS SELECT k, window_start, window_end, {} FROM s GROUP BY k, {group}{having} {emit}{} LATE DATA TO late",
            agg_sql.join(", "),
            if c.lateness_ms > 0 { format!(" ALLOW LATENESS {}", iv(c.lateness_ms)) } else { String::new() }
        )
    } else {
        format!("CREATE STREAM out AS SELECT k, {} FROM s GROUP BY k{having} {emit}", agg_sql.join(", "))
    };
    db.execute(&sql).map_err(|e| format!("{sql}: {e}"))?;
    let sub = db.subscribe("out").map_err(|e| e.to_string())?;
    let late_sub = if windowed { Some(db.subscribe("late").map_err(|e| e.to_string())?) } else { None };
    let info = db.object("out").unwrap();
    let weighted = info.schema.fields().last().unwrap().name() == "__weight";

    // Input: time moves forward with jitter inside the watermark delay, a few rows far behind.
    let n = r.random_range(20..300);
    let keys = r.random_range(1..6);
    let mut rows = vec![];
    let mut t: i64 = 1_000_000;
    for rid in 0..n {
        t += r.random_range(0..700);
        let mut ts = t - r.random_range(0..2500);
        if r.random_range(0..25) == 0 {
            ts -= r.random_range(3000..15000); // probably beyond lateness
        }
        let v = if r.random_range(0..10) == 0 { None } else { Some(r.random_range(0..100)) };
        rows.push((rid as i64, r.random_range(0..keys) as i64, v, ts));
    }
    let mut w = db.writer("s").unwrap();
    let mut i = 0;
    while i < rows.len() {
        let m = r.random_range(1..20).min(rows.len() - i);
        let chunk = &rows[i..i + m];
        i += m;
        let b = RecordBatch::try_from_iter(vec![
            ("rid", Arc::new(Int64Array::from_iter_values(chunk.iter().map(|x| x.0))) as ArrayRef),
            ("k", Arc::new(Int64Array::from_iter_values(chunk.iter().map(|x| x.1))) as ArrayRef),
            ("v", Arc::new(Int64Array::from_iter(chunk.iter().map(|x| x.2))) as ArrayRef),
            ("ts", Arc::new(TimestampMicrosecondArray::from_iter_values(chunk.iter().map(|x| x.3 * 1000))) as ArrayRef),
        ])
        .unwrap();
        w.write(b).map_err(|e| e.to_string())?;
        if r.random_range(0..8) == 0 {
            w.watermark(t - r.random_range(0..4000)).map_err(|e| e.to_string())?;
        }
        if c.emit == Emit::Every && r.random_range(0..4) == 0 {
            db.advance_clock(Duration::from_millis(1000)).unwrap();
        }
    }
    w.finish().unwrap();
    db.advance_clock(Duration::from_millis(1000)).unwrap();
    w.flush().unwrap();

    // Engine final result.
    let mut out = vec![];
    while let Next::Batch(b) = sub.try_next().map_err(|e| e.to_string())? {
        out.push(b);
    }
    if std::env::var("LAMINAR_DIFF_DEBUG").is_ok_and(|d| d == c.seed.to_string()) {
        eprintln!("{sql}\nrows {rows:?}\nmetrics {:?}\nout:", db.metrics().unwrap().streams);
        for b in &out {
            eprintln!("{}", laminar_core::arrow::util::pretty::pretty_format_batches(std::slice::from_ref(b)).unwrap());
        }
    }
    let ncols = info.schema.fields().len() - usize::from(weighted);
    let key_cols = if windowed { 3 } else { 1 };
    let mut final_rows: HashMap<Vec<String>, i64> = HashMap::new();
    let mut upsert: HashMap<Vec<String>, Vec<String>> = HashMap::new();
    for row in common::rows(&out) {
        let vals = row[..ncols].to_vec();
        match (weighted, c.emit) {
            (true, _) => *final_rows.entry(vals).or_insert(0) += row[ncols].parse::<i64>().unwrap(),
            (false, Emit::Update | Emit::Every) => {
                upsert.insert(vals[..key_cols].to_vec(), vals);
            }
            (false, _) => *final_rows.entry(vals).or_insert(0) += 1,
        }
    }
    for (_, v) in upsert {
        *final_rows.entry(v).or_insert(0) += 1;
    }
    if final_rows.values().any(|&w| w < 0) {
        return Err("negative multiplicity in the folded changelog".into());
    }
    let mut got: Vec<Vec<String>> = vec![];
    for (r, w) in final_rows {
        for _ in 0..w {
            got.push(r.clone());
        }
    }

    // Late pairs reported by the engine.
    let mut late_pairs: HashSet<(i64, i64, i64)> = HashSet::new();
    if let Some(ls) = &late_sub {
        while let Next::Batch(b) = ls.try_next().unwrap() {
            let rid = b.column_by_name("rid").unwrap().as_primitive::<Int64Type>().clone();
            let ws = b.column_by_name("window_start").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
            let we = b.column_by_name("window_end").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
            for j in 0..b.num_rows() {
                late_pairs.insert((rid.value(j), ws.value(j) / 1000, we.value(j) / 1000));
            }
        }
    }

    // Oracle.
    let expected = oracle(c, &rows, &late_pairs, &agg_sql, having)?;
    compare(got, expected, c)
}

fn oracle(
    c: &Case,
    rows: &[(i64, i64, Option<i64>, i64)],
    late: &HashSet<(i64, i64, i64)>,
    agg_sql: &[String],
    having: &str,
) -> Result<Vec<Vec<String>>, String> {
    let ctx = SessionContext::new();
    let late_rids: HashSet<i64> = late.iter().map(|p| p.0).collect();
    let (mut rid, mut k, mut v, mut ts, mut ws, mut we) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut push = |x: &(i64, i64, Option<i64>, i64), s: i64, e: i64| {
        rid.push(x.0);
        k.push(x.1);
        v.push(x.2);
        ts.push(x.3 * 1000);
        ws.push(s * 1000);
        we.push(e * 1000);
    };
    for x in rows {
        match c.win {
            Win::Session(_) => {
                if !late_rids.contains(&x.0) {
                    push(x, 0, 0)
                }
            }
            Win::None => push(x, 0, 0),
            w => {
                for (s, e) in oracle_windows(w, x.3) {
                    if !late.contains(&(x.0, s, e)) {
                        push(x, s, e);
                    }
                }
            }
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("rid", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(laminar_core::arrow::datatypes::TimeUnit::Microsecond, None), false),
        Field::new("ws", DataType::Timestamp(laminar_core::arrow::datatypes::TimeUnit::Microsecond, None), false),
        Field::new("we", DataType::Timestamp(laminar_core::arrow::datatypes::TimeUnit::Microsecond, None), false),
    ]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(rid)),
            Arc::new(Int64Array::from(k)),
            Arc::new(Int64Array::from(v)),
            Arc::new(TimestampMicrosecondArray::from(ts)),
            Arc::new(TimestampMicrosecondArray::from(ws)),
            Arc::new(TimestampMicrosecondArray::from(we)),
        ],
    )
    .unwrap();
    ctx.register_batch("t", b).unwrap();
    let sql = match c.win {
        Win::Session(gap) => format!(
            "WITH m AS (SELECT *, CASE WHEN LAG(ts) OVER (PARTITION BY k ORDER BY ts, rid) IS NULL \
               OR ts - LAG(ts) OVER (PARTITION BY k ORDER BY ts, rid) >= {} THEN 1 ELSE 0 END AS brk FROM t), \
             n AS (SELECT *, SUM(brk) OVER (PARTITION BY k ORDER BY ts, rid ROWS UNBOUNDED PRECEDING) AS sid FROM m) \
             SELECT k, MIN(ts) AS window_start, MAX(ts) + {} AS window_end, {} FROM n GROUP BY k, sid{having}",
            iv(gap),
            iv(gap),
            agg_sql.join(", ")
        ),
        Win::None => format!("SELECT k, {} FROM t GROUP BY k{having}", agg_sql.join(", ")),
        _ => format!(
            "SELECT k, ws AS window_start, we AS window_end, {} FROM t GROUP BY k, ws, we{having}",
            agg_sql.join(", ")
        ),
    };
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let batches =
        rt.block_on(async { ctx.sql(&sql).await?.collect().await }).map_err(|e| format!("oracle {sql}: {e}"))?;
    Ok(common::rows(&batches))
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

fn compare(mut got: Vec<Vec<String>>, mut want: Vec<Vec<String>>, c: &Case) -> Result<(), String> {
    let key = |r: &Vec<String>| r.join("|");
    got.sort_by_key(key);
    want.sort_by_key(key);
    let ok = got.len() == want.len()
        && got.iter().zip(&want).all(|(g, w)| g.len() == w.len() && g.iter().zip(w).all(|(a, b)| same_value(a, b)));
    if ok {
        Ok(())
    } else {
        let show = |v: &Vec<Vec<String>>| v.iter().take(12).map(|r| r.join("|")).collect::<Vec<_>>().join("\n  ");
        Err(format!(
            "mismatch for {:?} emit {:?} lateness {}ms aggs {:?} workers {} having {}: got {} rows, want {}\n got:\n  {}\n want:\n  {}",
            c.win,
            c.emit,
            c.lateness_ms,
            c.aggs.iter().map(|&a| AGGS[a].0).collect::<Vec<_>>(),
            c.workers,
            c.having,
            got.len(),
            want.len(),
            show(&got),
            show(&want)
        ))
    }
}

#[test]
fn differential_random_cases() {
    let seeds = common::case_seeds("LAMINAR_DIFF_SEED", "LAMINAR_DIFF_CASES", 1000, 0xA5A5_0000);
    let mut failures = vec![];
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for seed in &seeds {
        let c = gen_case(*seed);
        *kinds.entry(format!("{:?}/{:?}", std::mem::discriminant(&c.win), c.emit)).or_default() += 1;
        if let Err(e) = run_case(&c) {
            failures.push(format!("seed {seed} (replay: LAMINAR_DIFF_SEED={seed}): {e}"));
        }
    }
    eprintln!("{} differential cases over {} (window kind, emit) combinations", seeds.len(), kinds.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n\n")
    );
}
