//! Log lines: `log` (the filter) and `log_format` (text or JSON), both top level.

/// Text or JSON log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `log`, default `info`: a `tracing` env-filter, checked when the subscriber starts.
pub(super) fn filter(value: Option<String>) -> String {
    value.unwrap_or_else(|| "info".into())
}

/// `log_format`, default `text`.
pub(super) fn format(value: Option<String>, errors: &mut Vec<String>) -> LogFormat {
    match value.as_deref() {
        None | Some("text") | Some("") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errors.push(format!(
                "`log_format`: `{other}` is neither `text` nor `json`"
            ));
            LogFormat::Text
        }
    }
}
