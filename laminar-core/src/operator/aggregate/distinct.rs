//! `COUNT(DISTINCT x)` over the groups of a table, with values read without consuming the state.
//!
//! DataFusion's accumulators give a group's current value only by draining the state of every
//! group (`state(EmitTo::All)`); an aggregate that emits changes after each batch would then copy
//! every distinct value seen, of every group, per batch. Here each group keeps its distinct values
//! (Arrow row format, with their hashes and a hash table), and [`DistinctCount::peek`] reads the
//! counts of the groups asked for. State and merge use DataFusion's state layout for COUNT
//! DISTINCT (a list of the values per group), so checkpoints and spilled state are unchanged.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use hashbrown::HashTable;

/// The distinct values of one group.
struct ValueSet {
    rows: Rows,
    hashes: Vec<u64>,
    map: HashTable<u32>,
}

impl ValueSet {
    fn size(&self) -> usize {
        self.rows.size() + self.hashes.capacity() * 8 + self.map.capacity() * 5 + std::mem::size_of::<Self>()
    }
}

pub(crate) struct DistinctCount {
    /// The value type (the list item type of the state).
    value_type: DataType,
    conv: RowConverter,
    random: RandomState,
    groups: Vec<Option<ValueSet>>,
    /// Bytes held by the groups' sets.
    bytes: usize,
}

impl std::fmt::Debug for DistinctCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DistinctCount({}, {} groups)", self.value_type, self.groups.len())
    }
}

type DfResult<T> = datafusion::error::Result<T>;

impl DistinctCount {
    pub(crate) fn new(value_type: DataType) -> DfResult<Self> {
        let conv = RowConverter::new(vec![SortField::new(value_type.clone())])?;
        Ok(DistinctCount { value_type, conv, random: RandomState::default(), groups: vec![], bytes: 0 })
    }

    /// A dictionary-encoded input as its values (the state holds plain values).
    fn plain(&self, values: &ArrayRef) -> DfResult<ArrayRef> {
        Ok(match values.data_type() {
            DataType::Dictionary(..) => datafusion::arrow::compute::cast(values, &self.value_type)?,
            _ => values.clone(),
        })
    }

    /// Adds the non-null values of `values` selected by `rows` (`(row, group)` pairs).
    fn insert(&mut self, values: &ArrayRef, pairs: impl Iterator<Item = (usize, usize)>) -> DfResult<()> {
        let values = self.plain(values)?;
        let rows = self.conv.convert_columns(std::slice::from_ref(&values))?;
        let mut hashes = vec![0; values.len()];
        create_hashes(std::slice::from_ref(&values), &self.random, &mut hashes)?;
        for (r, g) in pairs {
            if values.is_null(r) {
                continue;
            }
            let set = match &mut self.groups[g] {
                Some(set) => set,
                slot => {
                    let set = ValueSet { rows: self.conv.empty_rows(4, 32), hashes: vec![], map: HashTable::new() };
                    self.bytes += set.size();
                    slot.insert(set)
                }
            };
            let (h, row) = (hashes[r], rows.row(r));
            let known = &set.rows;
            if set.map.find(h, |&i| known.row(i as usize) == row).is_some() {
                continue;
            }
            let before = set.size();
            let i = set.hashes.len() as u32;
            set.rows.push(row);
            set.hashes.push(h);
            let hs = &set.hashes;
            set.map.insert_unique(h, i, |&x| hs[x as usize]);
            self.bytes = self.bytes + set.size() - before;
        }
        Ok(())
    }

    fn resize(&mut self, total: usize) {
        if self.groups.len() < total {
            self.groups.resize_with(total, || None);
        }
    }

    /// The groups `emit_to` takes, removed from the table.
    fn take(&mut self, emit_to: EmitTo) -> Vec<Option<ValueSet>> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.bytes -= taken.iter().flatten().map(ValueSet::size).sum::<usize>();
        taken
    }

    /// The current counts of `groups`, leaving the state as it is.
    pub(crate) fn peek(&self, groups: &[u32]) -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            groups
                .iter()
                .map(|&g| self.groups.get(g as usize).and_then(|s| s.as_ref()).map_or(0, |s| s.hashes.len() as i64)),
        ))
    }
}

impl GroupsAccumulator for DistinctCount {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.resize(total_num_groups);
        let pairs = group_indices
            .iter()
            .enumerate()
            .filter(|(r, _)| opt_filter.is_none_or(|f| f.is_valid(*r) && f.value(*r)))
            .map(|(r, &g)| (r, g));
        let pairs: Vec<(usize, usize)> = pairs.collect();
        self.insert(&values[0], pairs.into_iter())
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> DfResult<()> {
        self.resize(total_num_groups);
        let lists = values[0].as_list::<i32>();
        for (r, &g) in group_indices.iter().enumerate() {
            if lists.is_null(r) {
                continue;
            }
            let vals = lists.value(r);
            let n = vals.len();
            self.insert(&vals, (0..n).map(|i| (i, g)))?;
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let taken = self.take(emit_to);
        Ok(Arc::new(Int64Array::from_iter_values(
            taken.iter().map(|s| s.as_ref().map_or(0, |s| s.hashes.len() as i64)),
        )))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let taken = self.take(emit_to);
        let mut offsets = Vec::with_capacity(taken.len() + 1);
        offsets.push(0i32);
        let mut parts: Vec<ArrayRef> = Vec::with_capacity(taken.len());
        let mut total = 0usize;
        for s in &taken {
            if let Some(s) = s {
                let col = self.conv.convert_rows(s.rows.iter())?.remove(0);
                total += col.len();
                parts.push(col);
            }
            offsets.push(i32::try_from(total).map_err(|_| {
                datafusion::error::DataFusionError::ResourcesExhausted("COUNT(DISTINCT) state over 2^31 values".into())
            })?);
        }
        let values = if parts.is_empty() {
            datafusion::arrow::array::new_empty_array(&self.value_type)
        } else {
            datafusion::arrow::compute::concat(&parts.iter().map(|p| p.as_ref()).collect::<Vec<_>>())?
        };
        let field = Arc::new(Field::new_list_field(self.value_type.clone(), true));
        Ok(vec![Arc::new(ListArray::try_new(field, OffsetBuffer::new(offsets.into()), values, None)?)])
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> DfResult<Vec<ArrayRef>> {
        // Each row as a state of its own: a list of its value, empty when it is null or filtered.
        let v = &self.plain(&values[0])?;
        let mut offsets = Vec::with_capacity(v.len() + 1);
        let mut keep = Vec::with_capacity(v.len());
        offsets.push(0i32);
        for r in 0..v.len() {
            if v.is_valid(r) && opt_filter.is_none_or(|f| f.is_valid(r) && f.value(r)) {
                keep.push(r as u32);
            }
            offsets.push(keep.len() as i32);
        }
        let kept = datafusion::arrow::compute::take(v, &datafusion::arrow::array::UInt32Array::from(keep), None)?;
        let field = Arc::new(Field::new_list_field(self.value_type.clone(), true));
        Ok(vec![Arc::new(ListArray::try_new(field, OffsetBuffer::new(offsets.into()), kept, None)?)])
    }

    fn size(&self) -> usize {
        self.bytes + self.groups.capacity() * std::mem::size_of::<Option<ValueSet>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[Option<i64>]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    #[test]
    fn counts_peeks_and_round_trips_its_state() {
        let mut a = DistinctCount::new(DataType::Int64).unwrap();
        // group 0: 1, 2, 2, null; group 1: 2; group 2 never seen
        a.update_batch(&[ints(&[Some(1), Some(2), Some(2), None, Some(2)])], &[0, 0, 0, 0, 1], None, 3).unwrap();
        let filter = BooleanArray::from(vec![Some(true), Some(false), None]);
        a.update_batch(&[ints(&[Some(3), Some(4), Some(5)])], &[1, 1, 1], Some(&filter), 3).unwrap();
        let peek = a.peek(&[2, 0, 1]);
        assert_eq!(peek.as_primitive::<datafusion::arrow::datatypes::Int64Type>().values(), &[0, 2, 2]);
        assert!(a.size() > 0);
        // state of all groups, merged into a second accumulator with other values
        let st = a.state(EmitTo::All).unwrap();
        assert_eq!(a.size(), 0);
        let mut b = DistinctCount::new(DataType::Int64).unwrap();
        b.update_batch(&[ints(&[Some(1), Some(9)])], &[0, 2], None, 3).unwrap();
        b.merge_batch(&st, &[0, 1, 2], 3).unwrap();
        let v = b.evaluate(EmitTo::First(2)).unwrap();
        assert_eq!(v.as_primitive::<datafusion::arrow::datatypes::Int64Type>().values(), &[2, 2]);
        let v = b.evaluate(EmitTo::All).unwrap();
        assert_eq!(v.as_primitive::<datafusion::arrow::datatypes::Int64Type>().values(), &[1]);
    }

    #[test]
    fn strings_and_dictionaries_count_by_value() {
        use datafusion::arrow::array::{DictionaryArray, StringArray};
        use datafusion::arrow::datatypes::Int32Type;
        let mut a = DistinctCount::new(DataType::Utf8).unwrap();
        let s: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("b"), None, Some("a")]));
        a.update_batch(&[s], &[0, 0, 0, 1], None, 2).unwrap();
        let d: ArrayRef = Arc::new(DictionaryArray::<Int32Type>::from_iter([Some("b"), Some("c"), Some("c")]));
        a.update_batch(std::slice::from_ref(&d), &[0, 0, 1], None, 2).unwrap();
        let counts = a.peek(&[0, 1]);
        assert_eq!(counts.as_primitive::<datafusion::arrow::datatypes::Int64Type>().values(), &[3, 2]);
        // a row's own state: its value, or nothing for a filtered row
        let st = a.convert_to_state(&[d], Some(&BooleanArray::from(vec![true, false, true]))).unwrap();
        let lists = st[0].as_list::<i32>();
        assert_eq!(lists.value_length(0), 1);
        assert_eq!(lists.value_length(1), 0);
        assert_eq!(lists.value(2).as_string::<i32>().value(0), "c");
        let mut b = DistinctCount::new(DataType::Utf8).unwrap();
        b.merge_batch(&a.state(EmitTo::All).unwrap(), &[0, 1], 2).unwrap();
        b.merge_batch(&st, &[1, 1, 1], 2).unwrap();
        // group 1: {a, c} from the state, and b and c from the rows
        assert_eq!(
            b.evaluate(EmitTo::All).unwrap().as_primitive::<datafusion::arrow::datatypes::Int64Type>().values(),
            &[3, 3]
        );
    }
}
