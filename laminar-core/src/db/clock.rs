//! Processing time: the system clock, and a manual clock tests move by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A processing-time clock. Tests drive [`ManualClock`] by hand; everything else uses the system's.
pub trait Clock: Send + Sync {
    /// Milliseconds on this clock.
    fn now_ms(&self) -> i64;
    /// Whether the driver should sleep on the system clock until deadlines.
    fn is_manual(&self) -> bool {
        false
    }
}

pub(super) struct SystemClock(pub(super) Instant);
impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        self.0.elapsed().as_millis() as i64
    }
}

/// A clock that moves only when told to ([`Database::advance_clock`]).
#[derive(Default)]
pub struct ManualClock(pub(super) AtomicU64);
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Acquire) as i64
    }
    fn is_manual(&self) -> bool {
        true
    }
}
