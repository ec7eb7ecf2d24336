//! The group table of one window of one partition of an aggregate.
//!
//! Group keys are kept in Arrow's row format with their hashes and a hash table of group indices;
//! each aggregate call has one DataFusion `GroupsAccumulator` over the table's groups. The table
//! also tracks which groups changed since the last emission (`dirty`), the values last emitted per
//! group (for change detection and retractions), whether its window has fired, and how many of its
//! groups are spilled to the RocksDB state backend.

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::row::{OwnedRow, RowConverter, Rows};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use hashbrown::HashTable;

use super::AggSpec;
use crate::error::Result;

/// One aggregate call's accumulator over a table's groups: DataFusion's, or the engine's own
/// `COUNT(DISTINCT)`, whose current values can be read without consuming its state.
pub(crate) enum Acc {
    Df(Box<dyn GroupsAccumulator>),
    Distinct(super::distinct::DistinctCount),
}

impl std::ops::Deref for Acc {
    type Target = dyn GroupsAccumulator;
    fn deref(&self) -> &Self::Target {
        match self {
            Acc::Df(a) => a.as_ref(),
            Acc::Distinct(a) => a,
        }
    }
}

impl std::ops::DerefMut for Acc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Acc::Df(a) => a.as_mut(),
            Acc::Distinct(a) => a,
        }
    }
}

/// Bytes counted for a group with no emitted values yet.
const PREV_NONE: usize = 8;

pub(super) struct GroupTable {
    pub(super) keys: Rows,
    pub(super) hashes: Vec<u64>,
    map: HashTable<u32>,
    pub(super) accs: Vec<Acc>,
    pub(super) dirty: Vec<u32>,
    is_dirty: Vec<bool>,
    /// Last emitted aggregate values per group (row format), for change detection.
    pub(super) prev: Vec<Option<OwnedRow>>,
    pub(super) fired: bool,
    /// Bytes `prev` holds (kept up to date by `set_prev`: `size` is called after every batch).
    prev_bytes: usize,
    /// Groups of this table spilled to the RocksDB state backend (disjoint from those in memory).
    pub(super) spilled: u64,
}

impl GroupTable {
    pub(super) fn new(key_conv: &RowConverter, aggs: &[AggSpec]) -> Result<Self> {
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

    pub(super) fn len(&self) -> usize {
        self.hashes.len()
    }

    pub(super) fn set_prev(&mut self, g: usize, row: Option<OwnedRow>) {
        let bytes = |p: &Option<OwnedRow>| p.as_ref().map_or(PREV_NONE, |r| r.as_ref().len() + 32);
        self.prev_bytes = self.prev_bytes - bytes(&self.prev[g]) + bytes(&row);
        self.prev[g] = row;
    }

    pub(super) fn size(&self) -> usize {
        self.keys.size()
            + self.hashes.capacity() * 8
            + self.map.capacity() * 4
            + self.accs.iter().map(|a| a.size()).sum::<usize>()
            + self.prev_bytes
    }

    #[inline]
    pub(super) fn group_of(&mut self, key_rows: Option<&Rows>, hash: u64, row: usize) -> u32 {
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

    pub(super) fn mark_dirty(&mut self, groups: &[usize]) {
        for &g in groups {
            if !self.is_dirty[g] {
                self.is_dirty[g] = true;
                self.dirty.push(g as u32);
            }
        }
    }

    pub(super) fn take_dirty(&mut self) -> Vec<u32> {
        let d = std::mem::take(&mut self.dirty);
        for &g in &d {
            self.is_dirty[g as usize] = false;
        }
        d
    }

    /// Current values of `groups` without consuming state. The engine's COUNT(DISTINCT) reads
    /// them; for DataFusion's accumulators the state of every group is drained, merged back, and
    /// the selected groups are evaluated on a scratch accumulator.
    pub(super) fn peek(&mut self, aggs: &[AggSpec], groups: &[u32]) -> Result<Vec<ArrayRef>> {
        let n = self.len();
        let all: Vec<usize> = (0..n).collect();
        let sel: Vec<usize> = (0..groups.len()).collect();
        let idx = UInt32Array::from(groups.to_vec());
        let mut out = Vec::with_capacity(aggs.len());
        for (acc, spec) in self.accs.iter_mut().zip(aggs) {
            if let Acc::Distinct(d) = acc {
                out.push(d.peek(groups));
                continue;
            }
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
    pub(super) fn finish(&mut self) -> Result<Vec<ArrayRef>> {
        self.accs.iter_mut().map(|a| Ok(a.evaluate(EmitTo::All)?)).collect()
    }

    /// A group for `key`, known not to be in the table (the hash map is not kept up to date:
    /// for scratch tables only).
    pub(super) fn push_unique(&mut self, key: datafusion::arrow::row::Row<'_>) -> usize {
        let g = self.hashes.len();
        self.keys.push(key);
        self.push_group(None, g as u32);
        g
    }

    /// Intermediate states of all groups, leaving them in place.
    pub(super) fn states(&mut self) -> Result<Vec<ArrayRef>> {
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
