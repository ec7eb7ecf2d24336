//! Aggregation over a changelog input (a join that retracts, an `EMIT CHANGES` aggregate): every
//! input row carries `__weight` (+1 insert, −1 retraction) and the aggregate state can take rows
//! back out. COUNT, SUM and AVG keep sums and counts; MIN and MAX keep a counted, ordered
//! multiset of the values per group, so retracting the current extreme recovers the next one.
//! Output is a changelog (`EMIT CHANGES`): after each batch, `-old` and `+new` for every group whose
//! row changed; a group whose last row is retracted is retracted and disappears.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashMap;

use super::{OpCtx, Operator};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RFun {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// One aggregate call over a changelog.
pub(crate) struct RAgg {
    pub fun: RFun,
    pub arg: Arc<dyn PhysicalExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// The argument's type (MIN/MAX) and the result's type.
    pub arg_type: DataType,
    pub out_type: DataType,
}

impl RAgg {
    /// Sums are kept as i128 for integer arguments and f64 otherwise.
    fn integral(&self) -> bool {
        self.arg_type.is_integer()
    }
}

enum AccState {
    Count(i64),
    /// (sum of integers, sum of floats, non-NULL count)
    Sum(i128, f64, i64),
    Extreme(BTreeMap<Vec<u8>, i64>),
}

struct Group {
    key: Vec<ScalarValue>,
    key_row: OwnedRow,
    rows: i64,
    accs: Vec<AccState>,
    /// The output row last emitted for this group.
    emitted: Option<Vec<ScalarValue>>,
}

pub(crate) struct RetractAggregate {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_conv: RowConverter,
    aggs: Vec<RAgg>,
    /// Row encoders of MIN/MAX arguments (one per aggregate; unused for others).
    val_conv: Vec<Option<RowConverter>>,
    groups: Vec<Group>,
    index: HashMap<OwnedRow, usize>,
    free: Vec<usize>,
    output_schema: SchemaRef,
    bytes: usize,
}

impl RetractAggregate {
    pub(crate) fn try_new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<DataType>,
        aggs: Vec<RAgg>,
        output_schema: SchemaRef,
    ) -> Result<Self> {
        // With no GROUP BY every row goes to one group, keyed by a constant.
        let conv_types = if key_types.is_empty() { vec![DataType::Boolean] } else { key_types };
        let key_conv = RowConverter::new(conv_types.iter().map(|t| SortField::new(t.clone())).collect())?;
        let val_conv = aggs
            .iter()
            .map(|a| match a.fun {
                RFun::Min | RFun::Max => RowConverter::new(vec![SortField::new(a.arg_type.clone())]).map(Some),
                _ => Ok(None),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RetractAggregate {
            keys,
            key_conv,
            aggs,
            val_conv,
            groups: vec![],
            index: HashMap::new(),
            free: vec![],
            output_schema,
            bytes: 0,
        })
    }

    fn new_accs(&self) -> Vec<AccState> {
        self.aggs
            .iter()
            .map(|a| match a.fun {
                RFun::Count => AccState::Count(0),
                RFun::Sum | RFun::Avg => AccState::Sum(0, 0.0, 0),
                RFun::Min | RFun::Max => AccState::Extreme(BTreeMap::new()),
            })
            .collect()
    }

    fn value(&self, g: &Group, i: usize) -> Result<ScalarValue> {
        let a = &self.aggs[i];
        let v = match (&g.accs[i], a.fun) {
            (AccState::Count(c), _) => ScalarValue::Int64(Some(*c)),
            (AccState::Sum(si, sf, n), RFun::Sum) => {
                if *n == 0 {
                    ScalarValue::try_from(&a.out_type)?
                } else if a.integral() {
                    let v = i64::try_from(*si)
                        .map_err(|_| Error::new(crate::error::ErrorKind::InvalidData, "SUM overflows BIGINT"))?;
                    ScalarValue::Int64(Some(v)).cast_to(&a.out_type)?
                } else {
                    ScalarValue::Float64(Some(*sf)).cast_to(&a.out_type)?
                }
            }
            (AccState::Sum(si, sf, n), _) => {
                if *n == 0 {
                    ScalarValue::try_from(&a.out_type)?
                } else {
                    let s = if a.integral() { *si as f64 } else { *sf };
                    ScalarValue::Float64(Some(s / *n as f64)).cast_to(&a.out_type)?
                }
            }
            (AccState::Extreme(m), fun) => {
                let entry = if fun == RFun::Min { m.keys().next() } else { m.keys().next_back() };
                match entry {
                    None => ScalarValue::try_from(&a.out_type)?,
                    Some(bytes) => {
                        let conv = self.val_conv[i].as_ref().expect("min/max");
                        let parser = conv.parser();
                        let arr = conv.convert_rows([parser.parse(bytes)])?;
                        ScalarValue::try_from_array(&arr[0], 0)?.cast_to(&a.out_type)?
                    }
                }
            }
        };
        Ok(v)
    }
}

impl Operator for RetractAggregate {
    fn explain(&self) -> String {
        let names: Vec<String> = self.aggs.iter().map(|a| format!("{:?}", a.fun).to_uppercase()).collect();
        format!(
            "RetractingAggregate: {} keys, [{}] (over a changelog; MIN/MAX keep every value) → changelog",
            self.keys.len(),
            names.join(", ")
        )
    }

    fn process_batch(&mut self, batch: RecordBatch, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let n = batch.num_rows();
        let ncols = batch.num_columns();
        let weights = batch.column(ncols - 1).as_primitive::<Int64Type>().clone();
        let logical = batch.project(&(0..ncols - 1).collect::<Vec<_>>())?;
        let key_arrays = self
            .keys
            .iter()
            .map(|e| e.evaluate(&logical).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let key_rows = if key_arrays.is_empty() {
            self.key_conv
                .convert_columns(&[Arc::new(datafusion::arrow::array::BooleanArray::from(vec![true; n])) as ArrayRef])?
        } else {
            self.key_conv.convert_columns(&key_arrays)?
        };
        // Per aggregate: the argument (cast for sums) and the FILTER mask.
        let mut args: Vec<ArrayRef> = vec![];
        let mut masks: Vec<Option<datafusion::arrow::array::BooleanArray>> = vec![];
        let mut vals = vec![];
        for (i, a) in self.aggs.iter().enumerate() {
            let v = a.arg.evaluate(&logical)?.into_array(n)?;
            let v = match a.fun {
                RFun::Sum | RFun::Avg => cast(&v, if a.integral() { &DataType::Int64 } else { &DataType::Float64 })?,
                _ => v,
            };
            vals.push(match &self.val_conv[i] {
                Some(c) => Some(c.convert_columns(std::slice::from_ref(&v))?),
                None => None,
            });
            args.push(v);
            masks.push(match &a.filter {
                Some(f) => {
                    let m = f.evaluate(&logical)?.into_array(n)?;
                    Some(crate::util::null_as_false(
                        m.as_boolean_opt().ok_or_else(|| Error::plan("FILTER is not BOOLEAN"))?,
                    ))
                }
                None => None,
            });
        }
        let mut touched: Vec<usize> = vec![];
        for r in 0..n {
            let w = weights.value(r);
            let key = key_rows.row(r);
            let g = match self.index.get(&key.owned()) {
                Some(&g) => g,
                None => {
                    if w < 0 {
                        return Err(Error::internal("a retraction reached an aggregate group that has no rows"));
                    }
                    let key_vals = key_arrays
                        .iter()
                        .map(|a| ScalarValue::try_from_array(a, r))
                        .collect::<datafusion::error::Result<Vec<_>>>()?;
                    let grp =
                        Group { key: key_vals, key_row: key.owned(), rows: 0, accs: self.new_accs(), emitted: None };
                    let g = match self.free.pop() {
                        Some(g) => {
                            self.groups[g] = grp;
                            g
                        }
                        None => {
                            self.groups.push(grp);
                            self.groups.len() - 1
                        }
                    };
                    self.index.insert(key.owned(), g);
                    self.bytes += 64 + key.as_ref().len() * 2;
                    g
                }
            };
            touched.push(g);
            let grp = &mut self.groups[g];
            grp.rows += w;
            for (i, a) in self.aggs.iter().enumerate() {
                if masks[i].as_ref().is_some_and(|m| !m.value(r)) || args[i].is_null(r) {
                    continue;
                }
                match &mut grp.accs[i] {
                    AccState::Count(c) => *c += w,
                    AccState::Sum(si, sf, cnt) => {
                        if a.integral() {
                            *si += args[i].as_primitive::<Int64Type>().value(r) as i128 * w as i128;
                        } else {
                            *sf += args[i].as_primitive::<Float64Type>().value(r) * w as f64;
                        }
                        *cnt += w;
                    }
                    AccState::Extreme(m) => {
                        let b = vals[i].as_ref().expect("encoded").row(r);
                        let e = m.entry(b.as_ref().to_vec()).or_insert(0);
                        *e += w;
                        if *e == 0 {
                            m.remove(b.as_ref());
                        } else if w > 0 && *e == w {
                            self.bytes += b.as_ref().len() + 32;
                        }
                    }
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        // Emit -old/+new for the groups whose row changed.
        let mut out_rows: Vec<(Vec<ScalarValue>, i64)> = vec![];
        let mut plus: Vec<(Vec<ScalarValue>, i64)> = vec![];
        for g in touched {
            let rows = self.groups[g].rows;
            if rows < 0 {
                return Err(Error::internal("an aggregate group has more retractions than rows"));
            }
            let new = if rows == 0 {
                None
            } else {
                let mut row = self.groups[g].key.clone();
                for i in 0..self.aggs.len() {
                    row.push(self.value(&self.groups[g], i)?);
                }
                Some(row)
            };
            let grp = &mut self.groups[g];
            if grp.emitted == new {
                continue;
            }
            if let Some(old) = grp.emitted.take() {
                out_rows.push((old, -1));
            }
            if let Some(new) = &new {
                plus.push((new.clone(), 1));
            }
            grp.emitted = new;
            if rows == 0 {
                self.index.remove(&grp.key_row);
                self.free.push(g);
            }
        }
        out_rows.extend(plus);
        if out_rows.is_empty() {
            return Ok(vec![]);
        }
        let nout = self.output_schema.fields().len() - 1;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(nout + 1);
        for c in 0..nout {
            let arr = ScalarValue::iter_to_array(out_rows.iter().map(|(r, _)| r[c].clone()))?;
            let want = self.output_schema.field(c).data_type();
            cols.push(if arr.data_type() == want { arr } else { cast(&arr, want)? });
        }
        cols.push(Arc::new(Int64Array::from_iter_values(out_rows.iter().map(|(_, w)| *w))));
        Ok(vec![RecordBatch::try_new(self.output_schema.clone(), cols)?])
    }

    fn state_size(&self) -> usize {
        self.bytes
    }

    /// One row per group: its key (row format), row count, last emitted row (row format) and
    /// the accumulators, serialized.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let out_conv = self.output_conv()?;
        let live: Vec<&Group> = self.index.values().map(|&g| &self.groups[g]).collect();
        let mut emitted: Vec<Option<Vec<u8>>> = vec![];
        for g in &live {
            emitted.push(match &g.emitted {
                Some(vals) => {
                    let cols = vals.iter().map(|v| v.to_array()).collect::<datafusion::error::Result<Vec<_>>>()?;
                    Some(out_conv.convert_columns(&cols)?.row(0).as_ref().to_vec())
                }
                None => None,
            });
        }
        let accs: Vec<Vec<u8>> = live
            .iter()
            .map(|g| {
                let mut b = vec![];
                for a in &g.accs {
                    match a {
                        AccState::Count(c) => b.extend_from_slice(&c.to_le_bytes()),
                        AccState::Sum(si, sf, n) => {
                            b.extend_from_slice(&si.to_le_bytes());
                            b.extend_from_slice(&sf.to_le_bytes());
                            b.extend_from_slice(&n.to_le_bytes());
                        }
                        AccState::Extreme(m) => {
                            b.extend_from_slice(&(m.len() as u64).to_le_bytes());
                            for (k, c) in m {
                                b.extend_from_slice(&(k.len() as u64).to_le_bytes());
                                b.extend_from_slice(k);
                                b.extend_from_slice(&c.to_le_bytes());
                            }
                        }
                    }
                }
                b
            })
            .collect();
        let batch = RecordBatch::try_from_iter(vec![
            (
                "key",
                Arc::new(BinaryArray::from_iter_values(live.iter().map(|g| g.key_row.as_ref().to_vec()))) as ArrayRef,
            ),
            ("rows", Arc::new(Int64Array::from_iter_values(live.iter().map(|g| g.rows))) as ArrayRef),
            ("emitted", Arc::new(BinaryArray::from_iter(emitted)) as ArrayRef),
            ("accs", Arc::new(BinaryArray::from_iter_values(accs)) as ArrayRef),
        ])?;
        Ok(vec![batch])
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let [b] = state.as_slice() else {
            return Err(Error::invalid_argument("a retracting aggregate's snapshot is one batch"));
        };
        let bad = || Error::invalid_argument("the aggregate snapshot was taken from a different plan");
        let col = |name: &str| b.column_by_name(name).ok_or_else(bad);
        let keys = col("key")?.as_binary_opt::<i32>().ok_or_else(bad)?.clone();
        let rows = col("rows")?.as_primitive_opt::<Int64Type>().ok_or_else(bad)?.clone();
        let emitted = col("emitted")?.as_binary_opt::<i32>().ok_or_else(bad)?.clone();
        let accs = col("accs")?.as_binary_opt::<i32>().ok_or_else(bad)?.clone();
        let out_conv = self.output_conv()?;
        self.groups.clear();
        self.index.clear();
        self.free.clear();
        self.bytes = 0;
        let key_parser = self.key_conv.parser();
        let out_parser = out_conv.parser();
        for i in 0..b.num_rows() {
            let key_row = key_parser.parse(keys.value(i)).owned();
            let key = if self.keys.is_empty() {
                vec![]
            } else {
                let arrays = self.key_conv.convert_rows([key_row.row()])?;
                arrays
                    .iter()
                    .map(|a| ScalarValue::try_from_array(a, 0))
                    .collect::<datafusion::error::Result<Vec<_>>>()?
            };
            let emitted = if emitted.is_null(i) {
                None
            } else {
                let arrays = out_conv.convert_rows([out_parser.parse(emitted.value(i))])?;
                Some(
                    arrays
                        .iter()
                        .map(|a| ScalarValue::try_from_array(a, 0))
                        .collect::<datafusion::error::Result<Vec<_>>>()?,
                )
            };
            let mut buf = accs.value(i);
            let mut take = |n: usize| -> Result<&[u8]> {
                if buf.len() < n {
                    return Err(bad());
                }
                let (h, t) = buf.split_at(n);
                buf = t;
                Ok(h)
            };
            let mut states = vec![];
            for a in &self.aggs {
                states.push(match a.fun {
                    RFun::Count => AccState::Count(i64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?)),
                    RFun::Sum | RFun::Avg => {
                        let si = i128::from_le_bytes(take(16)?.try_into().map_err(|_| bad())?);
                        let sf = f64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
                        let n = i64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
                        AccState::Sum(si, sf, n)
                    }
                    RFun::Min | RFun::Max => {
                        let len = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?) as usize;
                        let mut m = BTreeMap::new();
                        for _ in 0..len {
                            let kl = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?) as usize;
                            let k = take(kl)?.to_vec();
                            let c = i64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
                            m.insert(k, c);
                        }
                        AccState::Extreme(m)
                    }
                });
            }
            self.bytes += 64 + key_row.as_ref().len() * 2;
            self.index.insert(key_row.clone(), self.groups.len());
            self.groups.push(Group { key, key_row, rows: rows.value(i), accs: states, emitted });
        }
        Ok(())
    }
}

impl RetractAggregate {
    /// Row encoder of output rows (without `__weight`), for snapshots of the last emitted row.
    fn output_conv(&self) -> Result<RowConverter> {
        let f = self.output_schema.fields();
        Ok(RowConverter::new(f[..f.len() - 1].iter().map(|f| SortField::new(f.data_type().clone())).collect())?)
    }
}
