//! Incremental hash aggregation, windowed (TUMBLE/HOP/CUMULATE rows assigned upstream by
//! [`super::window::WindowAssign`]) or not (a changelog over all input).
//!
//! State: per worker partition, per window, a group table (key rows in Arrow's row format, a hash
//! table of group indices) and one DataFusion `GroupsAccumulator` per aggregate, so every
//! DataFusion aggregate function works, vectorized, with the exact semantics of the batch engine.
//! Rows are routed to partitions by the hash of their group key (or of the window when there is
//! no key); partitions are updated in parallel on the database's worker pool.
//!
//! When a window fires (DESIGN §3):
//! ```text
//!  EMIT ON WINDOW CLOSE   wm >= end            emit all groups once
//!    + ALLOW LATENESS d   wm >= end + d        state dropped; until then late rows emit −old/+new
//!  EMIT FINAL             wm >= end + d        emit all groups once, drop state
//!  EMIT ON UPDATE         after each batch     changed groups' new values (upsert)
//!  EMIT CHANGES           after each batch     changed groups as −old/+new pairs
//!  EMIT EVERY t           every t (proc. time) groups changed since last tick (upsert)
//! ```
//! "Changed" means the emitted value differs from the one last emitted for that group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use hashbrown::HashTable;

use super::{NO_WATERMARK, OpCtx, Operator};
use crate::error::{Error, Result};
use crate::sql::EmitMode;
use crate::state_store::{PREFIX_LEN, StateStore, window_prefix};

/// One aggregate call: the DataFusion aggregate, its argument expressions (ordering expressions
/// appended, as DataFusion's own executor does) and its optional FILTER.
pub(crate) struct AggSpec {
    pub expr: Arc<AggregateFunctionExpr>,
    pub args: Vec<Arc<dyn PhysicalExpr>>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl AggSpec {
    fn new_acc(&self) -> Result<Box<dyn GroupsAccumulator>> {
        if self.expr.groups_accumulator_supported() {
            Ok(self.expr.create_groups_accumulator()?)
        } else {
            let e = self.expr.clone();
            Ok(Box::new(GroupsAccumulatorAdapter::new(move || e.create_accumulator())))
        }
    }
}

/// Where each GROUP BY output column comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum GroupCol {
    Key(usize),
    WindowStart,
    WindowEnd,
}

/// The window key of the non-windowed aggregate's single table.
const GLOBAL: (i64, i64) = (i64::MAX, i64::MIN);

/// Bytes counted for a group with no emitted values yet.
const PREV_NONE: usize = 8;

/// Spilled groups read back per chunk when a window fires.
const DRAIN_CHUNK: usize = 16_384;

/// The RocksDB state backend of one aggregate: groups of a table are written there (key: window
/// prefix + group key in row format; value: last emitted values + accumulator states in row
/// format) when the operator's memory passes `budget`, read back when a row of their group
/// arrives, and streamed out in chunks when their window fires.
struct Spill {
    store: Arc<StateStore>,
    id: u32,
    budget: usize,
    /// Row format of every accumulator's state columns, one after another (None: no aggregate).
    state_conv: Option<RowConverter>,
    /// State columns per accumulator.
    widths: Vec<usize>,
}

impl Spill {
    fn encode(&self, prev: Option<&OwnedRow>, state: &[u8]) -> Vec<u8> {
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
    fn decode(v: &[u8]) -> Result<(Option<&[u8]>, &[u8])> {
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
    fn load_new_groups(
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

struct GroupTable {
    keys: Rows,
    hashes: Vec<u64>,
    map: HashTable<u32>,
    accs: Vec<Box<dyn GroupsAccumulator>>,
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
    /// Last emitted aggregate values per group (row format), for change detection.
    prev: Vec<Option<OwnedRow>>,
    fired: bool,
    /// Bytes `prev` holds (kept up to date by `set_prev`: `size` is called after every batch).
    prev_bytes: usize,
    /// Groups of this table spilled to the RocksDB state backend (disjoint from those in memory).
    spilled: u64,
}

impl GroupTable {
    fn new(key_conv: &RowConverter, aggs: &[AggSpec]) -> Result<Self> {
        Ok(GroupTable {
            keys: key_conv.empty_rows(16, 256),
            hashes: vec![],
            map: HashTable::new(),
            accs: aggs.iter().map(|a| a.new_acc()).collect::<Result<_>>()?,
            dirty: vec![],
            is_dirty: vec![],
            prev: vec![],
            fired: false,
            prev_bytes: 0,
            spilled: 0,
        })
    }

    fn len(&self) -> usize {
        self.hashes.len()
    }

    fn set_prev(&mut self, g: usize, row: Option<OwnedRow>) {
        let bytes = |p: &Option<OwnedRow>| p.as_ref().map_or(PREV_NONE, |r| r.as_ref().len() + 32);
        self.prev_bytes = self.prev_bytes - bytes(&self.prev[g]) + bytes(&row);
        self.prev[g] = row;
    }

    fn size(&self) -> usize {
        self.keys.size()
            + self.hashes.capacity() * 8
            + self.map.capacity() * 4
            + self.accs.iter().map(|a| a.size()).sum::<usize>()
            + self.prev_bytes
    }

    #[inline]
    fn group_of(&mut self, key_rows: Option<&Rows>, hash: u64, row: usize) -> u32 {
        let Some(key_rows) = key_rows else {
            if self.hashes.is_empty() {
                self.push_group(None, 0);
            }
            return 0;
        };
        let key = key_rows.row(row);
        let keys = &self.keys;
        if let Some(g) = self.map.find(hash, |&g| keys.row(g as usize) == key) {
            return *g;
        }
        let g = self.hashes.len() as u32;
        self.keys.push(key);
        self.push_group(Some(hash), g);
        g
    }

    fn push_group(&mut self, hash: Option<u64>, g: u32) {
        let h = hash.unwrap_or(0);
        self.hashes.push(h);
        self.is_dirty.push(false);
        self.prev.push(None);
        self.prev_bytes += PREV_NONE;
        if hash.is_some() {
            let hashes = &self.hashes;
            self.map.insert_unique(h, g, |&x| hashes[x as usize]);
        }
    }

    fn mark_dirty(&mut self, groups: &[usize]) {
        for &g in groups {
            if !self.is_dirty[g] {
                self.is_dirty[g] = true;
                self.dirty.push(g as u32);
            }
        }
    }

    fn take_dirty(&mut self) -> Vec<u32> {
        let d = std::mem::take(&mut self.dirty);
        for &g in &d {
            self.is_dirty[g as usize] = false;
        }
        d
    }

    /// Current values of `groups` without consuming state: the accumulator state is drained,
    /// merged back, and the selected groups are evaluated on a scratch accumulator.
    fn peek(&mut self, aggs: &[AggSpec], groups: &[u32]) -> Result<Vec<ArrayRef>> {
        let n = self.len();
        let all: Vec<usize> = (0..n).collect();
        let sel: Vec<usize> = (0..groups.len()).collect();
        let idx = UInt32Array::from(groups.to_vec());
        let mut out = Vec::with_capacity(aggs.len());
        for (acc, spec) in self.accs.iter_mut().zip(aggs) {
            let state = acc.state(EmitTo::All)?;
            acc.merge_batch(&state, &all, n)?;
            let sub = state.iter().map(|s| take(s, &idx, None)).collect::<std::result::Result<Vec<_>, _>>()?;
            let mut scratch = spec.new_acc()?;
            scratch.merge_batch(&sub, &sel, groups.len())?;
            out.push(scratch.evaluate(EmitTo::All)?);
        }
        Ok(out)
    }

    /// Final values of all groups, consuming the accumulators.
    fn finish(&mut self) -> Result<Vec<ArrayRef>> {
        self.accs.iter_mut().map(|a| Ok(a.evaluate(EmitTo::All)?)).collect()
    }

    /// A group for `key`, known not to be in the table (the hash map is not kept up to date:
    /// for scratch tables only).
    fn push_unique(&mut self, key: datafusion::arrow::row::Row<'_>) -> usize {
        let g = self.hashes.len();
        self.keys.push(key);
        self.push_group(None, g as u32);
        g
    }

    /// Intermediate states of all groups, leaving them in place.
    fn states(&mut self) -> Result<Vec<ArrayRef>> {
        let n = self.len();
        let all: Vec<usize> = (0..n).collect();
        let mut out = vec![];
        for acc in self.accs.iter_mut() {
            let st = acc.state(EmitTo::All)?;
            acc.merge_batch(&st, &all, n)?;
            out.extend(st);
        }
        Ok(out)
    }
}

#[derive(Default)]
struct Partition {
    tables: BTreeMap<(i64, i64), GroupTable>,
}

/// Everything derived from one input batch that every partition reads.
struct BatchInput {
    n: usize,
    key_rows: Option<Rows>,
    hashes: Vec<u64>,
    /// (window_start, window_end) columns as µs values.
    windows: Option<(ArrayRef, ArrayRef)>,
    args: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<BooleanArray>>,
}

pub(crate) struct Aggregate {
    pub key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    pub layout: Vec<GroupCol>,
    pub aggs: Vec<AggSpec>,
    /// Input column indices of window_start / window_end, for windowed aggregation.
    pub window_cols: Option<(usize, usize)>,
    pub emit: EmitMode,
    pub lateness: i64,
    pub output_schema: SchemaRef,
    key_conv: RowConverter,
    agg_conv: RowConverter,
    parts: Vec<Partition>,
    random: RandomState,
    spill: Option<Spill>,
}

impl Aggregate {
    pub(crate) fn try_new(
        key_exprs: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<DataType>,
        layout: Vec<GroupCol>,
        aggs: Vec<AggSpec>,
        window_cols: Option<(usize, usize)>,
        emit: EmitMode,
        lateness: i64,
        output_schema: SchemaRef,
        partitions: usize,
    ) -> Result<Self> {
        let key_conv = RowConverter::new(key_types.into_iter().map(SortField::new).collect())?;
        // With no aggregate (SELECT DISTINCT, GROUP BY alone) the value rows are one constant.
        let agg_conv = RowConverter::new(if aggs.is_empty() {
            vec![SortField::new(DataType::Boolean)]
        } else {
            aggs.iter().map(|a| SortField::new(a.expr.field().data_type().clone())).collect()
        })?;
        Ok(Aggregate {
            key_exprs,
            layout,
            aggs,
            window_cols,
            emit,
            lateness,
            output_schema,
            key_conv,
            agg_conv,
            parts: (0..partitions.max(1)).map(|_| Partition::default()).collect(),
            // A fixed seed (foldhash's FixedState): a group goes to the same partition in every
            // process, so its spilled state is found under that partition's prefix after a reopen.
            random: RandomState::default(),
            spill: None,
        })
    }

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
    fn drain_spilled(
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
    fn forget_spilled(&self, part: usize, w: (i64, i64), table: &GroupTable) -> Result<()> {
        match &self.spill {
            Some(sp) if table.spilled > 0 => sp.store.delete_prefix(&window_prefix(sp.id, part as u16, w)),
            _ => Ok(()),
        }
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

    /// With a state store: once the tables in memory pass the budget, spills whole tables,
    /// largest first, until they are under half of it. Tables with changes still to emit stay.
    fn maybe_spill(&mut self) -> Result<()> {
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

    fn changelog(&self) -> bool {
        self.output_schema.fields().last().is_some_and(|f| f.name() == super::WEIGHT_COLUMN)
    }

    fn tracks_changes(&self) -> bool {
        matches!(self.emit, EmitMode::OnUpdate | EmitMode::Changes | EmitMode::Every(_))
            || (self.emit == EmitMode::OnWindowClose && self.lateness > 0)
    }

    fn prepare(&self, batch: &RecordBatch) -> Result<BatchInput> {
        let n = batch.num_rows();
        let keys: Vec<ArrayRef> = self
            .key_exprs
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<_>>()?;
        let windows = self.window_cols.map(|(s, e)| (batch.column(s).clone(), batch.column(e).clone()));
        let mut hashes = vec![0u64; n];
        if !keys.is_empty() {
            create_hashes(&keys, &self.random, &mut hashes)?;
        } else if let Some((ws, _)) = &windows {
            create_hashes([ws], &self.random, &mut hashes)?;
        }
        let key_rows = if keys.is_empty() { None } else { Some(self.key_conv.convert_columns(&keys)?) };
        let mut args = Vec::with_capacity(self.aggs.len());
        let mut filters = Vec::with_capacity(self.aggs.len());
        for a in &self.aggs {
            args.push(
                a.args
                    .iter()
                    .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::error::Result<Vec<_>>>()?,
            );
            filters.push(match &a.filter {
                Some(f) => Some(f.evaluate(batch)?.into_array(n)?.as_boolean().clone()),
                None => None,
            });
        }
        Ok(BatchInput { n, key_rows, hashes, windows, args, filters })
    }

    /// Updates one partition with `rows` of the batch (all rows when `None`).
    #[allow(clippy::too_many_arguments)]
    fn update_partition(
        part: &mut Partition,
        pi: usize,
        input: &BatchInput,
        rows: Option<&[u32]>,
        key_conv: &RowConverter,
        aggs: &[AggSpec],
        track: bool,
        spill: Option<(&Spill, &RowConverter)>,
    ) -> Result<()> {
        // Group the rows by window. Most batches touch one or two windows.
        let mut by_window: Vec<((i64, i64), Vec<u32>)> = vec![];
        let row_iter: Box<dyn Iterator<Item = u32>> = match rows {
            Some(r) => Box::new(r.iter().copied()),
            None => Box::new(0..input.n as u32),
        };
        match &input.windows {
            None => by_window.push((GLOBAL, row_iter.collect())),
            Some((ws, we)) => {
                let ws = super::window::ts_values(ws);
                let we = super::window::ts_values(we);
                let mut last = usize::MAX;
                for r in row_iter {
                    let w = (we[r as usize], ws[r as usize]);
                    if last != usize::MAX && by_window[last].0 == w {
                        by_window[last].1.push(r);
                        continue;
                    }
                    last = match by_window.iter().position(|(k, _)| *k == w) {
                        Some(p) => p,
                        None => {
                            by_window.push((w, vec![]));
                            by_window.len() - 1
                        }
                    };
                    by_window[last].1.push(r);
                }
            }
        }
        for (w, rws) in by_window {
            if rws.is_empty() {
                continue;
            }
            let table = match part.tables.entry(w) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(GroupTable::new(key_conv, aggs)?),
            };
            let before = table.len();
            let groups: Vec<usize> = rws
                .iter()
                .map(|&r| table.group_of(input.key_rows.as_ref(), input.hashes[r as usize], r as usize) as usize)
                .collect();
            if let Some((sp, agg_conv)) = spill {
                sp.load_new_groups(pi, w, table, before, agg_conv)?;
            }
            let whole = rws.len() == input.n;
            let idx = (!whole).then(|| UInt32Array::from(rws.clone()));
            let total = table.len();
            for (i, acc) in table.accs.iter_mut().enumerate() {
                let (vals, filt): (Vec<ArrayRef>, Option<BooleanArray>) = match &idx {
                    None => (input.args[i].clone(), input.filters[i].clone()),
                    Some(idx) => (
                        input.args[i].iter().map(|a| take(a, idx, None)).collect::<std::result::Result<_, _>>()?,
                        match &input.filters[i] {
                            Some(f) => Some(take(f, idx, None)?.as_boolean().clone()),
                            None => None,
                        },
                    ),
                };
                acc.update_batch(&vals, &groups, filt.as_ref(), total)?;
            }
            if track {
                table.mark_dirty(&groups);
            }
        }
        Ok(())
    }

    /// Builds output rows for `groups` of one table: group columns, aggregate values, weight.
    fn output(
        &self,
        table: &GroupTable,
        window: (i64, i64),
        groups: Option<&[u32]>,
        values: Vec<ArrayRef>,
        weight: Option<i64>,
    ) -> Result<RecordBatch> {
        let n = values.first().map(|v| v.len()).unwrap_or_else(|| groups.map_or(table.len(), |g| g.len()));
        let key_cols: Vec<ArrayRef> = if self.key_exprs.is_empty() {
            vec![]
        } else {
            match groups {
                None => self.key_conv.convert_rows(table.keys.iter())?,
                Some(g) => self.key_conv.convert_rows(g.iter().map(|&g| table.keys.row(g as usize)))?,
            }
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.output_schema.fields().len());
        for gc in &self.layout {
            cols.push(match gc {
                GroupCol::Key(i) => key_cols[*i].clone(),
                GroupCol::WindowStart => Arc::new(TimestampMicrosecondArray::from(vec![window.1; n])),
                GroupCol::WindowEnd => Arc::new(TimestampMicrosecondArray::from(vec![window.0; n])),
            });
        }
        cols.extend(values);
        if let Some(w) = weight {
            cols.push(Arc::new(Int64Array::from(vec![w; n])));
        }
        let cols = cols
            .into_iter()
            .zip(self.output_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() { Ok(c) } else { datafusion::arrow::compute::cast(&c, f.data_type()) }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(self.output_schema.clone(), cols)?)
    }

    fn agg_rows(&self, values: &[ArrayRef], n: usize) -> Result<Rows> {
        if self.aggs.is_empty() {
            Ok(self.agg_conv.convert_columns(&[Arc::new(BooleanArray::from(vec![true; n])) as ArrayRef])?)
        } else {
            Ok(self.agg_conv.convert_columns(values)?)
        }
    }

    /// Emits the changed groups of one table: upserts, or −old/+new pairs for changelogs.
    fn emit_changes(&self, table: &mut GroupTable, window: (i64, i64), out: &mut Vec<RecordBatch>) -> Result<()> {
        let dirty = table.take_dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        let values = table.peek(&self.aggs, &dirty)?;
        let rows = self.agg_rows(&values, dirty.len())?;
        let mut retract_groups = vec![];
        let mut retract_rows: Vec<OwnedRow> = vec![];
        let mut insert_pos: Vec<u32> = vec![];
        for (i, &g) in dirty.iter().enumerate() {
            let new = rows.row(i);
            match &table.prev[g as usize] {
                Some(p) if p.row() == new => continue,
                Some(p) => {
                    retract_groups.push(g);
                    retract_rows.push(p.clone());
                }
                None => {}
            }
            insert_pos.push(i as u32);
            table.set_prev(g as usize, Some(new.owned()));
        }
        let changelog = self.changelog();
        if changelog && !retract_groups.is_empty() {
            let old = self.agg_conv.convert_rows(retract_rows.iter().map(|r| r.row()))?;
            let old = if self.aggs.is_empty() { vec![] } else { old };
            out.push(self.output(table, window, Some(&retract_groups), old, Some(-1))?);
        }
        if !insert_pos.is_empty() {
            let idx = UInt32Array::from(insert_pos.clone());
            let groups: Vec<u32> = insert_pos.iter().map(|&i| dirty[i as usize]).collect();
            let vals = values.iter().map(|v| take(v, &idx, None)).collect::<std::result::Result<Vec<_>, _>>()?;
            out.push(self.output(table, window, Some(&groups), vals, changelog.then_some(1))?);
        }
        Ok(())
    }

    fn concat(&self, out: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let out: Vec<RecordBatch> = out.into_iter().filter(|b| b.num_rows() > 0).collect();
        if out.len() <= 1 {
            return Ok(out);
        }
        Ok(vec![concat_batches(&self.output_schema, &out)?])
    }
}

impl Operator for Aggregate {
    fn explain(&self) -> String {
        let aggs: Vec<String> = self.aggs.iter().map(|a| a.expr.name().to_string()).collect();
        let keys: Vec<String> = self.key_exprs.iter().map(|k| k.to_string()).collect();
        format!(
            "{}Aggregate: keys=[{}{}] aggs=[{}] emit={}{} partitions={}",
            if self.window_cols.is_some() { "Window" } else { "Group" },
            keys.join(", "),
            if self.window_cols.is_some() { if keys.is_empty() { "window" } else { ", window" } } else { "" },
            aggs.join(", "),
            self.emit,
            if self.lateness > 0 {
                format!(" lateness={}", crate::util::fmt_duration_us(self.lateness))
            } else {
                String::new()
            },
            self.parts.len()
        )
    }

    fn process_batch(&mut self, batch: RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        if batch.num_rows() == 0 {
            return Ok(vec![]);
        }
        let input = self.prepare(&batch)?;
        let track = self.tracks_changes();
        let p = self.parts.len();
        let spill = self.spill.as_ref().map(|s| (s, &self.agg_conv));
        if p == 1 {
            Self::update_partition(&mut self.parts[0], 0, &input, None, &self.key_conv, &self.aggs, track, spill)?;
        } else {
            let mut rows: Vec<Vec<u32>> = vec![Vec::with_capacity(input.n / p + 16); p];
            for (i, h) in input.hashes.iter().enumerate() {
                rows[(*h % p as u64) as usize].push(i as u32);
            }
            let (key_conv, aggs) = (&self.key_conv, &self.aggs);
            let work = |(pi, (part, rows)): (usize, (&mut Partition, &Vec<u32>))| -> Result<()> {
                if rows.is_empty() {
                    return Ok(());
                }
                Self::update_partition(part, pi, &input, Some(rows), key_conv, aggs, track, spill)
            };
            match ctx.pool {
                Some(pool) => pool.install(|| {
                    use rayon::prelude::*;
                    self.parts.par_iter_mut().zip(rows.par_iter()).enumerate().try_for_each(work)
                })?,
                None => self.parts.iter_mut().zip(rows.iter()).enumerate().try_for_each(work)?,
            }
        }
        // Emissions after the batch.
        let mut out = vec![];
        let mut parts = std::mem::take(&mut self.parts);
        let res = (|| -> Result<()> {
            for part in parts.iter_mut() {
                for (w, table) in part.tables.iter_mut() {
                    let emit_now = match self.emit {
                        EmitMode::OnUpdate | EmitMode::Changes => true,
                        EmitMode::OnWindowClose => table.fired,
                        _ => false,
                    };
                    if emit_now {
                        self.emit_changes(table, *w, &mut out)?;
                    }
                }
            }
            Ok(())
        })();
        self.parts = parts;
        res?;
        self.maybe_spill()?;
        self.concat(out)
    }

    fn on_watermark(&mut self, wm: i64, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        if self.window_cols.is_none() || wm == NO_WATERMARK {
            return Ok(vec![]);
        }
        let mut out = vec![];
        let mut parts = std::mem::take(&mut self.parts);
        let res = (|| -> Result<()> {
            for (pi, part) in parts.iter_mut().enumerate() {
                let mut closed = vec![];
                for (w, table) in part.tables.iter_mut() {
                    let (end, _start) = *w;
                    if end > wm {
                        break; // ordered by end
                    }
                    let close = wm >= end.saturating_add(self.lateness);
                    // Every group's final values, once; the state goes with the window.
                    let finishes = match self.emit {
                        EmitMode::OnWindowClose => self.lateness == 0,
                        EmitMode::Final => close,
                        _ => false,
                    };
                    let mut finish = |table: &mut GroupTable| -> Result<()> {
                        let vals = table.finish()?;
                        out.push(self.output(table, *w, None, vals, None)?);
                        Ok(())
                    };
                    match self.emit {
                        _ if finishes => {
                            finish(table)?;
                            if table.spilled > 0 {
                                self.drain_spilled(pi, *w, false, &mut finish)?;
                            }
                        }
                        EmitMode::OnWindowClose if !table.fired => {
                            table.fired = true;
                            table.take_dirty();
                            let mut fire = |table: &mut GroupTable| -> Result<()> {
                                let all: Vec<u32> = (0..table.len() as u32).collect();
                                let vals = table.peek(&self.aggs, &all)?;
                                let rows = self.agg_rows(&vals, table.len())?;
                                for g in 0..table.len() {
                                    table.set_prev(g, Some(rows.row(g).owned()));
                                }
                                out.push(self.output(table, *w, None, vals, Some(1))?);
                                Ok(())
                            };
                            fire(table)?;
                            if table.spilled > 0 {
                                self.drain_spilled(pi, *w, true, &mut fire)?;
                            }
                        }
                        EmitMode::Every(_) if close => self.emit_changes(table, *w, &mut out)?,
                        _ => {}
                    }
                    if close {
                        closed.push(*w);
                    }
                }
                for w in closed {
                    if let Some(t) = part.tables.remove(&w) {
                        self.forget_spilled(pi, w, &t)?;
                    }
                }
            }
            Ok(())
        })();
        self.parts = parts;
        res?;
        self.concat(out)
    }

    fn tick_interval(&self) -> Option<Duration> {
        match self.emit {
            EmitMode::Every(d) => Some(d),
            _ => None,
        }
    }

    fn on_tick(&mut self, _ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let mut out = vec![];
        let mut parts = std::mem::take(&mut self.parts);
        let res = (|| -> Result<()> {
            for part in parts.iter_mut() {
                for (w, table) in part.tables.iter_mut() {
                    self.emit_changes(table, *w, &mut out)?;
                }
            }
            Ok(())
        })();
        self.parts = parts;
        res?;
        self.maybe_spill()?;
        self.concat(out)
    }

    fn state_size(&self) -> usize {
        self.parts.iter().flat_map(|p| p.tables.values()).map(|t| t.size()).sum()
    }

    fn spilled_groups(&self) -> u64 {
        self.parts.iter().flat_map(|p| p.tables.values()).map(|t| t.spilled).sum()
    }

    /// One batch per group table: window bounds, fired flag, key columns, accumulator states and
    /// last emitted values (row format).
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
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

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
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
}

/// Whether a batch of an aggregate's saved state is the meta batch of its spilled groups (which
/// refers to a RocksDB state backend's contents).
pub(crate) fn is_spill_meta(b: &RecordBatch) -> bool {
    b.num_columns() > 0 && b.schema().field(0).name() == "__spill_id"
}

/// Errors for features this operator does not offer, named so users see what to change.
pub(crate) fn check_emit(emit: EmitMode, windowed: bool) -> Result<()> {
    if !windowed && matches!(emit, EmitMode::OnWindowClose | EmitMode::Final) {
        return Err(Error::plan(format!(
            "EMIT {emit} needs a windowed aggregate (GROUP BY TUMBLE/HOP/SESSION/CUMULATE); a non-windowed GROUP BY emits CHANGES, ON UPDATE or EVERY"
        )));
    }
    Ok(())
}

impl Drop for Aggregate {
    /// A dropped aggregate's spilled groups go with it (DROP, CREATE OR REPLACE, close).
    fn drop(&mut self) {
        if let Some(sp) = &self.spill {
            let _ = sp.store.delete_prefix(&sp.id.to_be_bytes());
        }
    }
}
