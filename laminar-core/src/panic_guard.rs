//! Regions whose panics LaminarDB catches itself and turns into errors (an operator that panics
//! fails its streams; a C ABI call returns `LAMINAR_INTERNAL`). A panic hook can ask
//! [`is_caught`] to report such a panic through the logger instead of printing it: the
//! `laminar-ffi` hook does (`laminar::logging::install_panic_hook`). The engine installs no hook.

use std::cell::Cell;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` as a region whose panics the caller catches (`f` is typically the `catch_unwind`).
pub fn caught<R>(f: impl FnOnce() -> R) -> R {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    DEPTH.with(|d| d.set(d.get() + 1));
    let _d = Depth;
    f()
}

/// Whether the current thread is inside [`caught`]: a panic now will be caught and reported as
/// an error.
pub fn is_caught() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// The text of a caught panic's payload (`panic!` with a literal or a formatted message).
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into())
}
