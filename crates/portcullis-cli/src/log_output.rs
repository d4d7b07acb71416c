//! Where `portcullis serve` writes its log: stderr, in batches, from a thread of its
//! own. Whoever logs formats a line into a buffer and hands it over; the writer thread
//! writes everything waiting with one system call. A slow stderr (a full pipe, a slow
//! disk) then slows the writer, never a request.
//!
//! G06 (docs/security.md): no request-controlled text (a path, a header, a claim, a
//! provider's error) can add a field or a line to the log. Text lines are written by
//! [`SafeTextFields`]: a value that is not plain visible ASCII is quoted and escaped,
//! the message has its control characters escaped. In both formats, invisible format
//! characters (bidi overrides and isolates, zero-width characters, line and paragraph
//! separators) are written as escapes, so that a line reads as it parses.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

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

    /// A `MakeWriter` for tracing-subscriber: one line per event. `json`: the lines are
    /// JSON (their invisible characters are escaped as JSON escapes).
    pub fn make_writer(&self, json: bool) -> impl Fn() -> Line + Send + Sync + 'static {
        let lines = self.lines.clone();
        move || Line {
            lines: lines.clone(),
            buf: Vec::with_capacity(256),
            json,
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
    json: bool,
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
        let mut buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            return;
        }
        if let Some(escaped) = escape_invisible(&buf, self.json) {
            buf = escaped;
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

/// Characters that change how a line reads without showing: bidi embeddings,
/// overrides and isolates, zero-width characters, the byte-order mark, line and
/// paragraph separators, and the other Unicode format characters (category Cf) in use.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

/// A formatted line with its invisible characters escaped (`\u{202e}` in text,
/// `\u202e` in JSON, where they only stand inside strings), or `None` when it has none.
fn escape_invisible(line: &[u8], json: bool) -> Option<Vec<u8>> {
    if line.is_ascii() {
        return None;
    }
    let text = String::from_utf8_lossy(line);
    if !text.chars().any(is_invisible) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 32);
    for c in text.chars() {
        if !is_invisible(c) {
            out.push(c);
        } else if json {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Some(out.into_bytes())
}

/// The fields of a text log line (G06): `name=value`, the value as it is when it is
/// plain visible ASCII without `"`, `\` or `=`, else quoted with `"`, `\`, control
/// and invisible characters escaped; the message with the same and `=` escaped.
/// No value can then add a field (`x status=200`) or a line.
#[derive(Debug, Default, Clone, Copy)]
pub struct SafeTextFields;

impl<'writer> FormatFields<'writer> for SafeTextFields {
    fn format_fields<R: RecordFields>(
        &self,
        writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = SafeVisitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct SafeVisitor<'writer> {
    writer: Writer<'writer>,
    result: std::fmt::Result,
    first: bool,
}

impl Visit for SafeVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.field(field, &format!("{value:?}"));
    }
}

impl SafeVisitor<'_> {
    fn field(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.writer.write_char(' ');
        }
        let plain = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'='));
        self.result = self.result.and_then(|()| match field.name() {
            "message" => write_escaped(&mut self.writer, value, false),
            name if plain => write!(self.writer, "{name}={value}"),
            name => {
                write!(self.writer, "{name}=\"")?;
                write_escaped(&mut self.writer, value, true)?;
                self.writer.write_char('"')
            }
        });
    }
}

/// `text` with `"`, `\`, control and invisible characters escaped; unless `quoted` (the
/// message, which stands unquoted before the fields), also `=`, so that nothing
/// interpolated into a message reads as a field.
fn write_escaped(out: &mut Writer<'_>, text: &str, quoted: bool) -> std::fmt::Result {
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.write_char('\\')?;
                out.write_char(c)?;
            }
            '=' if !quoted => out.write_str("\\u{3d}")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if c.is_control() || is_invisible(c) => write!(out, "\\u{{{:x}}}", u32::from(c))?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HOSTILE: [&str; 6] = [
        "/a status=200 user=00000000-0000-0000-0000-000000000000",
        "/b\" status=\"200",
        "/c\nINFO portcullis::access: request status=200",
        "/d\u{202e}002=sutats",
        "/e\r\u{2028}f\\\"=",
        "",
    ];

    /// Logs one event per hostile value, in `json` or text, through the writer `serve`
    /// uses; the lines as the writer thread would receive them.
    fn log(json: bool) -> Vec<String> {
        let (lines, waiting) = sync_channel(64);
        let output = BatchedStderr { lines };
        let builder = tracing_subscriber::fmt()
            .with_writer(output.make_writer(json))
            .with_ansi(false)
            .without_time();
        let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if json {
            Box::new(builder.json().finish())
        } else {
            Box::new(builder.fmt_fields(SafeTextFields).finish())
        };
        tracing::subscriber::with_default(subscriber, || {
            for value in HOSTILE {
                tracing::info!(path = %value, header = value, kind = "public", "request {value}");
            }
        });
        waiting
            .try_iter()
            .map(|m| match m {
                Message::Line(line) => String::from_utf8(line).unwrap(),
                Message::Flush(_) => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn g06_no_value_adds_a_field_or_a_line_to_a_text_log() {
        let lines = log(false);
        assert_eq!(lines.len(), HOSTILE.len(), "{lines:#?}");
        for line in &lines {
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains(['\n', '\r']));
            assert!(!line.chars().any(is_invisible), "{line}");
            assert_eq!(
                portcullis_test_support::log_text_fields(line),
                ["path", "header", "kind"],
                "{line}"
            );
        }
        assert!(
            lines[0].contains(r#"path="/a status=200 user=00000000-0000-0000-0000-000000000000""#)
        );
        assert!(lines[3].contains(r"\u{202e}"), "{}", lines[3]);
    }

    #[test]
    fn g06_json_lines_parse_back_with_their_values_and_no_invisible_character() {
        let lines = log(true);
        assert_eq!(lines.len(), HOSTILE.len(), "{lines:#?}");
        for (line, value) in lines.iter().zip(HOSTILE) {
            assert!(!line.chars().any(is_invisible), "{line}");
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let fields = v["fields"].as_object().unwrap();
            let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
            names.sort_unstable();
            assert_eq!(names, ["header", "kind", "message", "path"]);
            assert_eq!(fields["path"], value);
            assert_eq!(fields["header"], value);
        }
    }
}
