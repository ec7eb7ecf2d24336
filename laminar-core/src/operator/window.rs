//! Window assignment: gives every row the windows it belongs to (`window_start`, `window_end`,
//! both `TIMESTAMP` µs), one output row per (row, window) pair, and takes out the pairs whose
//! window is already closed (DESIGN §3 "Late data").
//!
//! For SESSION windows the bounds a row gets here are its own `[ts, ts + gap)`; the session
//! aggregate merges them. Window semantics:
//! - TUMBLE(size, offset): `[floor((ts - offset) / size) * size + offset, … + size)`.
//! - HOP(slide, size): every `[k * slide, k * slide + size)` containing ts.
//! - CUMULATE(step, max): for the max-window `[b, b + max)` containing ts, every
//!   `[b, b + n * step)` with `b + n * step > ts`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use super::{LateRows, NO_WATERMARK, OpCtx, Operator};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowKind {
    Tumble { size: i64, offset: i64 },
    Hop { slide: i64, size: i64 },
    Session { gap: i64 },
    Cumulate { step: i64, max_size: i64 },
}

impl std::fmt::Display for WindowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |us: i64| crate::util::fmt_duration_us(us);
        match *self {
            WindowKind::Tumble { size, offset: 0 } => write!(f, "TUMBLE({})", d(size)),
            WindowKind::Tumble { size, offset } => write!(f, "TUMBLE({}, offset {})", d(size), d(offset)),
            WindowKind::Hop { slide, size } => write!(f, "HOP(slide {}, size {})", d(slide), d(size)),
            WindowKind::Session { gap } => write!(f, "SESSION(gap {})", d(gap)),
            WindowKind::Cumulate { step, max_size } => write!(f, "CUMULATE(step {}, max {})", d(step), d(max_size)),
        }
    }
}

/// The most windows one row may fall into (HOP size / slide, CUMULATE max / step). Each window
/// of a row is a copy of the row through the aggregate, so a shape such as HOP 1 ms / 1 day (86.4
/// million windows per row) would stall the pipeline on its first row; refused at CREATE.
pub const MAX_WINDOWS_PER_ROW: i64 = 10_000;

/// The most (row, window) pairs one output batch of window assignment holds.
const CHUNK_PAIRS: usize = 1 << 20;

impl WindowKind {
    /// How many windows a row falls into, at most.
    pub fn windows_per_row(&self) -> i64 {
        match *self {
            WindowKind::Tumble { .. } | WindowKind::Session { .. } => 1,
            WindowKind::Hop { slide, size } => size / slide.max(1) + i64::from(size % slide.max(1) != 0),
            WindowKind::Cumulate { step, max_size } => max_size / step.max(1),
        }
    }

    /// Checks the sizes make sense.
    pub fn validate(&self) -> Result<()> {
        let pos = |v: i64, what: &str| {
            if v > 0 { Ok(()) } else { Err(Error::plan(format!("window {what} must be positive"))) }
        };
        let per_row = |n: i64, what: &str| {
            if n <= MAX_WINDOWS_PER_ROW {
                Ok(())
            } else {
                Err(Error::plan(format!(
                    "{what} puts every row in {n} windows; at most {MAX_WINDOWS_PER_ROW} are allowed"
                )))
            }
        };
        match *self {
            WindowKind::Tumble { size, offset } => {
                pos(size, "size")?;
                if offset < 0 || offset >= size {
                    return Err(Error::plan("TUMBLE offset must be in [0, size)"));
                }
            }
            WindowKind::Hop { slide, size } => {
                pos(slide, "slide")?;
                pos(size, "size")?;
                if slide > size {
                    return Err(Error::plan(format!(
                        "HOP slide ({}) is larger than its size ({}): rows between windows would belong to none; use a slide up to the size, or TUMBLE",
                        crate::util::fmt_duration_us(slide),
                        crate::util::fmt_duration_us(size)
                    )));
                }
                per_row(size / slide + i64::from(size % slide != 0), "HOP size / slide")?;
            }
            WindowKind::Session { gap } => pos(gap, "gap")?,
            WindowKind::Cumulate { step, max_size } => {
                pos(step, "step")?;
                pos(max_size, "max size")?;
                if max_size % step != 0 {
                    return Err(Error::plan("CUMULATE max size must be a multiple of its step"));
                }
                per_row(max_size / step, "CUMULATE max size / step")?;
            }
        }
        Ok(())
    }

    /// Calls `f(start, end)` for every window containing `ts`, oldest start first.
    #[inline]
    pub fn for_each_window(&self, ts: i64, mut f: impl FnMut(i64, i64)) {
        match *self {
            WindowKind::Tumble { size, offset } => {
                let s = tumble_start(ts, size, offset);
                f(s, s.saturating_add(size))
            }
            WindowKind::Hop { slide, size } => {
                // Window starts are multiples of slide; the ones containing ts lie in
                // (ts - size, ts]. Saturating at the ends of the time range, never wrapping.
                let last = floor_to(ts, slide);
                let mut first = last;
                while first.saturating_sub(slide) > ts.saturating_sub(size) && first > i64::MIN + slide {
                    first -= slide;
                }
                let mut s = first;
                while s <= last {
                    f(s, s.saturating_add(size));
                    match s.checked_add(slide) {
                        Some(n) => s = n,
                        None => break,
                    }
                }
            }
            WindowKind::Session { gap } => f(ts, ts.saturating_add(gap)),
            WindowKind::Cumulate { step, max_size } => {
                let base = floor_to(ts, max_size);
                let limit = base.saturating_add(max_size);
                let mut end = base.saturating_add(floor_to(ts.saturating_sub(base), step)).saturating_add(step);
                while end <= limit {
                    f(base, end);
                    if end == limit {
                        break;
                    }
                    end = end.saturating_add(step);
                }
            }
        }
    }
}

/// `ts` rounded down to a multiple of `size`; the start of the time range for the few earliest
/// instants whose multiple lies before it.
#[inline]
fn floor_to(ts: i64, size: i64) -> i64 {
    ts.div_euclid(size).checked_mul(size).unwrap_or(i64::MIN)
}

/// The start of the TUMBLE window holding `ts` (see [`floor_to`] for the earliest instants).
#[inline]
fn tumble_start(ts: i64, size: i64, offset: i64) -> i64 {
    ts.checked_sub(offset).map_or(i64::MIN, |t| floor_to(t, size).saturating_add(offset))
}

/// How to read an event-time column as µs since the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeScale {
    Seconds,
    Millis,
    Micros,
    Nanos,
    /// A BIGINT column of epoch milliseconds.
    EpochMillisInt,
}

impl TimeScale {
    pub fn for_type(dt: &DataType) -> Option<TimeScale> {
        Some(match dt {
            DataType::Timestamp(TimeUnit::Second, _) => TimeScale::Seconds,
            DataType::Timestamp(TimeUnit::Millisecond, _) => TimeScale::Millis,
            DataType::Timestamp(TimeUnit::Microsecond, _) => TimeScale::Micros,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => TimeScale::Nanos,
            DataType::Int64 => TimeScale::EpochMillisInt,
            _ => return None,
        })
    }
    #[inline]
    pub fn to_micros(self, v: i64) -> i64 {
        match self {
            TimeScale::Seconds => v.saturating_mul(1_000_000),
            TimeScale::Millis | TimeScale::EpochMillisInt => v.saturating_mul(1000),
            TimeScale::Micros => v,
            TimeScale::Nanos => v.div_euclid(1000),
        }
    }
}

/// The event times of a column in µs; `None` entries are NULL.
pub(crate) fn event_times(
    col: &ArrayRef,
    scale: TimeScale,
) -> Result<(Vec<i64>, Option<datafusion::arrow::buffer::NullBuffer>)> {
    let data = col.to_data();
    // All supported types are 64-bit integers underneath.
    let ints = datafusion::arrow::array::PrimitiveArray::<Int64Type>::from(
        data.into_builder().data_type(DataType::Int64).build()?,
    );
    let nulls = ints.nulls().cloned();
    let vals = if scale == TimeScale::Micros {
        ints.values().to_vec()
    } else {
        ints.values().iter().map(|v| scale.to_micros(*v)).collect()
    };
    Ok((vals, nulls))
}

pub(crate) fn window_fields() -> [Field; 2] {
    [
        Field::new("window_start", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("window_end", DataType::Timestamp(TimeUnit::Microsecond, None), false),
    ]
}

/// Appends `window_start`/`window_end` to a schema.
pub(crate) fn windowed_schema(input: &Schema) -> Result<SchemaRef> {
    for f in input.fields() {
        if f.name() == "window_start" || f.name() == "window_end" {
            return Err(Error::plan(format!(
                "the input already has a column named '{}'; rename it before windowing",
                f.name()
            )));
        }
    }
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(window_fields());
    Ok(Arc::new(Schema::new_with_metadata(fields, input.metadata().clone())))
}

pub(crate) struct WindowAssign {
    pub kind: WindowKind,
    pub time_col: usize,
    pub scale: TimeScale,
    pub lateness: i64,
    pub output_schema: SchemaRef,
    /// Input columns the query never reads: replaced by NULLs before rows are copied into their
    /// windows (a HOP copies each row once per window; wide unread columns would dominate).
    pub unused: Vec<usize>,
    /// The input's schema with the unused columns nullable (computed once, at plan time).
    pub input_schema: SchemaRef,
    /// Rows per output piece, so that a piece holds at most [`CHUNK_PAIRS`] (row, window) pairs
    /// (see [`WindowAssign::rows_per_piece`]).
    pub rows_per_piece: usize,
}

impl WindowAssign {
    /// Rows per output piece for `kind` (plan time): a batch that multiplies past
    /// [`CHUNK_PAIRS`] (row, window) pairs goes out in pieces, so the copies of its rows are never
    /// all in memory at once and the memory limit is checked as the aggregate above takes each.
    pub fn rows_per_piece(kind: WindowKind) -> usize {
        (CHUNK_PAIRS / kind.windows_per_row().max(1) as usize).max(1)
    }

    fn is_closed(&self, watermark: i64, end: i64) -> bool {
        watermark != NO_WATERMARK && watermark >= end.saturating_add(self.lateness)
    }

    pub(crate) fn assign(&self, batch: &RecordBatch, watermark: i64, late: &mut LateRows) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let (times, nulls) = event_times(batch.column(self.time_col), self.scale)?;
        // Fast path, the common case: TUMBLE, no NULL times, and even the earliest window of the
        // batch still open — every row keeps its place, no per-row branching or gathering.
        if let WindowKind::Tumble { size, offset } = self.kind
            && n > 0
            && nulls.as_ref().is_none_or(|nb| nb.null_count() == 0)
        {
            let starts: Vec<i64> = times.iter().map(|&ts| tumble_start(ts, size, offset)).collect();
            let min_start = starts.iter().copied().min().expect("n > 0");
            if !self.is_closed(watermark, min_start.saturating_add(size)) {
                let ends: Vec<i64> = starts.iter().map(|s| s.saturating_add(size)).collect();
                return self.build(batch, &[], starts, ends, true);
            }
        }
        let mut idx: Vec<u32> = Vec::with_capacity(n);
        let mut starts: Vec<i64> = Vec::with_capacity(n);
        let mut ends: Vec<i64> = Vec::with_capacity(n);
        let mut late_idx: Vec<u32> = Vec::new();
        let mut late_starts: Vec<i64> = Vec::new();
        let mut late_ends: Vec<i64> = Vec::new();
        let mut identity = true;
        for (i, &ts) in times.iter().enumerate() {
            if nulls.as_ref().is_some_and(|nb| nb.is_null(i)) {
                // A row without event time belongs to no window: count it, never drop silently.
                late.rows += 1;
                identity = false;
                continue;
            }
            let mut on_time = 0;
            let mut any = 0;
            self.kind.for_each_window(ts, |s, e| {
                any += 1;
                if self.is_closed(watermark, e) {
                    late_idx.push(i as u32);
                    late_starts.push(s);
                    late_ends.push(e);
                } else {
                    on_time += 1;
                    idx.push(i as u32);
                    starts.push(s);
                    ends.push(e);
                }
            });
            if on_time == 0 {
                late.rows += 1;
            }
            if on_time != 1 || any != 1 {
                identity = false;
            }
        }
        late.pairs += late_idx.len() as u64;
        if !late_idx.is_empty() {
            late.batches.push(self.build(batch, &late_idx, late_starts, late_ends, false)?);
        }
        self.build(batch, &idx, starts, ends, identity && idx.len() == n)
    }

    fn build(
        &self,
        batch: &RecordBatch,
        idx: &[u32],
        starts: Vec<i64>,
        ends: Vec<i64>,
        identity: bool,
    ) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = if identity {
            batch.columns().to_vec()
        } else {
            let indices = UInt32Array::from(idx.to_vec());
            batch.columns().iter().map(|c| take(c, &indices, None)).collect::<std::result::Result<_, _>>()?
        };
        cols.push(Arc::new(TimestampMicrosecondArray::from(starts)));
        cols.push(Arc::new(TimestampMicrosecondArray::from(ends)));
        Ok(RecordBatch::try_new(self.output_schema.clone(), cols)?)
    }
}

impl Operator for WindowAssign {
    fn explain(&self) -> String {
        let mut s = format!("WindowAssign: {} on column #{}", self.kind, self.time_col);
        if self.lateness > 0 {
            s.push_str(&format!(", allowed lateness {}", crate::util::fmt_duration_us(self.lateness)));
        }
        s
    }

    fn process_batch(&mut self, batch: RecordBatch, ctx: &mut OpCtx<'_>) -> Result<Vec<RecordBatch>> {
        let batch = if self.unused.is_empty() {
            batch
        } else {
            let n = batch.num_rows();
            let mut cols = batch.columns().to_vec();
            for &i in &self.unused {
                cols[i] = datafusion::arrow::array::new_null_array(cols[i].data_type(), n);
            }
            RecordBatch::try_new(self.input_schema.clone(), cols)?
        };
        let n = batch.num_rows();
        if n <= self.rows_per_piece {
            let out = self.assign(&batch, ctx.watermark, ctx.late)?;
            return Ok(if out.num_rows() == 0 { vec![] } else { vec![out] });
        }
        let mut outs = vec![];
        for start in (0..n).step_by(self.rows_per_piece) {
            let piece = batch.slice(start, self.rows_per_piece.min(n - start));
            let out = self.assign(&piece, ctx.watermark, ctx.late)?;
            if out.num_rows() > 0 {
                outs.push(out);
            }
        }
        Ok(outs)
    }
}

/// Reads a TIMESTAMP µs column as i64 values.
pub(crate) fn ts_values(a: &ArrayRef) -> &[i64] {
    a.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>().values()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(k: WindowKind, ts: i64) -> Vec<(i64, i64)> {
        let mut v = vec![];
        k.for_each_window(ts, |s, e| v.push((s, e)));
        v
    }

    #[test]
    fn window_membership() {
        assert_eq!(windows(WindowKind::Tumble { size: 10, offset: 0 }, 25), vec![(20, 30)]);
        assert_eq!(windows(WindowKind::Tumble { size: 10, offset: 0 }, -1), vec![(-10, 0)]);
        assert_eq!(windows(WindowKind::Tumble { size: 10, offset: 3 }, 2), vec![(-7, 3)]);
        assert_eq!(
            windows(WindowKind::Hop { slide: 2, size: 10 }, 5),
            vec![(-4, 6), (-2, 8), (0, 10), (2, 12), (4, 14)]
        );
        assert_eq!(windows(WindowKind::Hop { slide: 3, size: 5 }, 6), vec![(3, 8), (6, 11)]);
        assert_eq!(windows(WindowKind::Cumulate { step: 2, max_size: 6 }, 3), vec![(0, 4), (0, 6)]);
        assert_eq!(windows(WindowKind::Cumulate { step: 2, max_size: 6 }, 6), vec![(6, 8), (6, 10), (6, 12)]);
        // Brute force: each HOP window containing ts, and only those.
        for ts in -30..30 {
            let got = windows(WindowKind::Hop { slide: 4, size: 10 }, ts);
            let want: Vec<_> = (-20..20).map(|k| (k * 4, k * 4 + 10)).filter(|(s, e)| *s <= ts && ts < *e).collect();
            assert_eq!(got, want, "ts {ts}");
        }
    }

    #[test]
    fn extreme_timestamps_never_overflow() {
        let kinds = [
            WindowKind::Tumble { size: 10_000_000, offset: 0 },
            WindowKind::Tumble { size: 7, offset: 3 },
            WindowKind::Hop { slide: 3_000_000, size: 10_000_000 },
            WindowKind::Session { gap: 1_000_000 },
            WindowKind::Cumulate { step: 2_000_000, max_size: 10_000_000 },
        ];
        for k in kinds {
            for ts in [i64::MIN, i64::MIN + 1, i64::MIN + 5, -1, 0, i64::MAX - 1_000_000, i64::MAX - 1, i64::MAX] {
                let w = windows(k, ts);
                assert!(!w.is_empty(), "{k} at {ts}");
                for (s, e) in w {
                    assert!(s <= e, "{k} at {ts}: [{s}, {e})");
                    assert!(s <= ts || s == i64::MIN, "{k} at {ts}: [{s}, {e})");
                    assert!(ts < e || e == i64::MAX, "{k} at {ts}: [{s}, {e})");
                }
            }
        }
    }

    #[test]
    fn window_shapes_are_bounded() {
        let hop = |slide, size| WindowKind::Hop { slide, size }.validate();
        assert!(hop(10, 10).is_ok() && hop(1, MAX_WINDOWS_PER_ROW).is_ok());
        assert!(hop(20, 10).unwrap_err().message().contains("larger than its size"));
        assert!(hop(1, 86_400_000_000).unwrap_err().message().contains("at most"));
        assert!(hop(1, MAX_WINDOWS_PER_ROW + 1).is_err());
        let cumulate = |step, max_size| WindowKind::Cumulate { step, max_size }.validate();
        assert!(cumulate(1, MAX_WINDOWS_PER_ROW).is_ok());
        assert!(cumulate(1, MAX_WINDOWS_PER_ROW * 2).is_err());
    }
}
