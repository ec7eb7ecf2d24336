//! ASOF join (DESIGN §3): `l ASOF JOIN r MATCH_CONDITION(l.ts >= r.ts) ON l.k = r.k` — each
//! left row with the right row of its key closest in time on the side the condition allows
//! (`>=`/`>`: the latest at or before; `<=`/`<`: the earliest at or after; `NEAREST(l.ts, r.ts)`:
//! the closest either way, ties to the earlier). Every left row is kept, with NULLs when nothing
//! matches, and is emitted once the watermark has passed the times that decide its match, so the
//! output is final and append-only. Among right rows with equal times the one pushed last wins.
//! Further `ON` conditions (a tolerance such as `l.ts - r.ts <= INTERVAL '5' SECOND`) apply to the
//! chosen row: when it fails them, the left row gets NULLs.
//!
//! State: left rows waiting for the watermark, and per key the right rows that a future or waiting
//! left row can still choose (rows behind both the watermark and the oldest waiting left row are
//! dropped, except the latest per key for the "at or before" and nearest forms). Rows of either
//! side behind the watermark when they arrive are late: dropped and counted.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashMap;

use super::window::{TimeScale, event_times};
use super::{NO_WATERMARK, OpCtx, Operator};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AsofOp {
    /// right time ≤ left time
    Ge,
    /// right time < left time
    Gt,
    /// right time ≥ left time
    Le,
    /// right time > left time
    Lt,
    Nearest,
}

impl AsofOp {
    fn text(self) -> &'static str {
        match self {
            AsofOp::Ge => "l.t >= r.t",
            AsofOp::Gt => "l.t > r.t",
            AsofOp::Le => "l.t <= r.t",
            AsofOp::Lt => "l.t < r.t",
            AsofOp::Nearest => "NEAREST",
        }
    }
    fn needs_before(self) -> bool {
        matches!(self, AsofOp::Ge | AsofOp::Gt | AsofOp::Nearest)
    }
    fn needs_after(self) -> bool {
        matches!(self, AsofOp::Le | AsofOp::Lt | AsofOp::Nearest)
    }
}

pub(crate) struct AsofSide {
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub time: Arc<dyn PhysicalExpr>,
    pub scale: TimeScale,
    pub schema: SchemaRef,
}

type Key = Box<[u8]>;

pub(crate) struct AsofJoin {
    op: AsofOp,
    sides: [AsofSide; 2],
    key_types: Vec<DataType>,
    key_conv: RowConverter,
    row_conv: [RowConverter; 2],
    filter: Option<Arc<dyn PhysicalExpr>>,
    joined_schema: SchemaRef,
    /// Per key, right rows by (time µs, arrival sequence).
    right: HashMap<Key, BTreeMap<(i64, u64), OwnedRow>>,
    right_rows: usize,
    /// Waiting left rows by (time µs, arrival sequence): key (None: NULL key) and row.
    pending: BTreeMap<(i64, u64), (Option<Key>, OwnedRow)>,
    seq: u64,
    bytes: usize,
    rows_at_last_sweep: usize,
    /// Temporal join: left rows without a version are dropped (INNER).
    inner: bool,
    /// The right input is a table's changelog: its upserts (+1 rows) are versions; retractions
    /// are not (a version stays valid until the next one).
    right_weighted: bool,
    temporal: bool,
}

impl AsofJoin {
    pub(crate) fn try_new(
        op: AsofOp,
        left: AsofSide,
        right: AsofSide,
        key_types: Vec<DataType>,
        filter: Option<Arc<dyn PhysicalExpr>>,
        joined_schema: SchemaRef,
    ) -> Result<AsofJoin> {
        let conv = |s: &SchemaRef| {
            RowConverter::new(s.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())
        };
        Ok(AsofJoin {
            op,
            key_conv: RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())?,
            row_conv: [conv(&left.schema)?, conv(&right.schema)?],
            sides: [left, right],
            key_types,
            filter,
            joined_schema,
            right: HashMap::new(),
            right_rows: 0,
            pending: BTreeMap::new(),
            seq: 0,
            bytes: 0,
            rows_at_last_sweep: 0,
            inner: false,
            right_weighted: false,
            temporal: false,
        })
    }

    /// Makes this a temporal join (`FOR SYSTEM_TIME AS OF l.ts`) against a table's versions.
    pub(crate) fn temporal(&mut self, inner: bool, right_weighted: bool) {
        self.temporal = true;
        self.inner = inner;
        self.right_weighted = right_weighted;
    }

    fn keys(&self, s: usize, b: &RecordBatch) -> Result<(Rows, Vec<bool>)> {
        super::join::encode_keys(&self.key_conv, &self.sides[s].keys, &self.key_types, b)
    }

    fn times(&self, s: usize, b: &RecordBatch) -> Result<Vec<Option<i64>>> {
        let a = self.sides[s].time.evaluate(b)?.into_array(b.num_rows())?;
        let (t, nulls) = event_times(&a, self.sides[s].scale)?;
        Ok(t.into_iter()
            .enumerate()
            .map(|(i, v)| if nulls.as_ref().is_none_or(|nb| nb.is_valid(i)) { Some(v) } else { None })
            .collect())
    }

    /// The right row a left row at `lt` matches among `rows`, if any.
    fn choose(op: AsofOp, rows: &BTreeMap<(i64, u64), OwnedRow>, lt: i64) -> Option<(i64, u64)> {
        let before = |strict: bool| {
            let upper = if strict { lt.checked_sub(1)? } else { lt };
            rows.range(..=(upper, u64::MAX)).next_back().map(|(k, _)| *k)
        };
        let after = |strict: bool| {
            let lower = if strict { lt.checked_add(1)? } else { lt };
            let first = rows.range((lower, 0)..).next().map(|(k, _)| k.0)?;
            // Equal times: the row pushed last wins.
            rows.range((first, 0)..=(first, u64::MAX)).next_back().map(|(k, _)| *k)
        };
        match op {
            AsofOp::Ge => before(false),
            AsofOp::Gt => before(true),
            AsofOp::Le => after(false),
            AsofOp::Lt => after(true),
            AsofOp::Nearest => match (before(false), after(false)) {
                (Some(b), Some(a)) => Some(if (lt - b.0) <= (a.0 - lt) { b } else { a }),
                (b, a) => b.or(a),
            },
        }
    }

    /// Whether the match of a left row at `lt` with key `key` can no longer change.
    fn settled(&self, key: Option<&Key>, lt: i64, wm: i64) -> bool {
        if wm <= lt {
            return false; // right rows at lt may still come
        }
        if !self.op.needs_after() || wm == i64::MAX {
            return true;
        }
        // The earliest right row after lt must be behind the watermark (later rows come after it).
        let Some(rows) = key.and_then(|k| self.right.get(k)) else { return false };
        let lower = if self.op == AsofOp::Lt { lt.saturating_add(1) } else { lt };
        rows.range((lower, 0)..).next().is_some_and(|(k, _)| k.0 < wm)
    }

    fn emit(&mut self, ready: Vec<((i64, u64), Option<Key>, OwnedRow)>) -> Result<Vec<RecordBatch>> {
        if ready.is_empty() {
            return Ok(vec![]);
        }
        let mut right_rows: Vec<OwnedRow> = vec![];
        let mut right_idx: Vec<Option<u32>> = vec![];
        for ((lt, _), key, _) in &ready {
            let m = key
                .as_ref()
                .and_then(|k| self.right.get(k))
                .and_then(|rows| Self::choose(self.op, rows, *lt).map(|c| rows[&c].clone()));
            match m {
                Some(r) => {
                    right_idx.push(Some(right_rows.len() as u32));
                    right_rows.push(r);
                }
                None => right_idx.push(None),
            }
        }
        let left_cols = self.row_conv[0].convert_rows(ready.iter().map(|(_, _, r)| r.row()))?;
        let right_base: Vec<ArrayRef> = if right_rows.is_empty() {
            self.sides[1]
                .schema
                .fields()
                .iter()
                .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), 1))
                .collect()
        } else {
            self.row_conv[1].convert_rows(right_rows.iter().map(|r| r.row()))?
        };
        let build = |idx: &[Option<u32>]| -> Result<RecordBatch> {
            let ix = UInt32Array::from(idx.to_vec());
            let mut cols = left_cols.clone();
            for c in &right_base {
                cols.push(take(c.as_ref(), &ix, None)?);
            }
            Ok(RecordBatch::try_new_with_options(
                self.joined_schema.clone(),
                cols,
                &RecordBatchOptions::new().with_row_count(Some(idx.len())),
            )?)
        };
        let mut out = build(&right_idx)?;
        if let Some(f) = &self.filter {
            let v = f.evaluate(&out)?.into_array(out.num_rows())?;
            let m = v.as_boolean_opt().ok_or_else(|| Error::plan("ASOF join condition is not BOOLEAN"))?;
            let m: BooleanArray = crate::util::null_as_false(m);
            if m.true_count() < out.num_rows() {
                for (i, r) in right_idx.iter_mut().enumerate() {
                    if !m.value(i) {
                        *r = None;
                    }
                }
                out = build(&right_idx)?;
            }
        }
        if self.inner {
            let keep = BooleanArray::from(right_idx.iter().map(|r| r.is_some()).collect::<Vec<_>>());
            out = datafusion::arrow::compute::filter_record_batch(&out, &keep)?;
            if out.num_rows() == 0 {
                return Ok(vec![]);
            }
        }
        Ok(vec![out])
    }

    /// Drops right rows no left row can choose any more.
    fn sweep(&mut self, wm: i64) {
        let oldest_wait = self.pending.keys().next().map(|k| k.0).unwrap_or(i64::MAX);
        let horizon = wm.min(oldest_wait);
        let keep_before = self.op.needs_before();
        let mut removed = 0;
        let mut bytes = 0;
        self.right.retain(|_, rows| {
            // Everything strictly before the horizon, except (for before/nearest) the last of it.
            let old: Vec<(i64, u64)> = rows.range(..(horizon, 0)).map(|(k, _)| *k).collect();
            let n = old.len().saturating_sub(usize::from(keep_before));
            for k in &old[..n] {
                if let Some(r) = rows.remove(k) {
                    bytes += r.as_ref().len() + 64;
                }
            }
            removed += n;
            !rows.is_empty()
        });
        self.right_rows -= removed;
        self.bytes = self.bytes.saturating_sub(bytes);
        self.rows_at_last_sweep = self.right_rows;
    }
}

impl Operator for AsofJoin {
    fn explain(&self) -> String {
        if self.temporal {
            return format!(
                "TemporalJoin {} on {} keys{}: each left row waits for the watermark, then takes the version valid at its time; versions kept while a waiting or future left row can choose them (and the latest behind the watermark per key) → append-only",
                if self.inner { "INNER" } else { "LEFT" },
                self.key_types.len(),
                self.filter.as_ref().map(|f| format!(", then {f}")).unwrap_or_default(),
            );
        }
        format!(
            "AsofJoin ({}) on {} keys{}: left rows wait for the watermark; right rows kept while a waiting or future left row can choose them{} → append-only",
            self.op.text(),
            self.key_types.len(),
            self.filter.as_ref().map(|f| format!(", then {f}")).unwrap_or_default(),
            if self.op.needs_before() { " (and the latest behind the watermark per key)" } else { "" }
        )
    }

    fn process_batch(&mut self, _batch: RecordBatch, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        Err(Error::internal("an ASOF join is fed through its sides"))
    }

    fn process_side(&mut self, side: usize, batch: RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let batch = if side == 1 && self.right_weighted {
            // A table's changelog: its new rows are the versions.
            let nlog = batch.num_columns() - 1;
            let w = batch.column(nlog).as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let keep = BooleanArray::from(w.values().iter().map(|&x| x > 0).collect::<Vec<_>>());
            datafusion::arrow::compute::filter_record_batch(&batch.project(&(0..nlog).collect::<Vec<_>>())?, &keep)?
        } else {
            batch
        };
        let n = batch.num_rows();
        let (keys, valid) = self.keys(side, &batch)?;
        let times = self.times(side, &batch)?;
        let rows = self.row_conv[side].convert_columns(batch.columns())?;
        let wm = ctx.watermark;
        let mut immediate = vec![];
        for i in 0..n {
            let late = match times[i] {
                Some(t) => wm != NO_WATERMARK && t < wm,
                None => side == 1,
            };
            if late {
                ctx.late.rows += 1;
                continue;
            }
            self.seq += 1;
            let row = rows.row(i).owned();
            if side == 0 {
                let key: Option<Key> = valid[i].then(|| Box::from(keys.row(i).as_ref()));
                match times[i] {
                    // A left row without a time has nothing to match: out at once, with NULLs.
                    None => immediate.push(((i64::MIN, self.seq), None, row)),
                    Some(t) => {
                        self.bytes += row.as_ref().len() + 64;
                        self.pending.insert((t, self.seq), (key, row));
                    }
                }
            } else {
                if !valid[i] {
                    continue; // a NULL key matches nothing
                }
                let t = times[i].expect("checked");
                self.bytes += row.as_ref().len() + 64;
                let k = keys.row(i);
                match self.right.get_mut(k.as_ref()) {
                    Some(m) => {
                        m.insert((t, self.seq), row);
                    }
                    None => {
                        let mut m = BTreeMap::new();
                        m.insert((t, self.seq), row);
                        self.right.insert(Box::from(k.as_ref()), m);
                    }
                }
                self.right_rows += 1;
            }
        }
        self.emit(immediate)
    }

    fn on_watermark(&mut self, wm: i64, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let candidates: Vec<(i64, u64)> = self.pending.range(..(wm, 0)).map(|(k, _)| *k).collect();
        let mut ready = vec![];
        for k in candidates {
            let (key, _) = &self.pending[&k];
            if self.settled(key.as_ref(), k.0, wm) {
                let (key, row) = self.pending.remove(&k).expect("listed");
                self.bytes = self.bytes.saturating_sub(row.as_ref().len() + 64);
                ready.push((k, key, row));
            }
        }
        let out = self.emit(ready)?;
        if self.right_rows > 1024 && self.right_rows >= 2 * self.rows_at_last_sweep.max(1) || wm == i64::MAX {
            self.sweep(wm);
        }
        Ok(out)
    }

    fn state_size(&self) -> usize {
        self.bytes
    }

    /// Two batches: the waiting left rows and the kept right rows, each with its arrival
    /// sequence (`__seq`, which decides ties); keys and times are recomputed on restore.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let left: Vec<(u64, &OwnedRow)> = self.pending.iter().map(|(k, (_, r))| (k.1, r)).collect();
        let right: Vec<(u64, &OwnedRow)> = self.right.values().flat_map(|m| m.iter().map(|(k, r)| (k.1, r))).collect();
        let mut out = vec![];
        for (s, rows) in [(0, left), (1, right)] {
            let schema = self.sides[s].schema.clone();
            let mut cols: Vec<ArrayRef> = if rows.is_empty() {
                RecordBatch::new_empty(schema.clone()).columns().to_vec()
            } else {
                self.row_conv[s].convert_rows(rows.iter().map(|(_, r)| r.row()))?
            };
            cols.push(Arc::new(datafusion::arrow::array::UInt64Array::from_iter_values(rows.iter().map(|(q, _)| *q))));
            let mut fields: Vec<datafusion::arrow::datatypes::Field> =
                schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(datafusion::arrow::datatypes::Field::new("__seq", DataType::UInt64, false));
            out.push(RecordBatch::try_new(Arc::new(datafusion::arrow::datatypes::Schema::new(fields)), cols)?);
        }
        Ok(out)
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        if state.len() != 2 {
            return Err(Error::invalid_argument("an ASOF join's snapshot has two batches (left, right)"));
        }
        self.pending.clear();
        self.right.clear();
        self.right_rows = 0;
        self.bytes = 0;
        for (s, b) in state.into_iter().enumerate() {
            let n = b.num_columns().checked_sub(1).ok_or_else(|| Error::invalid_argument("empty ASOF snapshot"))?;
            let seqs = b
                .column(n)
                .as_primitive_opt::<datafusion::arrow::datatypes::UInt64Type>()
                .ok_or_else(|| Error::invalid_argument("the ASOF snapshot was taken from a different plan"))?
                .clone();
            let data = RecordBatch::try_new(self.sides[s].schema.clone(), b.columns()[..n].to_vec()).map_err(|e| {
                Error::invalid_argument(format!("the ASOF snapshot was taken from a different plan: {e}"))
            })?;
            let (keys, valid) = self.keys(s, &data)?;
            let times = self.times(s, &data)?;
            let rows = self.row_conv[s].convert_columns(data.columns())?;
            for i in 0..data.num_rows() {
                let (Some(t), seq) = (times[i], seqs.value(i)) else { continue };
                self.seq = self.seq.max(seq);
                let row = rows.row(i).owned();
                self.bytes += row.as_ref().len() + 64;
                if s == 0 {
                    let key: Option<Key> = valid[i].then(|| Box::from(keys.row(i).as_ref()));
                    self.pending.insert((t, seq), (key, row));
                } else {
                    self.right.entry(Box::from(keys.row(i).as_ref())).or_default().insert((t, seq), row);
                    self.right_rows += 1;
                }
            }
        }
        self.rows_at_last_sweep = self.right_rows;
        Ok(())
    }
}
