//! Where `portcullis serve` writes its log: stderr, in batches, from a thread of its
//! own. Whoever logs formats a line into a buffer and hands it over; the writer thread
//! writes everything waiting with one system call. A slow stderr (a full pipe, a slow
//! disk) then slows the writer, never a request.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Lines waiting for the writer; past it, loggers wait (nothing is lost).
const WAITING_LINES: usize = 16 * 1024;

/// What the writer thread receives.
enum Message {
    Line(Vec<u8>),
    /// Write everything before this, then say so.
    Flush(SyncSender<()>),
}

/// The log output; [`BatchedStderr::finish`] writes what is still waiting.
pub struct BatchedStderr {
    lines: SyncSender<Message>,
}

impl BatchedStderr {
    pub fn start() -> Self {
        let (lines, waiting) = sync_channel(WAITING_LINES);
        let started = std::thread::Builder::new()
            .name("portcullis-log".into())
            .spawn(move || write_batches(&waiting));
        if let Err(e) = started {
            // Lines then go to stderr directly, from whoever logs.
            eprintln!("portcullis: the log writer thread could not start: {e}");
        }
        Self { lines }
    }

    /// A `MakeWriter` for tracing-subscriber: one line per event.
    pub fn make_writer(&self) -> impl Fn() -> Line + Send + Sync + 'static {
        let lines = self.lines.clone();
        move || Line {
            lines: lines.clone(),
            buf: Vec::with_capacity(256),
        }
    }

    /// Writes every line still waiting (at exit), waiting at most two seconds.
    pub fn finish(self) {
        let (done, written) = sync_channel(1);
        if self.lines.send(Message::Flush(done)).is_ok() {
            let _ = written.recv_timeout(std::time::Duration::from_secs(2));
        }
    }
}

/// One event's bytes, handed over when the event is written in full.
pub struct Line {
    lines: SyncSender<Message>,
    buf: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            return;
        }
        match self.lines.try_send(Message::Line(buf)) {
            Ok(()) => {}
            // The writer is far behind: wait for it rather than lose a line.
            Err(TrySendError::Full(line)) => {
                let _ = self.lines.send(line);
            }
            Err(TrySendError::Disconnected(Message::Line(buf))) => {
                let _ = std::io::stderr().write_all(&buf);
            }
            Err(TrySendError::Disconnected(Message::Flush(_))) => {}
        }
    }
}

fn write_batches(waiting: &Receiver<Message>) {
    let stderr = std::io::stderr();
    while let Some(first) = portcullis::threads::next_batched(waiting) {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, stderr.lock());
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Message::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = waiting.try_recv().ok();
        }
        let _ = out.flush();
    }
}
