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

/// Test support: `data` damaged at random — 1 to 4 bytes flipped, set to 0xff or to random
/// values, or cut at a random length, or extended with random bytes — for the tests that feed
/// every decoder of untrusted bytes damaged input (issue 27).
#[cfg(test)]
fn damaged_bytes(data: &[u8], rng: &mut impl rand::Rng) -> Vec<u8> {
    let mut d = data.to_vec();
    if d.is_empty() {
        return (0..rng.random_range(1..16)).map(|_| rng.random::<u8>()).collect();
    }
    match rng.random_range(0..4) {
        0 | 1 => {
            for _ in 0..rng.random_range(1..=4) {
                let i = rng.random_range(0..d.len());
                d[i] = match rng.random_range(0..3) {
                    0 => d[i] ^ (1 << rng.random_range(0..8)),
                    1 => 0xff,
                    _ => rng.random(),
                };
            }
        }
        2 => d.truncate(rng.random_range(0..d.len())),
        _ => d.extend((0..rng.random_range(1..32)).map(|_| rng.random::<u8>())),
    }
    d
}

/// Test support: with `LAMINAR_FUZZ_SEEDS_DIR` set, writes `seeds` (each after `prefix`) as seed
/// inputs of the fuzz target `target` (`<dir>/<target>/seed-<blake3>`): how `fuzz/corpus` was
/// made from the same valid inputs the damaged-input tests start from.
#[cfg(test)]
pub(crate) fn write_fuzz_seeds(target: &str, prefix: &[u8], seeds: &[Vec<u8>]) {
    let Ok(dir) = std::env::var("LAMINAR_FUZZ_SEEDS_DIR") else { return };
    let dir = std::path::Path::new(&dir).join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for s in seeds {
        let bytes = [prefix, s].concat();
        let name = format!("seed-{}", &blake3::hash(&bytes).to_hex()[..16]);
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Test support: runs `decode` on `cases` damaged copies of the seeds (seeded by case number,
/// `LAMINAR_DECODE_SEED` replays one case, `LAMINAR_DECODE_CASES` sets the count) and fails
/// with every case that panicked.
#[cfg(test)]
pub(crate) fn decode_damaged(what: &str, seeds: &[Vec<u8>], cases: u64, decode: impl Fn(&[u8])) {
    use rand::{Rng, SeedableRng};
    let list: Vec<u64> = match std::env::var("LAMINAR_DECODE_SEED") {
        Ok(s) => vec![s.parse().expect("a number")],
        Err(_) => {
            (0..std::env::var("LAMINAR_DECODE_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(cases)).collect()
        }
    };
    let mut failures = vec![];
    for case in list {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(case);
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let input = damaged_bytes(seed, &mut rng);
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(&input))) {
            failures.push(format!("case {case}: panicked: {}", crate::panic_guard::message(&*p)));
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} panics (replay with LAMINAR_DECODE_SEED):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
