//! The checkpoint format of an aggregate's state: snapshot and restore.
//!
//! A snapshot is one batch per group table (window bounds, fired flag, last emitted values, key
//! columns, accumulator states) and, with the RocksDB state backend, a meta batch naming the
//! tables that have groups in the store and under which operator id. Restore routes every group to
//! the partition its key hashes to now, and takes over the spilled groups, re-partitioning them in
//! the store when the number of partitions or the hash function changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::hash_utils::create_hashes;

use super::group_table::GroupTable;
use super::spill::DRAIN_CHUNK;
use super::{Aggregate, Partition};
use crate::error::{Error, Result};
use crate::state_store::{PREFIX_LEN, window_prefix};

impl Aggregate {
    /// One batch per group table: window bounds, fired flag, key columns, accumulator states and
    /// last emitted values (row format).
    pub(super) fn snapshot_state(&mut self) -> Result<Vec<RecordBatch>> {
        let mut out = vec![];
        if let Some(sp) = &self.spill {
            // Which tables have groups in the state store (checkpointed with it), and under
            // which operator id.
            let (mut parts, mut ends, mut starts, mut fired, mut spilled) = (vec![], vec![], vec![], vec![], vec![]);
            for (pi, part) in self.parts.iter().enumerate() {
                for (w, t) in &part.tables {
                    if t.spilled > 0 {
                        parts.push(pi as i64);
                        ends.push(w.0);
                        starts.push(w.1);
                        fired.push(t.fired);
                        spilled.push(t.spilled as i64);
                    }
                }
            }
            if !parts.is_empty() {
                let n = parts.len();
                let fields = [
                    "__spill_id",
                    "__partitions",
                    "__part",
                    "__end",
                    "__start",
                    "__fired",
                    "__spilled",
                    "__hash_probe",
                ];
                let probe = self.hash_probe()?;
                let cols: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from(vec![sp.id as i64; n])),
                    Arc::new(Int64Array::from(vec![self.parts.len() as i64; n])),
                    Arc::new(Int64Array::from(parts)),
                    Arc::new(Int64Array::from(ends)),
                    Arc::new(Int64Array::from(starts)),
                    Arc::new(BooleanArray::from(fired)),
                    Arc::new(Int64Array::from(spilled)),
                    Arc::new(Int64Array::from(vec![probe; n])),
                ];
                let schema = Schema::new(
                    fields
                        .iter()
                        .zip(&cols)
                        .map(|(f, c)| Field::new(*f, c.data_type().clone(), false))
                        .collect::<Vec<_>>(),
                );
                out.push(RecordBatch::try_new(Arc::new(schema), cols)?);
            }
        }
        for part in self.parts.iter_mut() {
            for (w, table) in part.tables.iter_mut() {
                let n = table.len();
                let mut fields = vec![
                    Field::new("__end", DataType::Int64, false),
                    Field::new("__start", DataType::Int64, false),
                    Field::new("__fired", DataType::Boolean, false),
                    Field::new("__prev", DataType::Binary, true),
                ];
                let mut cols: Vec<ArrayRef> = vec![
                    Arc::new(Int64Array::from(vec![w.0; n])),
                    Arc::new(Int64Array::from(vec![w.1; n])),
                    Arc::new(BooleanArray::from(vec![table.fired; n])),
                    Arc::new(BinaryArray::from_iter(
                        table.prev.iter().map(|p| p.as_ref().map(|r| r.as_ref().to_vec())),
                    )),
                ];
                if !self.key_exprs.is_empty() {
                    for (i, k) in self.key_conv.convert_rows(table.keys.iter())?.into_iter().enumerate() {
                        fields.push(Field::new(format!("__key{i}"), k.data_type().clone(), true));
                        cols.push(k);
                    }
                }
                for (i, s) in table.states()?.into_iter().enumerate() {
                    fields.push(Field::new(format!("__state{i}"), s.data_type().clone(), true));
                    cols.push(s);
                }
                out.push(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?);
            }
        }
        Ok(out)
    }

    /// Replaces the state with a snapshot's.
    pub(super) fn restore_state(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let p = self.parts.len();
        let spill_meta = state.iter().find(|b| is_spill_meta(b) && b.num_rows() > 0).cloned();
        // Checked before anything changes.
        if spill_meta.is_some() && self.spill.is_none() {
            return Err(Error::invalid_state(
                "this aggregate's state was saved with state_backend 'rocksdb' and part of it is in RocksDB: open the database with state_backend = 'rocksdb'",
            ));
        }
        if let Some(sp) = &self.spill {
            // This operator's own spilled groups give way to the restored state.
            sp.store.delete_prefix(&sp.id.to_be_bytes())?;
        }
        self.parts = (0..p).map(|_| Partition::default()).collect();
        let nkeys = self.key_exprs.len();
        // State columns per accumulator, from the plan: asking an accumulator (`state`) would
        // drain the groups its table already has.
        let widths = self.aggs.iter().map(|a| Ok(a.expr.state_fields()?.len())).collect::<Result<Vec<_>>>()?;
        for b in state {
            let n = b.num_rows();
            if n == 0 || is_spill_meta(&b) {
                continue;
            }
            let col = |i: usize| b.column(i).clone();
            let end = col(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0);
            let start = col(1).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0);
            let fired = col(2).as_boolean().value(0);
            let prev = col(3);
            let prev = prev.as_binary::<i32>();
            let keys: Vec<ArrayRef> = (0..nkeys).map(|i| col(4 + i)).collect();
            let states: Vec<ArrayRef> = (4 + nkeys..b.num_columns()).map(col).collect();
            let mut hashes = vec![0u64; n];
            if !keys.is_empty() {
                create_hashes(&keys, &self.random, &mut hashes)?;
            } else if self.window_cols.is_some() {
                let ws: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![start; n]));
                create_hashes([&ws], &self.random, &mut hashes)?;
            }
            let key_rows = if keys.is_empty() { None } else { Some(self.key_conv.convert_columns(&keys)?) };
            let parser = self.agg_conv.parser();
            // Route each group to its partition, then rebuild the tables there.
            for (pi, part) in self.parts.iter_mut().enumerate() {
                let rows: Vec<u32> = (0..n as u32).filter(|&r| hashes[r as usize] % p as u64 == pi as u64).collect();
                if rows.is_empty() {
                    continue;
                }
                // One table per window and partition: a window's groups come in one batch per
                // partition of the saving process, each of which may route to any partition here.
                let table = match part.tables.entry((end, start)) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(GroupTable::new(&self.key_conv, &self.aggs)?)
                    }
                };
                table.fired |= fired;
                let groups: Vec<usize> = rows
                    .iter()
                    .map(|&r| table.group_of(key_rows.as_ref(), hashes[r as usize], r as usize) as usize)
                    .collect();
                let idx = UInt32Array::from(rows.clone());
                let mut off = 0;
                for (acc, &width) in table.accs.iter_mut().zip(&widths) {
                    let st = states[off..off + width]
                        .iter()
                        .map(|s| take(s, &idx, None))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    off += width;
                    acc.merge_batch(&st, &groups, table.hashes.len())?;
                }
                for (&r, &g) in rows.iter().zip(&groups) {
                    if prev.is_valid(r as usize) {
                        table.set_prev(g, Some(parser.parse(prev.value(r as usize)).owned()));
                    }
                }
            }
        }
        if let Some(b) = spill_meta {
            self.adopt_spilled(&b)?;
        }
        Ok(())
    }

    /// A fixed value's hash: spilled groups sit under the partition their key hashed to, which
    /// holds only while the number of partitions and the hash function stay the same.
    fn hash_probe(&self) -> Result<i64> {
        let probe: ArrayRef = Arc::new(Int64Array::from(vec![0x6c61_6d69_6e61_72]));
        let mut h = vec![0u64];
        create_hashes([&probe], &self.random, &mut h)?;
        Ok(h[0] as i64)
    }

    /// Takes over the spilled groups a checkpoint's meta batch describes (their tables, counts
    /// and fired flags). Saved with another number of partitions (workers) or hash function,
    /// every spilled group is read and written again under the partition its key goes to now.
    fn adopt_spilled(&mut self, b: &RecordBatch) -> Result<()> {
        let p = self.parts.len();
        let col = |name: &str| {
            b.column_by_name(name).ok_or_else(|| Error::invalid_data(format!("spill meta column '{name}' missing")))
        };
        let int = |name: &str| -> Result<Int64Array> {
            Ok(col(name)?.as_primitive::<datafusion::arrow::datatypes::Int64Type>().clone())
        };
        let (id, nparts, part, end, start, spilled) = (
            int("__spill_id")?,
            int("__partitions")?,
            int("__part")?,
            int("__end")?,
            int("__start")?,
            int("__spilled")?,
        );
        let fired = col("__fired")?.as_boolean().clone();
        let same_hash = b.column_by_name("__hash_probe").is_some_and(|c| {
            c.as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0) == self.hash_probe().unwrap_or(0)
        });
        let saved_id = id.value(0) as u32;
        let mut counts: BTreeMap<(usize, (i64, i64)), u64> = BTreeMap::new();
        let mut fired_windows = std::collections::HashSet::new();
        for i in 0..b.num_rows() {
            let w = (end.value(i), start.value(i));
            if fired.value(i) {
                fired_windows.insert(w);
            }
            if same_hash && nparts.value(i) as usize == p {
                let pi = part.value(i) as usize;
                if pi >= p {
                    return Err(Error::invalid_data(format!("spill meta names partition {pi} of {p}")));
                }
                counts.insert((pi, w), spilled.value(i) as u64);
            }
        }
        if same_hash && nparts.value(0) as usize == p {
            self.spill.as_mut().expect("checked by restore").id = saved_id;
        } else {
            // Re-partition, under this operator's own (fresh) id, then drop the saved id's range.
            let sp = self.spill.as_ref().expect("checked by restore");
            let parser = self.key_conv.parser();
            sp.store.scan(&saved_id.to_be_bytes(), DRAIN_CHUNK, &mut |chunk| {
                let windows = chunk
                    .iter()
                    .map(|(k, _)| {
                        crate::state_store::key_window(k).ok_or_else(|| Error::invalid_data("a malformed spilled key"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let keys = self.key_conv.convert_rows(chunk.iter().map(|(k, _)| parser.parse(&k[PREFIX_LEN..])))?;
                let mut hashes = vec![0u64; chunk.len()];
                create_hashes(&keys, &self.random, &mut hashes)?;
                let mut items = Vec::with_capacity(chunk.len());
                for (((k, v), w), h) in chunk.into_iter().zip(windows).zip(hashes) {
                    let pi = (h % p as u64) as usize;
                    let mut nk = window_prefix(sp.id, pi as u16, w);
                    nk.extend_from_slice(&k[PREFIX_LEN..]);
                    items.push((nk, v));
                    *counts.entry((pi, w)).or_default() += 1;
                }
                sp.store.put(items)
            })?;
            sp.store.delete_prefix(&saved_id.to_be_bytes())?;
        }
        for ((pi, w), n) in counts {
            let table = match self.parts[pi].tables.entry(w) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(GroupTable::new(&self.key_conv, &self.aggs)?),
            };
            table.fired |= fired_windows.contains(&w);
            table.spilled += n;
        }
        Ok(())
    }
}

/// Whether a batch of an aggregate's saved state is the meta batch of its spilled groups (which
/// refers to a RocksDB state backend's contents).
pub(crate) fn is_spill_meta(b: &RecordBatch) -> bool {
    b.num_columns() > 0 && b.schema().field(0).name() == "__spill_id"
}
