//! Shared by the benchmark programs (a folder under `examples/` is not an example itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use laminar_core::arrow::record_batch::RecordBatch;
use laminar_core::{Next, Subscription};

/// Reads `sub` on its own thread, handing every batch to `on_batch`, until `done` is set and the
/// buffer is empty (`done` must be set only after the database has emitted everything, e.g.
/// after `flush`). A failed subscription (a lagged reader, a failed stream) is an error.
pub fn spawn_drain<T: Send + 'static>(
    sub: Subscription,
    done: Arc<AtomicBool>,
    mut state: T,
    mut on_batch: impl FnMut(&mut T, RecordBatch) -> Result<(), String> + Send + 'static,
) -> JoinHandle<Result<T, String>> {
    std::thread::spawn(move || {
        loop {
            match sub.next_timeout(Duration::from_millis(20)).map_err(|e| e.to_string())? {
                Next::Batch(b) => on_batch(&mut state, b)?,
                Next::End => break,
                Next::Empty if done.load(Ordering::Acquire) => {
                    // Everything was emitted before `done`: take what is buffered and stop.
                    while let Next::Batch(b) = sub.try_next().map_err(|e| e.to_string())? {
                        on_batch(&mut state, b)?;
                    }
                    break;
                }
                Next::Empty => {}
            }
        }
        Ok(state)
    })
}

/// Waits for a drain thread.
pub fn join_drain<T>(h: JoinHandle<Result<T, String>>) -> Result<T, String> {
    h.join().map_err(|_| "the drain thread panicked".to_string())?
}
