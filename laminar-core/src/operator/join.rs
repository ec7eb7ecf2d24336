//! The symmetric hash join of two streams (DESIGN §3, "Joins").
//!
//! Each side keeps the rows it has seen, indexed by the equi-join key; a batch on one side probes
//! the other side's rows and is then stored for the other side's future rows. Inputs are Z-sets:
//! a changelog row with `__weight = -1` removes an identical stored row and retracts every output
//! it took part in, so `ΔL ⋈ R + L' ⋈ ΔR` keeps the output equal to the batch join of the inputs.
//!
//! State is bounded by event time when the join condition bounds it: a conjunct of the form
//! `other.t <= f(row)` (an interval join's `BETWEEN`, a window join's equal window bounds, Nexmark
//! q4's `b.date_time BETWEEN a.date_time AND a.expires`) means that once the watermark passes
//! `f(row)` no future row of the other side can match `row`, so it is dropped. The other side's
//! rows whose `t` is already behind the watermark are late and dropped (counted), which is what
//! makes the eviction exact. Without such a bound a side's state grows with its input.
//!
//! Outer joins emit a side's unmatched rows padded with NULLs: at eviction when the side is
//! time-bounded (the output stays append-only), otherwise at once, retracted when the first match
//! arrives (the output is then a changelog).

use std::collections::VecDeque;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, UInt32Array, new_null_array};
use datafusion::arrow::compute::{cast, filter_record_batch, interleave, take};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashMap;

use super::window::{TimeScale, event_times};
use super::{OpCtx, Operator};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinType {
    Inner,
    Left,
    Right,
    Full,
    /// `EXISTS` / `IN`: left rows that have a match, once.
    Semi,
    /// `NOT EXISTS`: left rows that have none.
    Anti,
}

impl JoinType {
    fn outer(self, side: usize) -> bool {
        matches!(
            (self, side),
            (JoinType::Left | JoinType::Semi | JoinType::Anti, 0) | (JoinType::Right, 1) | (JoinType::Full, _)
        )
    }
}

impl std::fmt::Display for JoinType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JoinType::Inner => "INNER",
            JoinType::Left => "LEFT",
            JoinType::Right => "RIGHT",
            JoinType::Full => "FULL",
            JoinType::Semi => "SEMI",
            JoinType::Anti => "ANTI",
        })
    }
}

/// What the planner tells the join about one input.
pub(crate) struct SideSpec {
    /// Logical schema of the input (no `__weight`).
    pub schema: SchemaRef,
    /// The input is a changelog (carries `__weight`).
    pub weighted: bool,
    /// Equi-join key expressions over `schema`.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// A stored row can no longer match once the watermark passes this expression's value.
    pub expiry: Option<(Arc<dyn PhysicalExpr>, TimeScale)>,
    /// Rows whose value in this column is behind the watermark are late: dropped and counted.
    pub late_col: Option<(usize, TimeScale)>,
    /// Text for EXPLAIN: how the state is bounded.
    pub bound_text: String,
    /// STATE TTL: (event-time column, its scale, TTL µs) — rows are dropped once the watermark is
    /// the TTL past their time, whether or not a later row could still have matched them.
    pub ttl: Option<(Arc<dyn PhysicalExpr>, TimeScale, i64)>,
}

type RowRef = (u64, u32);

struct Chunk {
    batch: RecordBatch,
    /// Current weight of each row; 0 once removed (retracted or evicted).
    weight: Vec<i64>,
    /// Per row, the sum of the weights of the other side's rows it matched (outer sides only).
    matched: Vec<i64>,
    /// Whole-row encodings, so a retraction can find its row (changelog inputs only).
    rows: Option<Rows>,
    /// The largest expiry of the chunk's rows (µs); the chunk is dropped once the watermark
    /// passes it.
    expiry_max: i64,
    live: usize,
    bytes: usize,
}

struct Side {
    spec: SideSpec,
    outer: bool,
    /// Unmatched rows are emitted when evicted, not at once.
    deferred: bool,
    chunks: VecDeque<Option<Chunk>>,
    /// Id of `chunks[0]`.
    base: u64,
    index: HashMap<Box<[u8]>, Vec<RowRef>>,
    refs: usize,
    dead_refs: usize,
    row_conv: Option<RowConverter>,
    bytes: usize,
    live_rows: usize,
}

impl Side {
    fn chunk(&self, id: u64) -> Option<&Chunk> {
        id.checked_sub(self.base).and_then(|i| self.chunks.get(i as usize)).and_then(|c| c.as_ref())
    }

    fn chunk_mut(&mut self, id: u64) -> Option<&mut Chunk> {
        id.checked_sub(self.base).and_then(|i| self.chunks.get_mut(i as usize)).and_then(|c| c.as_mut())
    }

    fn live_weight(&self, r: RowRef) -> i64 {
        self.chunk(r.0).map(|c| c.weight[r.1 as usize]).unwrap_or(0)
    }

    /// Drops dead references from the index once they outnumber the live ones.
    fn maybe_compact(&mut self) {
        if self.dead_refs < 1024 || self.dead_refs * 2 < self.refs {
            return;
        }
        let (chunks, base) = (&self.chunks, self.base);
        let alive = |r: &RowRef| {
            r.0.checked_sub(base)
                .and_then(|i| chunks.get(i as usize))
                .and_then(|c| c.as_ref())
                .is_some_and(|c| c.weight[r.1 as usize] != 0)
        };
        let mut refs = 0;
        self.index.retain(|_, v| {
            v.retain(alive);
            refs += v.len();
            !v.is_empty()
        });
        self.index.shrink_to_fit();
        self.refs = refs;
        self.dead_refs = 0;
    }
}

/// Where an output column group's row comes from.
#[derive(Clone, Copy)]
enum Src {
    Delta(u32),
    Stored(RowRef),
    Null,
}

pub(crate) struct HashJoin {
    join_type: JoinType,
    sides: [Side; 2],
    key_conv: RowConverter,
    key_types: Vec<DataType>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// left ++ right logical columns (nullable where the join type pads); left only for SEMI/ANTI.
    joined_schema: SchemaRef,
    /// left ++ right: the pairs the residual condition is evaluated on.
    cand_schema: SchemaRef,
    /// `joined_schema` plus `__weight` when the output is a changelog.
    output_schema: SchemaRef,
    weighted_out: bool,
    filter_text: String,
    /// Lookup join (`FOR SYSTEM_TIME AS OF PROCTIME()`): left rows probe the right side's current
    /// rows and are not kept; right changes update the state and emit nothing.
    lookup: bool,
}

impl HashJoin {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn try_new(
        join_type: JoinType,
        left: SideSpec,
        right: SideSpec,
        key_types: Vec<DataType>,
        filter: Option<Arc<dyn PhysicalExpr>>,
        joined_schema: SchemaRef,
        cand_schema: SchemaRef,
        lookup: bool,
    ) -> Result<HashJoin> {
        let weighted_out = Self::output_retracts(join_type, &left, &right, lookup);
        let output_schema = if weighted_out {
            let mut fields: Vec<datafusion::arrow::datatypes::Field> =
                joined_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(datafusion::arrow::datatypes::Field::new(super::WEIGHT_COLUMN, DataType::Int64, false));
            Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
        } else {
            joined_schema.clone()
        };
        let key_conv = RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())?;
        let mk = |spec: SideSpec, i: usize| -> Result<Side> {
            let row_conv = if spec.weighted {
                Some(RowConverter::new(
                    spec.schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect(),
                )?)
            } else {
                None
            };
            let deferred = spec.expiry.is_some() && !spec.weighted;
            Ok(Side {
                outer: join_type.outer(i),
                deferred,
                spec,
                chunks: VecDeque::new(),
                base: 0,
                index: HashMap::new(),
                refs: 0,
                dead_refs: 0,
                row_conv,
                bytes: 0,
                live_rows: 0,
            })
        };
        let filter_text = filter.as_ref().map(|f| format!(", filter {f}")).unwrap_or_default();
        Ok(HashJoin {
            join_type,
            sides: [mk(left, 0)?, mk(right, 1)?],
            key_conv,
            key_types,
            filter,
            joined_schema,
            cand_schema,
            output_schema,
            weighted_out,
            filter_text,
            lookup,
        })
    }

    /// Whether the output can retract: a changelog input, an outer (or ANTI) side padded at once,
    /// a SEMI row that can lose its match. A lookup join never revisits its output.
    fn output_retracts(join_type: JoinType, left: &SideSpec, right: &SideSpec, lookup: bool) -> bool {
        match join_type {
            _ if lookup => left.weighted,
            JoinType::Semi => left.weighted || right.weighted,
            _ => {
                left.weighted
                    || right.weighted
                    || (join_type.outer(0) && left.expiry.is_none())
                    || (join_type.outer(1) && right.expiry.is_none())
            }
        }
    }

    fn semi_or_anti(&self) -> bool {
        matches!(self.join_type, JoinType::Semi | JoinType::Anti)
    }

    /// Builds rows: each takes its left columns from `.0` and its right ones from `.1`. Without
    /// weights: candidate pairs (both sides); with: output rows (left only for SEMI/ANTI).
    fn build(
        &self,
        delta_side: usize,
        delta: &RecordBatch,
        rows: &[(Src, Src)],
        weights: Option<Vec<i64>>,
    ) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.output_schema.fields().len());
        let sides = if weights.is_some() && self.semi_or_anti() { 1 } else { 2 };
        for s in 0..sides {
            let side = &self.sides[s];
            // Sources: 0 = the delta batch (when this is the delta side), then used chunks, then a NULL row.
            let mut chunk_ids: Vec<u64> = vec![];
            let mut slot: HashMap<u64, usize> = HashMap::new();
            let first_chunk = if s == delta_side { 1 } else { 0 };
            let mut idx: Vec<(usize, usize)> = Vec::with_capacity(rows.len());
            let mut need_null = false;
            for r in rows {
                let src = if s == 0 { r.0 } else { r.1 };
                idx.push(match src {
                    Src::Delta(i) => (0, i as usize),
                    Src::Stored((c, i)) => {
                        let k = *slot.entry(c).or_insert_with(|| {
                            chunk_ids.push(c);
                            first_chunk + chunk_ids.len() - 1
                        });
                        (k, i as usize)
                    }
                    Src::Null => {
                        need_null = true;
                        (usize::MAX, 0)
                    }
                });
            }
            let null_slot = first_chunk + chunk_ids.len();
            if need_null {
                for p in idx.iter_mut() {
                    if p.0 == usize::MAX {
                        p.0 = null_slot;
                    }
                }
            }
            for (ci, f) in side.spec.schema.fields().iter().enumerate() {
                let mut arrays: Vec<ArrayRef> = vec![];
                if s == delta_side {
                    arrays.push(delta.column(ci).clone());
                }
                for c in &chunk_ids {
                    arrays.push(
                        side.chunk(*c)
                            .ok_or_else(|| Error::internal("join row of a dropped chunk"))?
                            .batch
                            .column(ci)
                            .clone(),
                    );
                }
                if need_null {
                    arrays.push(new_null_array(f.data_type(), 1));
                }
                let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
                cols.push(
                    if refs.len() == 1 && idx.iter().enumerate().all(|(k, p)| p.1 == k) && idx.len() == refs[0].len() {
                        arrays[0].clone()
                    } else {
                        interleave(&refs, &idx)?
                    },
                );
            }
        }
        let opts = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        match weights {
            Some(w) if self.weighted_out => {
                cols.push(Arc::new(Int64Array::from(w)));
                Ok(RecordBatch::try_new_with_options(self.output_schema.clone(), cols, &opts)?)
            }
            Some(_) => Ok(RecordBatch::try_new_with_options(self.joined_schema.clone(), cols, &opts)?),
            None => Ok(RecordBatch::try_new_with_options(self.cand_schema.clone(), cols, &opts)?),
        }
    }

    fn key_rows(&self, side: usize, batch: &RecordBatch) -> Result<(Rows, Vec<bool>)> {
        encode_keys(&self.key_conv, &self.sides[side].spec.keys, &self.key_types, batch)
    }

    /// Per row, when it can be dropped (µs of watermark), if the side is bounded or has a TTL.
    fn expiry_of(&self, s: usize, logical: &RecordBatch) -> Result<Option<Vec<i64>>> {
        let n = logical.num_rows();
        let (e, scale, add) = match (&self.sides[s].spec.expiry, &self.sides[s].spec.ttl) {
            (Some((e, scale)), _) => (e, *scale, 0),
            (None, Some((e, scale, ttl))) => (e, *scale, *ttl),
            (None, None) => return Ok(None),
        };
        let a = e.evaluate(logical)?.into_array(n)?;
        let (t, nulls) = event_times(&a, scale)?;
        // A NULL bound makes the condition NULL: the row never matches; drop it first.
        Ok(Some(
            t.iter()
                .enumerate()
                .map(
                    |(i, &v)| {
                        if nulls.as_ref().is_none_or(|nb| nb.is_valid(i)) { v.saturating_add(add) } else { i64::MIN }
                    },
                )
                .collect(),
        ))
    }

    /// Stores `batch` as a new chunk of side `s`: row `k` has key `keys.row(pos[k])`.
    #[allow(clippy::too_many_arguments)]
    fn push_chunk(
        &mut self,
        s: usize,
        batch: RecordBatch,
        keys: &Rows,
        pos: &[u32],
        rows: Option<Rows>,
        expiry_max: i64,
        matched: Vec<i64>,
    ) {
        let m = batch.num_rows();
        let bytes = batch.get_array_memory_size() + m * 24 + rows.as_ref().map(|r| r.size()).unwrap_or(0);
        let side = &mut self.sides[s];
        let id = side.base + side.chunks.len() as u64;
        // Rows with a NULL key are indexed too (a retraction must find them) but never probed.
        for (k, &i) in pos.iter().enumerate() {
            let key = keys.row(i as usize);
            match side.index.get_mut(key.as_ref()) {
                Some(v) => v.push((id, k as u32)),
                None => {
                    side.index.insert(Box::from(key.as_ref()), vec![(id, k as u32)]);
                }
            }
            side.refs += 1;
        }
        side.chunks.push_back(Some(Chunk { batch, weight: vec![1; m], matched, rows, expiry_max, live: m, bytes }));
        side.bytes += bytes;
        side.live_rows += m;
    }

    fn process_delta(&mut self, s: usize, batch: RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let o = 1 - s;
        let nlog = self.sides[s].spec.schema.fields().len();
        let (mut logical, mut weights): (RecordBatch, Vec<i64>) = if self.sides[s].spec.weighted {
            let w = batch.column(nlog).as_primitive::<Int64Type>().values().to_vec();
            (batch.project(&(0..nlog).collect::<Vec<_>>())?, w)
        } else {
            let n = batch.num_rows();
            (batch, vec![1; n])
        };
        // Late rows: their partners may already be gone.
        if let Some((col, scale)) = self.sides[s].spec.late_col
            && ctx.watermark != super::NO_WATERMARK
        {
            let (t, nulls) = event_times(logical.column(col), scale)?;
            let keep: Vec<bool> = t
                .iter()
                .enumerate()
                .map(|(i, &v)| nulls.as_ref().is_none_or(|nb| nb.is_valid(i)) && v >= ctx.watermark)
                .collect();
            let dropped = keep.iter().filter(|k| !**k).count();
            if dropped > 0 {
                ctx.late.rows += dropped as u64;
                let mask = datafusion::arrow::array::BooleanArray::from(keep.clone());
                logical = filter_record_batch(&logical, &mask)?;
                weights = weights.into_iter().zip(keep).filter(|(_, k)| *k).map(|(w, _)| w).collect();
            }
        }
        let n = logical.num_rows();
        if n == 0 {
            return Ok(vec![]);
        }
        let (keys, key_valid) = self.key_rows(s, &logical)?;
        let expiry = self.expiry_of(s, &logical)?;
        // Retractions: find the stored row each one removes (before anything of this batch changes).
        let full_rows = match &self.sides[s].row_conv {
            Some(conv) => Some(conv.convert_columns(logical.columns())?),
            None => None,
        };
        let mut removed: Vec<Option<(RowRef, i64)>> = vec![None; n];
        let mut new_rows_removed: Vec<bool> = vec![false; n];
        for i in 0..n {
            if weights[i] >= 0 {
                continue;
            }
            let fr = full_rows.as_ref().expect("weighted side has row encodings");
            let side = &mut self.sides[s];
            let mut found = None;
            if let Some(list) = side.index.get(keys.row(i).as_ref()) {
                for r in list {
                    if let Some(c) = side.chunk(r.0) {
                        let k = r.1 as usize;
                        if c.weight[k] > 0 && c.rows.as_ref().is_some_and(|rs| rs.row(k) == fr.row(i)) {
                            found = Some(*r);
                            break;
                        }
                    }
                }
            }
            match found {
                Some(r) => {
                    let c = side.chunk_mut(r.0).expect("found");
                    let m = c.matched.get(r.1 as usize).copied().unwrap_or(0);
                    c.weight[r.1 as usize] = 0;
                    c.live -= 1;
                    side.live_rows -= 1;
                    side.dead_refs += 1;
                    removed[i] = Some((r, m));
                }
                None => {
                    // Retracts a row inserted earlier in this same batch?
                    let j = (0..i).find(|&j| {
                        weights[j] > 0 && !new_rows_removed[j] && keys.row(j) == keys.row(i) && fr.row(j) == fr.row(i)
                    });
                    match j {
                        Some(j) => new_rows_removed[j] = true,
                        // A row the TTL already forgot: its retraction has nothing to undo here.
                        None if self.sides[s].spec.ttl.is_some() => weights[i] = 0,
                        None => {
                            return Err(Error::internal(format!(
                                "a retraction on the {} side of a join matches no row it has seen",
                                if s == 0 { "left" } else { "right" }
                            )));
                        }
                    }
                }
            }
        }
        // Probe the other side (a lookup join's table side probes nothing).
        let mut pairs: Vec<(u32, RowRef)> = vec![];
        if !(self.lookup && s == 1) {
            let other = &self.sides[o];
            for i in 0..n {
                if !key_valid[i] || weights[i] == 0 {
                    continue;
                }
                if let Some(list) = other.index.get(keys.row(i).as_ref()) {
                    for r in list {
                        if other.live_weight(*r) != 0 {
                            pairs.push((i as u32, *r));
                        }
                    }
                }
            }
        }
        let mut out_pos: Vec<(Src, Src)> = vec![];
        let mut out_w: Vec<i64> = vec![];
        let mut outputs: Vec<RecordBatch> = vec![];
        let mut matched_delta = vec![0i64; n];
        if !pairs.is_empty() {
            let specs: Vec<(Src, Src)> = pairs
                .iter()
                .map(
                    |(i, r)| if s == 0 { (Src::Delta(*i), Src::Stored(*r)) } else { (Src::Stored(*r), Src::Delta(*i)) },
                )
                .collect();
            // SEMI/ANTI without a residual condition need only the match counts, not the pairs.
            let cand = if self.filter.is_none() && self.semi_or_anti() {
                None
            } else {
                Some(self.build(s, &logical, &specs, None)?)
            };
            let mask = match (&self.filter, &cand) {
                (Some(f), Some(cand)) => {
                    let v = f.evaluate(cand)?.into_array(cand.num_rows())?;
                    let m = v
                        .as_boolean_opt()
                        .ok_or_else(|| Error::plan(format!("join condition is {}, not BOOLEAN", v.data_type())))?;
                    Some(crate::util::null_as_false(m))
                }
                _ => None,
            };
            let pass = |k: usize| mask.as_ref().is_none_or(|m| m.value(k));
            let mut pair_w = Vec::with_capacity(pairs.len());
            for (k, (i, r)) in pairs.iter().enumerate() {
                if !pass(k) {
                    continue;
                }
                let wd = weights[*i as usize];
                let wo = self.sides[o].live_weight(*r);
                pair_w.push(wd * wo);
                if self.sides[s].outer {
                    matched_delta[*i as usize] += wo;
                }
                if self.sides[o].outer {
                    let deferred = self.sides[o].deferred;
                    let semi = self.join_type == JoinType::Semi;
                    let c = self.sides[o].chunk_mut(r.0).expect("live");
                    let before = c.matched[r.1 as usize];
                    let after = before + wd;
                    c.matched[r.1 as usize] = after;
                    if semi {
                        // A left row is in the output while it has a match.
                        let row = (Src::Stored(*r), Src::Null);
                        if before == 0 && after > 0 {
                            out_pos.push(row);
                            out_w.push(wo);
                        } else if before > 0 && after == 0 {
                            out_pos.push(row);
                            out_w.push(-wo);
                        }
                    } else if !deferred {
                        let pad = if s == 0 { (Src::Null, Src::Stored(*r)) } else { (Src::Stored(*r), Src::Null) };
                        if before == 0 && after > 0 {
                            out_pos.push(pad);
                            out_w.push(-wo);
                        } else if before > 0 && after == 0 {
                            out_pos.push(pad);
                            out_w.push(wo);
                        }
                    }
                }
            }
            if let (Some(cand), false) = (cand, self.semi_or_anti()) {
                let joined = match mask {
                    Some(m) => filter_record_batch(&cand, &m)?,
                    None => cand,
                };
                if joined.num_rows() > 0 {
                    outputs.push(self.with_weights(joined, pair_w)?);
                }
            }
        }
        if self.join_type == JoinType::Semi && s == 0 {
            // A new left row with a match is in the output; a retracted one leaves it if it was.
            for i in 0..n {
                let had = removed[i].map(|(_, m)| m).unwrap_or(0).max(matched_delta[i]);
                if (weights[i] > 0 && matched_delta[i] > 0) || (weights[i] < 0 && had > 0) {
                    out_pos.push((Src::Delta(i as u32), Src::Null));
                    out_w.push(weights[i]);
                }
            }
        } else if self.sides[s].outer && !self.sides[s].deferred {
            // This side's own padded rows (eager outer sides; ANTI's unmatched left rows).
            for i in 0..n {
                let pad = if s == 0 { (Src::Delta(i as u32), Src::Null) } else { (Src::Null, Src::Delta(i as u32)) };
                if weights[i] > 0 && matched_delta[i] == 0 {
                    out_pos.push(pad);
                    out_w.push(weights[i]);
                } else if weights[i] < 0 {
                    // Its padded row was out iff it had no match when it was retracted.
                    let had = removed[i].map(|(_, m)| m).unwrap_or(0) + matched_delta[i];
                    if had == 0 {
                        out_pos.push(pad);
                        out_w.push(weights[i]);
                    }
                }
            }
        }
        if !out_pos.is_empty() {
            let b = self.build(s, &logical, &out_pos, Some(out_w))?;
            outputs.push(b);
        }
        // Store this batch's inserted rows.
        let insert: Vec<u32> = if self.lookup && s == 0 {
            vec![]
        } else {
            (0..n as u32).filter(|&i| weights[i as usize] > 0 && !new_rows_removed[i as usize]).collect()
        };
        if !insert.is_empty() {
            let all = insert.len() == n;
            let idx = UInt32Array::from(insert.clone());
            let batch = if all { logical.clone() } else { take_batch(&logical, &idx)? };
            let rows = match &full_rows {
                Some(fr) if all => Some(fr.clone()),
                Some(_) => Some(self.sides[s].row_conv.as_ref().expect("weighted").convert_columns(batch.columns())?),
                None => None,
            };
            let expiry_max = expiry
                .as_ref()
                .map(|e| insert.iter().map(|&i| e[i as usize]).max().unwrap_or(i64::MIN))
                .unwrap_or(i64::MAX);
            let matched =
                if self.sides[s].outer { insert.iter().map(|&i| matched_delta[i as usize]).collect() } else { vec![] };
            self.push_chunk(s, batch, &keys, &insert, rows, expiry_max, matched);
        }
        // Chunks emptied by retractions.
        self.drop_dead_chunks(s);
        self.sides[s].maybe_compact();
        if outputs.is_empty() {
            return Ok(outputs);
        }
        let out = if outputs.len() == 1 {
            outputs.pop().expect("one")
        } else {
            datafusion::arrow::compute::concat_batches(&self.output_schema_for_out(), &outputs)?
        };
        Ok(vec![self.retractions_first(out)?])
    }

    fn output_schema_for_out(&self) -> SchemaRef {
        if self.weighted_out { self.output_schema.clone() } else { self.joined_schema.clone() }
    }

    /// Attaches weights (changelog output) or checks there are none to attach (append-only).
    fn with_weights(&self, b: RecordBatch, w: Vec<i64>) -> Result<RecordBatch> {
        if self.weighted_out {
            let mut cols = b.columns().to_vec();
            cols.push(Arc::new(Int64Array::from(w)));
            Ok(RecordBatch::try_new(self.output_schema.clone(), cols)?)
        } else {
            debug_assert!(w.iter().all(|&x| x == 1));
            Ok(b)
        }
    }

    /// Orders a changelog emission's retractions before its insertions (DESIGN §3).
    fn retractions_first(&self, b: RecordBatch) -> Result<RecordBatch> {
        if !self.weighted_out {
            return Ok(b);
        }
        let w = b.column(b.num_columns() - 1).as_primitive::<Int64Type>();
        if w.values().iter().all(|&x| x > 0) || w.values().iter().all(|&x| x < 0) {
            return Ok(b);
        }
        let order: Vec<u32> = (0..b.num_rows() as u32)
            .filter(|&i| w.value(i as usize) < 0)
            .chain((0..b.num_rows() as u32).filter(|&i| w.value(i as usize) > 0))
            .collect();
        take_batch(&b, &UInt32Array::from(order))
    }

    /// Drops chunks (front first) whose rows are all gone.
    fn drop_dead_chunks(&mut self, s: usize) {
        let side = &mut self.sides[s];
        for c in side.chunks.iter_mut() {
            if c.as_ref().is_some_and(|c| c.live == 0) {
                let ch = c.take().expect("some");
                side.bytes -= ch.bytes;
            }
        }
        while matches!(side.chunks.front(), Some(None)) {
            side.chunks.pop_front();
            side.base += 1;
        }
    }

    fn evict(&mut self, s: usize, wm: i64) -> Result<Option<RecordBatch>> {
        let mut pads: Vec<(Src, Src)> = vec![];
        let mut dead: Vec<u64> = vec![];
        {
            let side = &self.sides[s];
            if side.spec.expiry.is_none() && side.spec.ttl.is_none() {
                return Ok(None);
            }
            for (k, c) in side.chunks.iter().enumerate() {
                let Some(c) = c else { continue };
                if c.expiry_max < wm {
                    let id = side.base + k as u64;
                    dead.push(id);
                    if side.outer && side.deferred && self.join_type != JoinType::Semi {
                        for r in 0..c.weight.len() {
                            if c.weight[r] > 0 && c.matched[r] == 0 {
                                let src = Src::Stored((id, r as u32));
                                pads.push(if s == 0 { (src, Src::Null) } else { (Src::Null, src) });
                            }
                        }
                    }
                }
            }
        }
        if dead.is_empty() {
            return Ok(None);
        }
        let out = if pads.is_empty() {
            None
        } else {
            let empty = RecordBatch::new_empty(self.sides[s].spec.schema.clone());
            let n = pads.len();
            Some(self.build(usize::MAX, &empty, &pads, Some(vec![1; n]))?)
        };
        let side = &mut self.sides[s];
        for id in dead {
            let c = side.chunk_mut(id).expect("listed");
            let live = c.live;
            c.live = 0;
            c.weight.iter_mut().for_each(|w| *w = 0);
            side.live_rows -= live;
            side.dead_refs += live;
        }
        self.drop_dead_chunks(s);
        self.sides[s].maybe_compact();
        Ok(out)
    }
}

/// Join keys of `batch` in row format (cast to the key types), and per row whether no key is NULL
/// (a NULL key matches nothing).
pub(crate) fn encode_keys(
    conv: &RowConverter,
    exprs: &[Arc<dyn PhysicalExpr>],
    types: &[DataType],
    batch: &RecordBatch,
) -> Result<(Rows, Vec<bool>)> {
    let n = batch.num_rows();
    let mut arrays = Vec::with_capacity(types.len());
    for (e, t) in exprs.iter().zip(types) {
        let a = e.evaluate(batch)?.into_array(n)?;
        arrays.push(if a.data_type() == t { a } else { cast(&a, t)? });
    }
    let mut valid = vec![true; n];
    for a in &arrays {
        if let Some(nb) = a.logical_nulls() {
            for (i, v) in valid.iter_mut().enumerate() {
                *v &= nb.is_valid(i);
            }
        }
    }
    Ok((conv.convert_columns(&arrays)?, valid))
}

/// A side's columns plus `__matched` (the weight of the other side's rows it matched).
fn snapshot_schema(side: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<datafusion::arrow::datatypes::Field> =
        side.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(datafusion::arrow::datatypes::Field::new("__matched", DataType::Int64, false));
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

fn take_batch(b: &RecordBatch, idx: &UInt32Array) -> Result<RecordBatch> {
    let cols = b.columns().iter().map(|c| take(c.as_ref(), idx, None)).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(b.schema(), cols, &RecordBatchOptions::new().with_row_count(Some(idx.len())))?)
}

impl HashJoin {
    /// Whether the output is a changelog (carries `__weight`).
    pub(crate) fn retracts(&self) -> bool {
        self.weighted_out
    }

    fn describe(&self) -> String {
        let bounded = |i: usize| self.sides[i].spec.expiry.is_some() || self.sides[i].spec.ttl.is_some();
        let kind = match (bounded(0), bounded(1)) {
            (true, true) => "bounded by the watermark on both sides",
            (true, false) => "left side bounded by the watermark, right side unbounded",
            (false, true) => "right side bounded by the watermark, left side unbounded",
            (false, false) => "unbounded on both sides",
        };
        format!(
            "{} {} on {} keys{}: state {kind} (left: {}; right: {}){}",
            if self.lookup { "LookupJoin" } else { "HashJoin" },
            self.join_type,
            self.key_types.len(),
            self.filter_text,
            self.sides[0].spec.bound_text,
            self.sides[1].spec.bound_text,
            if self.weighted_out { " → changelog" } else { "" }
        )
    }
}

impl Operator for HashJoin {
    fn explain(&self) -> String {
        self.describe()
    }
    fn process_batch(&mut self, _batch: RecordBatch, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        Err(Error::internal("a join is fed through its sides"))
    }
    fn process_side(&mut self, side: usize, batch: RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        self.process_delta(side, batch, ctx)
    }
    fn on_watermark(&mut self, wm: i64, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let mut out = vec![];
        for s in 0..2 {
            out.extend(self.evict(s, wm)?);
        }
        Ok(out)
    }
    fn state_size(&self) -> usize {
        self.sides.iter().map(|s| s.bytes + s.refs * 16 + s.index.len() * 48).sum()
    }
    /// Two batches, left then right: each side's live rows with a `__matched` column.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let mut out = vec![];
        for side in &self.sides {
            let schema = snapshot_schema(&side.spec.schema);
            let mut parts = vec![];
            for c in side.chunks.iter().flatten() {
                let live: Vec<u32> = (0..c.weight.len() as u32).filter(|&i| c.weight[i as usize] > 0).collect();
                if live.is_empty() {
                    continue;
                }
                let b = take_batch(&c.batch, &UInt32Array::from(live.clone()))?;
                let mut cols = b.columns().to_vec();
                cols.push(Arc::new(Int64Array::from_iter_values(
                    live.iter().map(|&i| c.matched.get(i as usize).copied().unwrap_or(0)),
                )));
                parts.push(RecordBatch::try_new(schema.clone(), cols)?);
            }
            out.push(datafusion::arrow::compute::concat_batches(&schema, &parts)?);
        }
        Ok(out)
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        if state.len() != 2 {
            return Err(Error::invalid_argument("a join's snapshot has two batches (left, right)"));
        }
        for (s, b) in state.into_iter().enumerate() {
            let want = snapshot_schema(&self.sides[s].spec.schema);
            if b.schema().fields() != want.fields() {
                return Err(Error::invalid_argument("the join snapshot was taken from a different plan"));
            }
            {
                let side = &mut self.sides[s];
                side.chunks.clear();
                side.base = 0;
                side.index.clear();
                side.refs = 0;
                side.dead_refs = 0;
                side.bytes = 0;
                side.live_rows = 0;
            }
            let n = b.num_rows();
            if n == 0 {
                continue;
            }
            let nlog = b.num_columns() - 1;
            let matched = b.column(nlog).as_primitive::<Int64Type>().values().to_vec();
            let logical = b.project(&(0..nlog).collect::<Vec<_>>())?;
            let logical = RecordBatch::try_new(self.sides[s].spec.schema.clone(), logical.columns().to_vec())?;
            let (keys, _) = self.key_rows(s, &logical)?;
            let expiry_max =
                self.expiry_of(s, &logical)?.map(|e| e.into_iter().max().unwrap_or(i64::MIN)).unwrap_or(i64::MAX);
            let rows = match &self.sides[s].row_conv {
                Some(conv) => Some(conv.convert_columns(logical.columns())?),
                None => None,
            };
            let matched = if self.sides[s].outer { matched } else { vec![] };
            let pos: Vec<u32> = (0..n as u32).collect();
            self.push_chunk(s, logical, &keys, &pos, rows, expiry_max, matched);
        }
        Ok(())
    }
}
