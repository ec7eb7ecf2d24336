//! Small helpers shared across the engine.

/// `90000000` → `"1m30s"`; used in EXPLAIN and messages.
pub fn fmt_duration_us(us: i64) -> String {
    if us == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = us;
    if rest < 0 {
        out.push('-');
        rest = -rest;
    }
    for (unit, name) in [(3_600_000_000i64, "h"), (60_000_000, "m"), (1_000_000, "s"), (1000, "ms"), (1, "us")] {
        if rest >= unit {
            out.push_str(&format!("{}{}", rest / unit, name));
            rest %= unit;
        }
    }
    out
}

/// A filter mask where NULL counts as false, as in SQL.
pub fn null_as_false(mask: &datafusion::arrow::array::BooleanArray) -> datafusion::arrow::array::BooleanArray {
    use datafusion::arrow::array::Array;
    if mask.null_count() > 0 { datafusion::arrow::compute::prep_null_mask_filter(mask) } else { mask.clone() }
}
