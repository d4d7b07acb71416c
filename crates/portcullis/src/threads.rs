//! Which kind of thread the current code runs on. `http::serve::serve_on_threads` marks
//! its serving threads (each a single-threaded runtime); the store adapter
//! (`store::on_runtime`) sends their store calls to the main runtime.

use std::cell::Cell;

thread_local! {
    static SERVING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as a serving thread.
pub fn mark_serving_thread() {
    SERVING.with(|s| s.set(true));
}

/// Whether the current thread is a serving thread.
pub fn is_serving_thread() -> bool {
    SERVING.with(Cell::get)
}

/// How often a background writer (the access log, the server's log output) looks for
/// work: it drains its queue in batches instead of being woken for every item — a
/// wake-up per request cost more than the log line (docs/BENCHMARKS.md).
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// The next item of `queue`, looking every [`DRAIN_EVERY`] while it is empty; `None`
/// once every sender is gone.
pub fn next_batched<T>(queue: &std::sync::mpsc::Receiver<T>) -> Option<T> {
    loop {
        match queue.try_recv() {
            Ok(item) => return Some(item),
            Err(std::sync::mpsc::TryRecvError::Empty) => std::thread::sleep(DRAIN_EVERY),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
        }
    }
}
