//! HTML pages the gateway itself shows (errors, refusals). Every interpolated value is
//! escaped; pages carry a strict CSP and cannot be framed.

/// Escapes text for HTML element content and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            // Encoded, not dropped, so that a value round-trips through a hidden field.
            c if c.is_control() => out.push_str(&format!("&#x{:x};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A small page: a title, one sentence, an optional detail, an error code and a link.
pub fn message_page(
    title: &str,
    sentence: &str,
    detail: Option<&str>,
    code: &str,
    link: Option<(&str, &str)>,
) -> String {
    let detail = detail
        .map(|d| format!("<p class=\"detail\">{}</p>", escape(d)))
        .unwrap_or_default();
    let link = link
        .map(|(href, text)| format!("<p><a href=\"{}\">{}</a></p>", escape(href), escape(text)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>\
body{{font-family:system-ui,sans-serif;background:#f6f7f9;color:#1d2330;display:flex;\
min-height:100vh;align-items:center;justify-content:center;margin:0}}\
main{{background:#fff;border-radius:12px;box-shadow:0 2px 12px #0001;padding:2rem 2.5rem;max-width:32rem}}\
h1{{font-size:1.3rem;margin:0 0 .8rem}}.detail{{color:#555;white-space:pre-wrap;word-break:break-word}}\
code{{color:#777;font-size:.85rem}}a{{color:#2454c5}}</style></head>\
<body><main><h1>{title}</h1><p>{sentence}</p>{detail}{link}<p><code>error: {code}</code></p></main></body></html>\n",
        title = escape(title),
        sentence = escape(sentence),
        code = escape(code),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l09_markup_is_escaped() {
        let page = message_page("T", "s", Some("<script>alert(1)</script>\"'"), "c", None);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;"));
    }
}
