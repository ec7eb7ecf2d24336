//! Validation of pushed batches against a source schema (DESIGN §3): columns match by name; exact
//! types and lossless widenings are accepted and cast; anything else is an error naming the column
//! and both types, and nothing of the batch is applied.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result, clip};

/// The earliest event time a source accepts: 0001-01-01T00:00:00 UTC, in µs since the epoch.
pub const MIN_TIMESTAMP_US: i64 = -62_135_596_800_000_000;
/// The latest: 9999-12-31T23:59:59.999999 UTC. Like SQL's TIMESTAMP (and Flink's), years 1 to
/// 9999; beyond them window bounds and watermarks would leave the 64-bit range.
pub const MAX_TIMESTAMP_US: i64 = 253_402_300_799_999_999;

/// A cast that fails on a value that does not fit instead of writing NULL.
fn cast(col: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    Ok(cast_with_options(col, to, &CastOptions { safe: false, ..Default::default() })?)
}

fn int_rank(t: &DataType) -> Option<(bool, u8)> {
    Some(match t {
        DataType::Int8 => (true, 8),
        DataType::Int16 => (true, 16),
        DataType::Int32 => (true, 32),
        DataType::Int64 => (true, 64),
        DataType::UInt8 => (false, 8),
        DataType::UInt16 => (false, 16),
        DataType::UInt32 => (false, 32),
        DataType::UInt64 => (false, 64),
        _ => return None,
    })
}

/// Whether every value of `from` fits `to` exactly, by type alone.
fn lossless(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to || *from == Null {
        return true;
    }
    if let (Some((fs, fb)), Some((ts, tb))) = (int_rank(from), int_rank(to)) {
        return (fs == ts && tb >= fb) || (!fs && ts && tb > fb);
    }
    if let Some((_, fb)) = int_rank(from) {
        return match to {
            Float32 => fb <= 16,
            Float64 => fb <= 32,
            _ => false,
        };
    }
    match (from, to) {
        (Float16, Float32 | Float64) | (Float32, Float64) => true,
        (Utf8View | LargeUtf8, Utf8) | (BinaryView | LargeBinary, Binary) => true,
        (Dictionary(_, v), t) => lossless(v, t),
        (Timestamp(fu, _), Timestamp(tu, _)) => unit_rank(fu) <= unit_rank(tu),
        (Date32, Date64) => true,
        _ => false,
    }
}

fn unit_rank(u: &TimeUnit) -> u8 {
    match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 2,
        TimeUnit::Nanosecond => 3,
    }
}

/// Converts `batch` to `schema` or explains why it cannot.
pub(crate) fn conform(source: &str, schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
    let in_schema = batch.schema();
    let mut seen = std::collections::HashSet::with_capacity(in_schema.fields().len());
    for f in in_schema.fields() {
        if !seen.insert(f.name().as_str()) {
            return Err(Error::invalid_data(format!(
                "source '{}': the batch has more than one column named '{}'",
                clip(source),
                clip(f.name())
            )));
        }
    }
    for f in in_schema.fields() {
        if schema.field_with_name(f.name()).is_err() {
            let hint = crate::error::nearest_name(f.name(), schema.fields().iter().map(|f| f.name().as_str()))
                .map(|n| format!("; did you mean '{n}'?"))
                .unwrap_or_default();
            return Err(Error::invalid_data(format!("source '{source}' has no column '{}'{hint}", f.name())));
        }
    }
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let Ok(idx) = in_schema.index_of(field.name()) else {
            return Err(Error::invalid_data(format!(
                "source '{source}': column '{}' ({}) is missing from the batch",
                field.name(),
                field.data_type()
            )));
        };
        let col = batch.column(idx);
        let from = col.data_type();
        let to = field.data_type();
        let mismatch =
            || Error::invalid_data(format!("source '{source}': column '{}' expects {to}, got {from}", field.name()));
        let converted = if from == to {
            col.clone()
        } else if lossless(from, to) {
            cast(col, to)?
        } else if let (DataType::Timestamp(TimeUnit::Nanosecond, _), DataType::Timestamp(tu, _)) = (from, to) {
            // Nanoseconds are accepted when no value loses precision.
            let div: i64 = match tu {
                TimeUnit::Microsecond => 1000,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Second => 1_000_000_000,
                TimeUnit::Nanosecond => 1,
            };
            let ints = cast(col, &DataType::Int64)?;
            let ints = ints.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            if let Some(i) = ints.iter().position(|v| v.is_some_and(|v| v % div != 0)) {
                return Err(Error::invalid_data(format!(
                    "source '{source}': column '{}' expects {to}, got {from} with sub-{} precision at row {i}",
                    field.name(),
                    match tu {
                        TimeUnit::Microsecond => "microsecond",
                        TimeUnit::Millisecond => "millisecond",
                        _ => "second",
                    }
                )));
            }
            cast(col, to)?
        } else {
            return Err(mismatch());
        };
        // Time-zone-aware timestamps are UTC instants: keep the values, use the source's type.
        let converted = if converted.data_type() != to {
            let data = converted.to_data().into_builder().data_type(to.clone()).build()?;
            datafusion::arrow::array::make_array(data)
        } else {
            converted
        };
        if let DataType::Timestamp(TimeUnit::Microsecond, _) = to {
            let ts = converted.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
            let (min, max) = (datafusion::arrow::compute::min(ts), datafusion::arrow::compute::max(ts));
            if min.is_some_and(|v| v < MIN_TIMESTAMP_US) || max.is_some_and(|v| v > MAX_TIMESTAMP_US) {
                let row = ts
                    .iter()
                    .position(|v| v.is_some_and(|v| !(MIN_TIMESTAMP_US..=MAX_TIMESTAMP_US).contains(&v)))
                    .unwrap_or(0);
                return Err(Error::invalid_data(format!(
                    "source '{}': column '{}' at row {row}: timestamp {} µs since the epoch is outside the supported range, years 1 to 9999",
                    clip(source),
                    clip(field.name()),
                    ts.value(row)
                )));
            }
        }
        if !field.is_nullable() && converted.null_count() > 0 {
            let row = (0..converted.len()).find(|&i| converted.is_null(i)).unwrap_or(0);
            return Err(Error::invalid_data(format!(
                "source '{source}': NULL in NOT NULL column '{}' at row {row}",
                field.name()
            )));
        }
        cols.push(converted);
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// Normalises a declared source schema: TIMESTAMP → µs (UTC for zoned), strings → Utf8.
pub(crate) fn normalize_schema(schema: &datafusion::arrow::datatypes::Schema) -> SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| {
            let dt = match f.data_type() {
                DataType::Timestamp(_, None) => DataType::Timestamp(TimeUnit::Microsecond, None),
                DataType::Timestamp(_, Some(_)) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
                other => other.clone(),
            };
            f.as_ref().clone().with_data_type(dt).with_metadata(Default::default())
        })
        .collect();
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int32Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Float64, true)]))
    }

    #[test]
    fn widening_is_accepted_and_cast() {
        let b = RecordBatch::try_from_iter(vec![
            ("v", Arc::new(Int32Array::from(vec![Some(1), None])) as ArrayRef),
            ("k", Arc::new(Int32Array::from(vec![7, 8])) as ArrayRef),
        ])
        .unwrap();
        let out = conform("s", &schema(), &b).unwrap();
        assert_eq!(out.schema(), schema());
        assert_eq!(out.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(1), 8);
    }

    #[test]
    fn mismatches_name_column_and_types() {
        let b = RecordBatch::try_from_iter(vec![
            ("k", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("v", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef),
        ])
        .unwrap();
        let e = conform("s", &schema(), &b).unwrap_err();
        assert!(e.message().contains("column 'k' expects Int64, got Utf8"), "{e}");
        let b = RecordBatch::try_from_iter(vec![("v", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef)]).unwrap();
        assert!(conform("s", &schema(), &b).unwrap_err().message().contains("'k' (Int64) is missing"));
        let b = RecordBatch::try_from_iter(vec![
            ("k", Arc::new(Int32Array::from(vec![Some(1), None])) as ArrayRef),
            ("v", Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef),
        ])
        .unwrap();
        assert!(conform("s", &schema(), &b).unwrap_err().message().contains("NULL in NOT NULL column 'k' at row 1"));
        // Lossy: float into an integer column.
        assert!(!lossless(&DataType::Float64, &DataType::Int64));
        assert!(!lossless(&DataType::Int64, &DataType::Int32));
        assert!(!lossless(&DataType::UInt64, &DataType::Int64));
    }
}
