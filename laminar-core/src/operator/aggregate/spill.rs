//! Spilling an aggregate's groups to the RocksDB state backend.
//!
//! [`Spill`] owns the codec of a spilled group (key: window prefix + group key in row format;
//! value: last emitted values + accumulator states in row format) and moves whole group tables to
//! the store and single groups back. The `impl Aggregate` here decides when to spill
//! (`maybe_spill`), streams a firing window's spilled groups back in chunks (`drain_spilled`) and
//! drops a closed window's (`forget_spilled`).

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::logical_expr::EmitTo;

use super::group_table::GroupTable;
use super::{AggSpec, Aggregate};
use crate::error::{Error, Result};
use crate::sql::EmitMode;
use crate::state_store::{PREFIX_LEN, StateStore, window_prefix};

/// Spilled groups read back per chunk when a window fires.
pub(super) const DRAIN_CHUNK: usize = 16_384;

/// The RocksDB state backend of one aggregate: groups of a table are written there (key: window
/// prefix + group key in row format; value: last emitted values + accumulator states in row
/// format) when the operator's memory passes `budget`, read back when a row of their group
/// arrives, and streamed out in chunks when their window fires.
pub(super) struct Spill {
    pub(super) store: Arc<StateStore>,
    pub(super) id: u32,
    budget: usize,
    /// Row format of every accumulator's state columns, one after another (None: no aggregate).
    state_conv: Option<RowConverter>,
    /// State columns per accumulator.
    widths: Vec<usize>,
}

impl Spill {
    pub(super) fn encode(&self, prev: Option<&OwnedRow>, state: &[u8]) -> Vec<u8> {
        let p = prev.map(|r| r.as_ref());
        let mut v = Vec::with_capacity(5 + p.map_or(0, |p| p.len()) + state.len());
        match p {
            Some(p) => {
                v.push(1);
                v.extend_from_slice(&(p.len() as u32).to_le_bytes());
                v.extend_from_slice(p);
            }
            None => v.push(0),
        }
        v.extend_from_slice(state);
        v
    }

    /// (last emitted values, state) of an encoded value.
    pub(super) fn decode(v: &[u8]) -> Result<(Option<&[u8]>, &[u8])> {
        let bad = || Error::internal("a spilled aggregate state is malformed");
        match v.first() {
            Some(0) => Ok((None, &v[1..])),
            Some(1) if v.len() >= 5 => {
                let n = u32::from_le_bytes([v[1], v[2], v[3], v[4]]) as usize;
                let p = v.get(5..5 + n).ok_or_else(bad)?;
                Ok((Some(p), &v[5 + n..]))
            }
            _ => Err(bad()),
        }
    }

    /// Merges encoded states into `groups` of `table` and sets their last emitted values.
    fn merge_into(
        &self,
        table: &mut GroupTable,
        groups: &[usize],
        values: &[&[u8]],
        agg_conv: &RowConverter,
    ) -> Result<()> {
        let mut states = Vec::with_capacity(values.len());
        let parser = agg_conv.parser();
        for (&g, &v) in groups.iter().zip(values) {
            let (prev, state) = Spill::decode(v)?;
            table.set_prev(g, prev.map(|p| parser.parse(p).owned()));
            states.push(state);
        }
        if let Some(conv) = &self.state_conv {
            let sp = conv.parser();
            let cols = conv.convert_rows(states.iter().map(|s| sp.parse(s)))?;
            let total = table.len();
            let mut off = 0;
            for (acc, &w) in table.accs.iter_mut().zip(&self.widths) {
                acc.merge_batch(&cols[off..off + w], groups, total)?;
                off += w;
            }
        }
        Ok(())
    }

    /// Writes every group of `table` to the store and empties it (keeping `fired`).
    fn spill_table(
        &self,
        part: usize,
        window: (i64, i64),
        table: &mut GroupTable,
        key_conv: &RowConverter,
        aggs: &[AggSpec],
    ) -> Result<()> {
        let n = table.len();
        let prefix = window_prefix(self.id, part as u16, window);
        let mut states: Vec<ArrayRef> = vec![];
        for acc in table.accs.iter_mut() {
            states.extend(acc.state(EmitTo::All)?);
        }
        let rows = match &self.state_conv {
            Some(c) => Some(c.convert_columns(&states).map_err(|e| {
                Error::internal(format!("state_backend 'rocksdb': an accumulator's state does not match its declared state fields ({e}); use state_backend 'memory' for this query"))
            })?),
            None => None,
        };
        let mut items = Vec::with_capacity(n);
        for g in 0..n {
            let mut k = prefix.clone();
            k.extend_from_slice(table.keys.row(g).as_ref());
            let row = rows.as_ref().map(|r| r.row(g));
            let state = row.as_ref().map_or(&[][..], |r| r.as_ref());
            items.push((k, self.encode(table.prev[g].as_ref(), state)));
        }
        // Written first: if the write fails, the groups are still in memory (their
        // accumulators drained, so the stream fails — but nothing is counted as spilled).
        self.store.put(items)?;
        let mut fresh = GroupTable::new(key_conv, aggs)?;
        fresh.fired = table.fired;
        fresh.spilled = table.spilled + n as u64;
        *table = fresh;
        Ok(())
    }

    /// Moves the spilled state of groups `from..` of `table` (just created for rows of this
    /// batch) back into memory, before the batch updates them.
    pub(super) fn load_new_groups(
        &self,
        part: usize,
        window: (i64, i64),
        table: &mut GroupTable,
        from: usize,
        agg_conv: &RowConverter,
    ) -> Result<()> {
        let n = table.len();
        if table.spilled == 0 || from >= n {
            return Ok(());
        }
        let prefix = window_prefix(self.id, part as u16, window);
        let keys: Vec<Vec<u8>> = (from..n)
            .map(|g| {
                let mut k = prefix.clone();
                k.extend_from_slice(table.keys.row(g).as_ref());
                k
            })
            .collect();
        let found = self.store.get_many(&keys)?;
        let mut groups = vec![];
        let mut values: Vec<&[u8]> = vec![];
        let mut taken = vec![];
        for ((i, v), k) in found.iter().enumerate().zip(keys) {
            if let Some(v) = v {
                groups.push(from + i);
                values.push(v);
                taken.push(k);
            }
        }
        if groups.is_empty() {
            return Ok(());
        }
        // Merged, then deleted: a group is never in neither place.
        self.merge_into(table, &groups, &values, agg_conv)?;
        self.store.delete(&taken)?;
        table.spilled = table.spilled.saturating_sub(groups.len() as u64);
        Ok(())
    }
}

impl Aggregate {
    /// Spills groups to `store` once the operator holds more than `budget` bytes in memory.
    /// Aggregates without GROUP BY keys (one group per window) never spill.
    pub(crate) fn with_state_store(mut self, store: Arc<StateStore>, budget: usize) -> Result<Self> {
        if self.key_exprs.is_empty() {
            return Ok(self);
        }
        let mut fields = vec![];
        let mut widths = vec![];
        for a in &self.aggs {
            let f = a.expr.state_fields()?;
            widths.push(f.len());
            fields.extend(f.iter().map(|f| SortField::new(f.data_type().clone())));
        }
        let state_conv = if fields.is_empty() {
            None
        } else {
            Some(RowConverter::new(fields).map_err(|e| {
                Error::plan(format!("state_backend 'rocksdb' cannot store the state of this aggregate ({e}); use state_backend 'memory' for this query"))
            })?)
        };
        let id = store.new_id()?;
        self.spill = Some(Spill { store, id, budget, state_conv, widths });
        Ok(self)
    }

    /// Streams the spilled groups of window `w` of partition `part` through `f`, a scratch table
    /// per chunk. With `write_back`, the groups' last emitted values are stored again afterwards.
    pub(super) fn drain_spilled(
        &self,
        part: usize,
        w: (i64, i64),
        write_back: bool,
        f: &mut dyn FnMut(&mut GroupTable) -> Result<()>,
    ) -> Result<()> {
        let Some(sp) = &self.spill else { return Ok(()) };
        let prefix = window_prefix(sp.id, part as u16, w);
        let parser = self.key_conv.parser();
        sp.store.scan(&prefix, DRAIN_CHUNK, &mut |chunk| {
            let mut t = GroupTable::new(&self.key_conv, &self.aggs)?;
            let mut groups = Vec::with_capacity(chunk.len());
            for (k, _) in &chunk {
                groups.push(t.push_unique(parser.parse(&k[PREFIX_LEN..])));
            }
            let values: Vec<&[u8]> = chunk.iter().map(|(_, v)| v.as_slice()).collect();
            sp.merge_into(&mut t, &groups, &values, &self.agg_conv)?;
            f(&mut t)?;
            if write_back {
                let items = chunk
                    .into_iter()
                    .enumerate()
                    .map(|(g, (k, v))| Ok((k, sp.encode(t.prev[g].as_ref(), Spill::decode(&v)?.1))))
                    .collect::<Result<Vec<_>>>()?;
                sp.store.put(items)?;
            }
            Ok(())
        })
    }

    /// Drops a closed window's spilled groups.
    pub(super) fn forget_spilled(&self, part: usize, w: (i64, i64), table: &GroupTable) -> Result<()> {
        match &self.spill {
            Some(sp) if table.spilled > 0 => sp.store.delete_prefix(&window_prefix(sp.id, part as u16, w)),
            _ => Ok(()),
        }
    }

    /// With a state store: once the tables in memory pass the budget, spills whole tables,
    /// largest first, until they are under half of it. Tables with changes still to emit stay.
    pub(super) fn maybe_spill(&mut self) -> Result<()> {
        let Some(sp) = &self.spill else { return Ok(()) };
        let mut total = 0usize;
        let mut candidates = vec![];
        for (pi, part) in self.parts.iter().enumerate() {
            for (w, t) in &part.tables {
                let size = t.size();
                total += size;
                // An unfired ON WINDOW CLOSE table emits all its groups when it fires: its change
                // marks do not matter.
                let emitted = t.dirty.is_empty() || (self.emit == EmitMode::OnWindowClose && !t.fired);
                if t.len() > 0 && emitted {
                    candidates.push((size, pi, *w));
                }
            }
        }
        if total <= sp.budget {
            return Ok(());
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (size, pi, w) in candidates {
            if total <= sp.budget / 2 {
                break;
            }
            let t = self.parts[pi].tables.get_mut(&w).expect("candidate");
            sp.spill_table(pi, w, t, &self.key_conv, &self.aggs)?;
            total = total.saturating_sub(size);
        }
        Ok(())
    }
}
