//! User-defined functions from Rust (issue 25): DataFusion `ScalarUDF`s and `AggregateUDF`s
//! registered in the config or on the open database, called by continuous queries (a TUMBLE
//! window) and ad-hoc SQL, compared with the same computation done in plain Rust over the same
//! rows; `SHOW FUNCTIONS`; bad functions and names; a durable database reopened with and
//! without the function its stream uses.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{KVT, drain, kvt, sorted};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, ColumnarValue, ScalarUDF, Volatility, create_udaf, create_udf,
};
use laminar_core::{Config, Database, ErrorKind};

/// `twice_plus_one(x) = x * 2 + 1` over BIGINT.
fn twice_plus_one() -> ScalarUDF {
    create_udf(
        "twice_plus_one",
        vec![DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let a = args[0].clone().into_array(1)?;
            let a = a.as_primitive::<Int64Type>();
            Ok(ColumnarValue::Array(Arc::new(a.iter().map(|v| v.map(|v| v * 2 + 1)).collect::<Int64Array>())))
        }),
    )
}

/// A scalar function that misbehaves as `how` says: "error", "short" (one row too few),
/// "type" (VARCHAR where BIGINT was promised), "panic".
fn bad(how: &'static str) -> ScalarUDF {
    create_udf(
        &format!("bad_{how}"),
        vec![DataType::Int64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let n = match &args[0] {
                ColumnarValue::Array(a) => a.len(),
                ColumnarValue::Scalar(_) => 1,
            };
            match how {
                "error" => Err(datafusion::error::DataFusionError::Execution("the model is not loaded".into())),
                "short" => {
                    Ok(ColumnarValue::Array(Arc::new(Int64Array::from_iter_values(0..n.saturating_sub(1) as i64))))
                }
                "type" => {
                    Ok(ColumnarValue::Array(Arc::new(StringArray::from_iter_values((0..n).map(|i| i.to_string())))))
                }
                _ => panic!("a bug in the user's function"),
            }
        }),
    )
}

/// `sum_sq(x)`: the sum of squares, an aggregate with a state of one BIGINT.
#[derive(Debug, Default)]
struct SumSq(i64);

impl Accumulator for SumSq {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        self.0 += values[0].as_primitive::<Int64Type>().iter().flatten().map(|v| v * v).sum::<i64>();
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        self.0 += states[0].as_primitive::<Int64Type>().iter().flatten().sum::<i64>();
        Ok(())
    }
    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Int64(Some(self.0))])
    }
    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.0)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

fn sum_sq() -> AggregateUDF {
    sum_sq_named("sum_sq")
}

/// The sum-of-squares aggregate under another name.
fn sum_sq_named(name: &str) -> AggregateUDF {
    create_udaf(
        name,
        vec![DataType::Int64],
        Arc::new(DataType::Int64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(SumSq::default()))),
        Arc::new(vec![DataType::Int64]),
    )
}

fn rows() -> Vec<(i64, i64, i64)> {
    // 600 rows, 7 keys, 1 to 60 seconds of event time, out of order within each 100.
    (0..600i64).map(|i| (i % 7, (i * 37) % 101 - 50, 1000 + ((i * 7919) % 100) * 10 + (i / 100) * 10_000)).collect()
}

const WINDOWED: &str = "CREATE STREAM w AS SELECT k, CAST(window_start AS BIGINT) AS ws, \
     SUM(twice_plus_one(v)) AS s, sum_sq(v) AS q, COUNT(*) AS n \
     FROM s GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)";

/// The windowed query, computed in plain Rust: per (key, 10 s window) the sum of v*2+1, the
/// sum of squares and the count.
fn windowed_oracle(rows: &[(i64, i64, i64)]) -> Vec<String> {
    let mut m: BTreeMap<(i64, i64), (i64, i64, i64)> = BTreeMap::new();
    for &(k, v, ts) in rows {
        let e = m.entry((k, ts / 10_000 * 10_000 * 1000)).or_default();
        e.0 += v * 2 + 1;
        e.1 += v * v;
        e.2 += 1;
    }
    let mut out: Vec<String> = m.into_iter().map(|((k, ws), (s, q, n))| format!("{k}|{ws}|{s}|{q}|{n}")).collect();
    out.sort();
    out
}

fn config_with_functions() -> Config {
    let mut c = Config::default();
    c.set("workers", "2").unwrap();
    c.register_scalar_function(twice_plus_one()).unwrap();
    c.register_aggregate_function(sum_sq()).unwrap();
    c
}

#[test]
fn udfs_in_a_tumble_window_and_in_ad_hoc_sql_equal_plain_rust() {
    let db = Database::open(":memory:", config_with_functions()).unwrap();
    db.execute(KVT).unwrap();
    db.execute(WINDOWED).unwrap();
    let sub = db.subscribe("w").unwrap();
    let rows = rows();
    let mut w = db.writer("s").unwrap();
    for chunk in rows.chunks(100) {
        w.write(kvt(chunk)).unwrap();
    }
    w.finish().unwrap();
    db.flush().unwrap();
    assert_eq!(sorted(&drain(&sub)), windowed_oracle(&rows));

    // Ad hoc, over the source's retained rows.
    let got = sorted(&db.query("SELECT k, v, twice_plus_one(v) AS t FROM s").unwrap());
    let mut want: Vec<String> = rows.iter().map(|(k, v, _)| format!("{k}|{v}|{}", v * 2 + 1)).collect();
    want.sort();
    assert_eq!(got, want);
    let got = sorted(&db.query("SELECT k, sum_sq(v) AS q FROM s GROUP BY k").unwrap());
    let mut q: BTreeMap<i64, i64> = BTreeMap::new();
    for (k, v, _) in &rows {
        *q.entry(*k).or_default() += v * v;
    }
    let mut want: Vec<String> = q.iter().map(|(k, q)| format!("{k}|{q}")).collect();
    want.sort();
    assert_eq!(got, want);

    // Registered on the open database: usable by statements from then on.
    let e = db.query("SELECT bad_error(v) FROM s").unwrap_err();
    assert!(e.message().contains("bad_error"), "{e}");
    db.register_scalar_function(bad("error")).unwrap();
    let names: Vec<String> = sorted(&db.execute("SHOW FUNCTIONS").unwrap().batches);
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[0].starts_with("bad_error|scalar|"), "{names:?}");
    assert!(names[1].starts_with("sum_sq|aggregate|"), "{names:?}");
    assert!(names[2].starts_with("twice_plus_one|scalar|"), "{names:?}");
}

#[test]
fn failing_functions_fail_their_stream_with_the_functions_message_and_the_database_goes_on() {
    let db = Database::open(":memory:", config_with_functions()).unwrap();
    db.execute(KVT).unwrap();
    for how in ["error", "short", "type", "panic"] {
        db.register_scalar_function(bad(how)).unwrap();
        db.execute(&format!("CREATE STREAM f_{how} AS SELECT k, bad_{how}(v) AS x FROM s")).unwrap();
    }
    db.execute("CREATE STREAM fine AS SELECT k, twice_plus_one(v) AS x FROM s").unwrap();
    let fine = db.subscribe("fine").unwrap();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&[(1, 2, 1000), (2, 3, 2000)])).unwrap();
    w.flush().unwrap();
    let m = db.metrics().unwrap();
    let failed = |name: &str| m.streams.iter().find(|s| s.name == name).unwrap().failed.clone();
    let expect = [
        ("error", "the model is not loaded"),
        ("short", "rows"),
        ("type", "Utf8"),
        ("panic", "a bug in the user's function"),
    ];
    for (how, says) in expect {
        let f = failed(&format!("f_{how}")).unwrap_or_else(|| panic!("f_{how} did not fail"));
        assert!(f.contains(says), "f_{how}: {f}");
    }
    assert_eq!(failed("fine"), None);
    assert_eq!(sorted(&drain(&fine)), vec!["1|5", "2|7"]);
    // Still usable: a new stream and an ad-hoc query.
    db.execute("CREATE STREAM again AS SELECT twice_plus_one(k) AS x FROM s").unwrap();
    assert_eq!(sorted(&db.query("SELECT twice_plus_one(2) AS x").unwrap()), vec!["5"]);
}

#[test]
fn names_that_sql_cannot_call_or_that_are_built_in_are_refused() {
    let mut c = Config::default();
    let same = || -> datafusion::logical_expr::ScalarFunctionImplementation {
        Arc::new(|a: &[ColumnarValue]| Ok(a[0].clone()))
    };
    let upper = create_udf("Twice", vec![DataType::Int64], DataType::Int64, Volatility::Immutable, same());
    let e = c.register_scalar_function(upper).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("lowercase"), "{e}");
    let builtin = create_udf("abs", vec![DataType::Int64], DataType::Int64, Volatility::Immutable, same());
    let e = c.register_scalar_function(builtin).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert!(e.message().contains("built-in"), "{e}");
    c.register_scalar_function(twice_plus_one()).unwrap();
    let clash = sum_sq_named("twice_plus_one");
    assert_eq!(c.register_aggregate_function(clash).unwrap_err().kind(), ErrorKind::AlreadyExists);
}

#[test]
fn a_durable_database_reopens_only_with_the_functions_its_streams_use() {
    let dir = common::tmpdir("udf-reopen");
    let path = dir.to_str().unwrap();
    let mut c = config_with_functions();
    c.set("durability", "wal").unwrap();
    let db = Database::open(path, c.clone()).unwrap();
    db.execute(KVT).unwrap();
    db.execute(WINDOWED).unwrap();
    db.execute("CREATE MATERIALIZED VIEW v AS SELECT k, twice_plus_one(v) AS x FROM s").unwrap();
    let mut w = db.writer("s").unwrap();
    w.write(kvt(&[(1, 2, 1000)])).unwrap();
    w.flush().unwrap();
    db.close();
    // Without the functions: the replay of the catalog fails, naming the function.
    let mut without = Config::default();
    without.set("durability", "wal").unwrap();
    let e = Database::open(path, without).err().expect("refused");
    assert!(e.message().contains("twice_plus_one") || e.message().contains("sum_sq"), "{e}");
    // With them: everything is back.
    let db = Database::open(path, c).unwrap();
    assert_eq!(sorted(&db.query("SELECT k, x FROM v").unwrap()), vec!["1|5"]);
    db.close();
    let _ = std::fs::remove_dir_all(&dir);
}
