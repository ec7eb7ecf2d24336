//! The catalog of a checkpoint as one Arrow batch: one row per object, in creation order
//! (sources first; a stream only reads what exists before it).

use super::*;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;

pub(super) struct Row {
    pub kind: String,
    pub name: String,
    pub sql: String,
    pub fingerprint: String,
    pub watermark: i64,
    pub rows_in: u64,
    pub batches_in: u64,
    pub rows_late: u64,
    pub rows_out: u64,
    pub batches_out: u64,
    pub late_pairs: u64,
    pub positions: Positions,
    pub history_since: Option<u64>,
    /// A failed stream's error: it stays failed after recovery (its state stopped there).
    pub failed: Option<(String, String)>,
}

pub(super) fn read(b: &RecordBatch) -> Result<Vec<Row>> {
    let col = |n: &str| b.column_by_name(n).ok_or_else(|| Error::invalid_data(format!("catalog column '{n}' missing")));
    let (kind, name, sql, fp) = (
        col("kind")?.as_string::<i32>(),
        col("name")?.as_string::<i32>(),
        col("sql")?.as_string::<i32>(),
        col("fingerprint")?.as_string::<i32>(),
    );
    let int = |n: &str| -> Result<Vec<Option<i64>>> { Ok(col(n)?.as_primitive::<Int64Type>().iter().collect()) };
    let (wm, ri, bi, rl, ro, bo, lp) = (
        int("watermark")?,
        int("rows_in")?,
        int("batches_in")?,
        int("rows_late")?,
        int("rows_out")?,
        int("batches_out")?,
        int("late_pairs")?,
    );
    // Connector positions: `positions` (partition → offset); a catalog of an older version
    // has the NEXMARK generator's event number in `position` (one partition, "0").
    let mut positions = vec![Positions::new(); b.num_rows()];
    if let Some(c) = b.column_by_name("positions") {
        let c = c.as_string::<i32>();
        for (i, p) in positions.iter_mut().enumerate() {
            if !c.is_null(i) {
                *p = connector::decode_positions(c.value(i))?;
            }
        }
    } else if b.column_by_name("position").is_some() {
        for (i, p) in int("position")?.into_iter().enumerate() {
            if let Some(p) = p {
                positions[i].insert("0".into(), p.to_string());
            }
        }
    }
    let hs = int("history_since")?;
    let (fk, fm) = (col("failed_kind")?.as_string::<i32>(), col("failed")?.as_string::<i32>());
    let u = |v: Option<i64>| v.unwrap_or(0) as u64;
    Ok((0..b.num_rows())
        .map(|i| Row {
            kind: kind.value(i).to_string(),
            name: name.value(i).to_string(),
            sql: sql.value(i).to_string(),
            fingerprint: fp.value(i).to_string(),
            watermark: wm[i].unwrap_or(NO_WATERMARK),
            rows_in: u(ri[i]),
            batches_in: u(bi[i]),
            rows_late: u(rl[i]),
            rows_out: u(ro[i]),
            batches_out: u(bo[i]),
            late_pairs: u(lp[i]),
            positions: std::mem::take(&mut positions[i]),
            history_since: hs[i].map(|p| p as u64),
            failed: (!fm.is_null(i)).then(|| (fk.value(i).to_string(), fm.value(i).to_string())),
        })
        .collect())
}

pub(super) fn batch(eng: &Engine) -> Result<RecordBatch> {
    let mut rows: Vec<Row> = vec![];
    let mut names: Vec<&String> = eng.sources.keys().collect();
    names.sort();
    for n in names {
        let s = &eng.sources[n];
        rows.push(Row {
            kind: if s.table.is_some() { "table" } else { "source" }.into(),
            name: n.clone(),
            sql: s.sql.clone(),
            fingerprint: String::new(),
            watermark: s.watermark,
            rows_in: s.rows_in,
            batches_in: s.batches_in,
            rows_late: s.rows_late,
            rows_out: 0,
            batches_out: 0,
            late_pairs: 0,
            positions: s.positions.clone(),
            history_since: None,
            failed: None,
        });
    }
    for n in &eng.order {
        let s = &eng.streams[n];
        rows.push(Row {
            kind: if s.is_late_sink {
                "late"
            } else if s.materialized {
                "view"
            } else {
                "stream"
            }
            .into(),
            name: n.clone(),
            sql: s.sql.clone(),
            fingerprint: if s.is_late_sink { String::new() } else { fingerprint(s) },
            watermark: s.watermark,
            rows_in: 0,
            batches_in: 0,
            rows_late: s.rows_late,
            rows_out: s.rows_out,
            batches_out: s.batches_out,
            late_pairs: s.late_pairs,
            positions: Positions::new(),
            history_since: s.history_since,
            failed: s.failed.as_ref().map(|e| (e.kind().name().to_string(), e.message().to_string())),
        });
    }
    // Sinks last: each reads a stream or source above it.
    for (n, k) in &eng.sinks {
        rows.push(Row {
            kind: "sink".into(),
            name: n.clone(),
            sql: k.sql.clone(),
            fingerprint: String::new(),
            watermark: NO_WATERMARK,
            rows_in: 0,
            batches_in: 0,
            rows_late: 0,
            rows_out: k.rows_out,
            batches_out: k.batches_out,
            late_pairs: 0,
            positions: Positions::new(),
            history_since: None,
            failed: None,
        });
    }
    let strs = |f: &dyn Fn(&Row) -> String| Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let ints = |f: &dyn Fn(&Row) -> Option<i64>| Arc::new(Int64Array::from_iter(rows.iter().map(f))) as ArrayRef;
    Ok(RecordBatch::try_from_iter(vec![
        ("kind", strs(&|r| r.kind.clone())),
        ("name", strs(&|r| r.name.clone())),
        ("sql", strs(&|r| r.sql.clone())),
        ("fingerprint", strs(&|r| r.fingerprint.clone())),
        ("watermark", ints(&|r| Some(r.watermark))),
        ("rows_in", ints(&|r| Some(r.rows_in as i64))),
        ("batches_in", ints(&|r| Some(r.batches_in as i64))),
        ("rows_late", ints(&|r| Some(r.rows_late as i64))),
        ("rows_out", ints(&|r| Some(r.rows_out as i64))),
        ("batches_out", ints(&|r| Some(r.batches_out as i64))),
        ("late_pairs", ints(&|r| Some(r.late_pairs as i64))),
        ("positions", strs(&|r| connector::encode_positions(&r.positions))),
        ("history_since", ints(&|r| r.history_since.map(|p| p as i64))),
        (
            "failed_kind",
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.failed.as_ref().map(|f| f.0.clone())))) as ArrayRef,
        ),
        (
            "failed",
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.failed.as_ref().map(|f| f.1.clone())))) as ArrayRef,
        ),
    ])?)
}
