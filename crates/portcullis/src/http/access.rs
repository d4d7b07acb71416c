//! The access log (docs/deployment.md "Logs"): one line per request under the tracing
//! target `portcullis::access` — method, normalised path without query, status,
//! duration, route kind, user id, session handle (a short hash) — never a cookie, token
//! or query string. JSON with `log_format = json`, like every other line.
//!
//! Written without blocking the request path: a request hands a small entry to a
//! bounded queue and goes on; a thread of its own turns entries into log lines (and
//! waits on a slow stdout, not the request). A full queue drops entries and counts them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use axum::http::Method;
use uuid::Uuid;

/// Entries waiting for the log thread; more are dropped (and counted).
const QUEUE: usize = 16 * 1024;

/// What kind of request a line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The gateway's own endpoints (`/auth/*`, `/healthz`, `/readyz`, the SPA exchange).
    Gateway,
    /// A `public_paths` request.
    Public,
    /// A request the guard decided on with (or for want of) a session.
    Protected,
    /// `{prefix}/verify`.
    Verify,
    /// A WebSocket handshake.
    Websocket,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Public => "public",
            Self::Protected => "protected",
            Self::Verify => "verify",
            Self::Websocket => "websocket",
        }
    }
}

/// What the guard (or forward-auth) learnt about a request, handed to the log through
/// the response's extensions.
#[derive(Debug, Clone)]
pub struct AccessNote {
    pub kind: Kind,
    /// The normalised path, when the request had one.
    pub path: Option<String>,
    pub user: Option<Uuid>,
    /// The session's handle: the short form of its id hash (as `sessions list` shows).
    pub session: Option<String>,
}

/// One request, as the log thread receives it.
struct Entry {
    method: Method,
    path: String,
    status: u16,
    duration: Duration,
    kind: Kind,
    user: Option<Uuid>,
    session: Option<String>,
}

/// The queue to the log thread.
#[derive(Debug)]
pub struct AccessLog {
    queue: SyncSender<Entry>,
    dropped: Arc<AtomicU64>,
    written: tokio::sync::watch::Receiver<bool>,
}

/// Says when the log thread has written every entry and ended (every handle to its
/// queue dropped): a server that stops waits for it, so that the last requests' lines
/// are not lost with the process.
#[derive(Debug, Clone)]
pub struct AllWritten(tokio::sync::watch::Receiver<bool>);

impl AllWritten {
    /// Waits until the log thread is done, at most `limit`.
    pub async fn wait(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.0.wait_for(|done| *done)).await;
    }
}

impl AccessLog {
    /// Starts the log thread. It writes through the tracing dispatcher current here (the
    /// process's, or a test's), and ends when the last handle to the queue is dropped.
    pub fn start() -> Self {
        let (queue, entries) = sync_channel(QUEUE);
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        let (done, written) = tokio::sync::watch::channel(false);
        let spawned = std::thread::Builder::new()
            .name("portcullis-access-log".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || write_lines(&entries, &counted));
                done.send_replace(true);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "the access log thread could not start; no access lines");
        }
        Self {
            queue,
            dropped,
            written,
        }
    }

    /// Resolves once the log thread has written every entry and ended.
    pub fn all_written(&self) -> AllWritten {
        AllWritten(self.written.clone())
    }

    /// Hands one request to the log; never waits.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        method: Method,
        path: String,
        status: u16,
        duration: Duration,
        note: Option<&AccessNote>,
        kind: Kind,
    ) {
        let entry = Entry {
            method,
            path: printable(path),
            status,
            duration,
            kind: note.map_or(kind, |n| n.kind),
            user: note.and_then(|n| n.user),
            session: note.and_then(|n| n.session.clone()),
        };
        match self.queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Entries dropped because the log thread fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// G06: a request path as the log shows it: every byte that is not visible ASCII, and
/// `"` and `\`, percent-encoded (a decided path is decoded: `/a b` is written `/a%20b`,
/// a bidi override `%E2%80%AE`), so that no path can add a field or a line to a text or
/// JSON log, whatever formats it.
fn printable(path: String) -> String {
    let plain = |b: u8| b.is_ascii_graphic() && b != b'"' && b != b'\\';
    if path.bytes().all(plain) {
        return path;
    }
    let mut out = String::with_capacity(path.len() + 16);
    for b in path.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The log thread: one line per entry; says so when entries were dropped. Ends when
/// every handle to the queue is gone.
fn write_lines(entries: &Receiver<Entry>, dropped: &AtomicU64) {
    let mut reported = 0;
    while let Some(e) = crate::threads::next_batched(entries) {
        let lost = dropped.load(Ordering::Relaxed);
        if lost > reported {
            tracing::warn!(
                target: "portcullis::access",
                dropped = lost - reported,
                "access log entries were dropped: the log output is slower than the traffic"
            );
            reported = lost;
        }
        let user = e.user.map(|u| u.to_string());
        tracing::info!(
            target: "portcullis::access",
            method = %e.method,
            path = %e.path,
            status = e.status,
            duration_ms = e.duration.as_secs_f64() * 1000.0,
            kind = e.kind.as_str(),
            user = user.as_deref(),
            session = e.session.as_deref(),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g06_paths_are_written_printable() {
        assert_eq!(printable("/a/b.css".into()), "/a/b.css");
        assert_eq!(
            printable("/a status=200 user=x\n\"\u{202e}".into()),
            "/a%20status=200%20user=x%0A%22%E2%80%AE"
        );
    }
}
