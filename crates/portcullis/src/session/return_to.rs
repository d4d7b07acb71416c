//! Where to send the browser after login. Only a same-origin path survives; anything
//! else (absolute or scheme-relative URLs, backslashes raw or encoded, userinfo,
//! control characters) becomes `/` (docs/security.md L07).

/// Longest `return_to` kept; longer ones become `/`.
pub const MAX_RETURN_TO: usize = 2048;

/// A validated same-origin path with optional query, e.g. `/orders?page=2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnTo(String);

impl ReturnTo {
    /// The site root.
    pub fn root() -> Self {
        Self("/".into())
    }

    /// Validates a user-supplied target; anything doubtful becomes `/`.
    pub fn parse(raw: Option<&str>) -> Self {
        raw.and_then(validated).map(Self).unwrap_or_else(Self::root)
    }

    /// A value read back from the store, where only validated values are written.
    pub fn from_stored(s: String) -> Self {
        Self::parse(Some(&s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validated(raw: &str) -> Option<String> {
    if raw.is_empty() || raw.len() > MAX_RETURN_TO {
        return None;
    }
    // Judge both the raw and the once-decoded form: a browser or upstream may decode.
    let decoded = decode_once(raw)?;
    for form in [raw, decoded.as_str()] {
        let bytes = form.as_bytes();
        if bytes.first() != Some(&b'/') {
            return None;
        }
        // `//host` and `/\host` are scheme-relative to browsers.
        if matches!(bytes.get(1), Some(b'/') | Some(b'\\')) {
            return None;
        }
        if form.contains('\\') || form.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return None;
        }
    }
    // Drop any fragment; keep path and query as sent (no re-encoding surprises).
    let without_fragment = raw.split('#').next().unwrap_or("/");
    // Only characters a URL may carry unencoded; others must arrive percent-encoded.
    if !without_fragment.bytes().all(|b| {
        b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'^')
    }) {
        return None;
    }
    // Final check with a real URL parser: the result must stay on our origin.
    let base = url::Url::parse("http://portcullis.invalid/").ok()?;
    let joined = base.join(without_fragment).ok()?;
    if joined.origin() != base.origin() || !joined.username().is_empty() {
        return None;
    }
    Some(without_fragment.to_owned())
}

/// Decodes `%XX` once (`crate::percent`). `None` when the result is not UTF-8, or holds
/// a replacement character the raw form did not (refused outright).
fn decode_once(s: &str) -> Option<String> {
    String::from_utf8(crate::percent::decode_once(s))
        .ok()
        .filter(|d| !d.contains('\u{FFFD}') || s.contains('\u{FFFD}'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn same_origin_paths_are_kept() {
        for ok in [
            "/",
            "/orders",
            "/a/b?c=d&e=%2F",
            "/x?next=https://evil.com",
            "/%E2%9C%93",
        ] {
            assert_eq!(ReturnTo::parse(Some(ok)).as_str(), ok, "{ok}");
        }
        assert_eq!(ReturnTo::parse(Some("/a#frag")).as_str(), "/a");
    }

    #[test]
    fn l07_open_redirect_tricks_become_root() {
        for bad in [
            "https://evil.com",
            "http://evil.com/x",
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "/%5Cevil.com",
            "/%5cevil.com",
            "%2F%2Fevil.com",
            "/%2F/evil.com",
            "https://app@evil.com",
            "//app@evil.com",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,x",
            "/ok\r\nSet-Cookie: x=y",
            "/ok%0d%0aSet-Cookie:x",
            // Decoded as a whole (the form decoder used before stopped at the first `&`).
            "/ok?a=1&b=%0d%0aSet-Cookie:x",
            "/ok?a=1&b=%5C",
            "/ok%00",
            "/\tevil",
            " /x",
            "evil.com",
            "",
        ] {
            assert_eq!(ReturnTo::parse(Some(bad)).as_str(), "/", "{bad:?}");
        }
        assert_eq!(
            ReturnTo::parse(Some(&format!("/{}", "a".repeat(5000)))).as_str(),
            "/"
        );
        assert_eq!(ReturnTo::parse(None).as_str(), "/");
    }

    proptest! {
        /// Whatever comes in, the result is a path a browser resolves on our origin.
        #[test]
        fn result_always_stays_on_origin(s in "\\PC{0,64}|[/\\\\%a-z:@.]{0,24}") {
            let r = ReturnTo::parse(Some(&s));
            let v = r.as_str();
            prop_assert!(v.starts_with('/'));
            prop_assert!(!v.starts_with("//") && !v.starts_with("/\\"));
            prop_assert!(!v.contains('\\') && !v.chars().any(char::is_control));
            let base = url::Url::parse("https://app.example.com/").unwrap();
            prop_assert_eq!(base.join(v).unwrap().origin(), base.origin());
        }
    }
}
