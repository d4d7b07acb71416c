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
