//! The one normalised form of a request path that every authorisation decision uses
//! (docs/security.md P03). Paths that different servers could read differently are
//! refused rather than guessed: encoded slashes and backslashes, double encoding,
//! control characters, invalid UTF-8, and dot segments that climb above the root.
//!
//! Normalisation: percent-decode once, drop `;` parameters from every segment (Tomcat
//! and Spring read `/admin;x=1` as `/admin`), collapse empty segments (`//`), resolve
//! `.` and `..` (RFC 3986 §5.2.4). Matching is case-sensitive: a case-insensitive
//! upstream can only make a path *more* protected than we judged, never less.

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path contains an encoded slash or backslash")]
    EncodedSeparator,
    #[error("the path is percent-encoded more than once")]
    DoubleEncoded,
    #[error("the path has a malformed percent-escape")]
    BadEscape,
    #[error("the path contains control characters or invalid UTF-8")]
    BadCharacter,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path does not start with /")]
    NotAbsolute,
    #[error("the path is too long")]
    TooLong,
    #[error("the path hides a dot segment behind `;` parameters")]
    DotSegmentWithParameters,
}

/// Longest path accepted.
pub const MAX_PATH_LEN: usize = 8 * 1024;

/// A path in normalised form, e.g. `/static/app.js`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath(String);

impl NormalizedPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Percent-decodes once (`crate::percent`), refusing what could be read two ways.
fn decode_once(raw: &str) -> Result<String, PathError> {
    use crate::percent::Found;
    for found in crate::percent::scan(raw, b"\\") {
        match found {
            Found::BadEscape => return Err(PathError::BadEscape),
            // An encoded `;` would become a parameter separator only after decoding;
            // a backslash is a separator to some servers, encoded or not.
            Found::Escape(b'/' | b'\\' | b';') | Found::Byte(b'\\') => {
                return Err(PathError::EncodedSeparator);
            }
            // `%25` decodes to `%`: a second decoder would see a new escape.
            Found::Escape(b'%') => return Err(PathError::DoubleEncoded),
            Found::Escape(_) | Found::Byte(_) => {}
        }
    }
    let text =
        String::from_utf8(crate::percent::decode_once(raw)).map_err(|_| PathError::BadCharacter)?;
    if text.chars().any(char::is_control) {
        return Err(PathError::BadCharacter);
    }
    Ok(text)
}

/// Normalises the path of a request URI (without its query).
pub fn normalize_path(raw: &str) -> Result<NormalizedPath, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_once(raw)?;
    let mut segments: Vec<&str> = Vec::new();
    for raw_segment in decoded.split('/') {
        let segment = raw_segment.split(';').next().unwrap_or("");
        // `..;x` is `..` to Tomcat but a plain name to nginx, Express or Go: refused.
        if segment != raw_segment && matches!(segment, "." | "..") {
            return Err(PathError::DotSegmentWithParameters);
        }
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    // Keep a trailing slash meaningful for matching (`/docs/` vs `/docs`).
    if path.is_empty() || decoded.ends_with('/') || decoded.ends_with("/.") {
        path.push('/');
    }
    Ok(NormalizedPath(path))
}

/// G01 (docs/security.md): whether a raw request path is already in normal form, so
/// that every reader — the gateway, a front proxy that forwards it untouched, the app —
/// reads the same path from it. Forward-auth cannot rewrite what the front proxy sends
/// the app, so it decides only on paths in this form. Normal form: it starts with `/`;
/// no `.` or `..` segment; no empty segment except a trailing `/`; no `;`, no `\`; no
/// control, whitespace or non-ASCII byte; every escape well formed and none decoding to
/// `/`, `\`, `;`, `.` or `%` (other escapes are fine: `%20`, `%C3%A9`).
pub fn is_normal_form(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') || bytes.len() > MAX_PATH_LEN {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' | b'\\' => return false,
            b if b <= b' ' || b >= 0x7f => return false,
            b'%' => {
                let decoded = bytes
                    .get(i + 1..i + 3)
                    .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match decoded {
                    Some(b'/' | b'\\' | b';' | b'.' | b'%') | None => return false,
                    Some(_) => i += 3,
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let mut segments = raw[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if matches!(segment, "." | "..") || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

impl NormalizedPath {
    /// The path as it is forwarded upstream: each segment percent-encoded again where
    /// RFC 3986 §3.3 requires (`pchar` minus `;`), so that the upstream reads exactly the
    /// path the decision was made on.
    pub fn encoded(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for b in self.0.bytes() {
            let keep = b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'/' | b'-'
                        | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b'='
                        | b':'
                        | b'@'
                );
            if keep {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
}

/// A `public_paths` pattern: an exact path, or a prefix ending in `/*` that matches the
/// prefix itself and everything below it on a segment boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    Prefix(String),
}

impl PathPattern {
    /// Parses a configured pattern; `None` if it is not one of the two forms.
    pub fn parse(pattern: &str) -> Option<Self> {
        if !pattern.starts_with('/') {
            return None;
        }
        let (base, prefix) = match pattern.strip_suffix("/*") {
            Some(base) => (if base.is_empty() { "/" } else { base }, true),
            None => (pattern, false),
        };
        if base.contains('*') {
            return None;
        }
        // Patterns are written in normalised form; refuse ones that are not.
        let normal = normalize_path(base).ok()?;
        if normal.as_str() != base {
            return None;
        }
        Some(if prefix {
            Self::Prefix(base.trim_end_matches('/').to_owned())
        } else {
            Self::Exact(base.to_owned())
        })
    }

    pub fn matches(&self, path: &NormalizedPath) -> bool {
        self.matches_str(path.as_str(), false)
    }

    /// [`PathPattern::matches`] for restrictions (`[[routes]]`), where matching more
    /// paths is the safe direction: ignoring ASCII case (`/Admin` is `/admin` to a
    /// case-insensitive upstream), and an exact pattern matching its path with a
    /// trailing slash too (Express and Spring serve `/admin/` with `/admin`'s handler).
    pub fn matches_ignoring_case(&self, path: &NormalizedPath) -> bool {
        let p = path.as_str();
        self.matches_str(p, true)
            || (matches!(self, Self::Exact(_))
                && p.len() > 1
                && p.strip_suffix('/')
                    .is_some_and(|p| self.matches_str(p, true)))
    }

    fn matches_str(&self, p: &str, ignore_case: bool) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        let p = p.as_bytes();
        match self {
            Self::Exact(e) => eq(p, e.as_bytes()),
            Self::Prefix(base) if base.is_empty() => true,
            Self::Prefix(base) => {
                let base = base.as_bytes();
                p.len() >= base.len()
                    && eq(&p[..base.len()], base)
                    && (p.len() == base.len() || p[base.len()] == b'/')
            }
        }
    }

    /// Whether some path matches both patterns, ignoring ASCII case.
    /// Whether every path `other` matches, this pattern matches too (ASCII case
    /// ignored): a route after this one with that pattern could never apply.
    pub fn covers_ignoring_case(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a.eq_ignore_ascii_case(b),
            (Self::Exact(_), Self::Prefix(_)) => false,
            (Self::Prefix(_), Self::Exact(e)) => self.matches_str(e, true),
            (Self::Prefix(_), Self::Prefix(b)) => {
                self.matches_str(if b.is_empty() { "/" } else { b }, true)
            }
        }
    }

    pub fn overlaps_ignoring_case(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a.eq_ignore_ascii_case(b),
            (Self::Exact(e), p @ Self::Prefix(_)) | (p @ Self::Prefix(_), Self::Exact(e)) => {
                p.matches_str(e, true)
            }
            // Two subtrees overlap when one root lies in the other.
            (Self::Prefix(a), Self::Prefix(b)) => {
                self.matches_str(if b.is_empty() { "/" } else { b }, true)
                    || other.matches_str(if a.is_empty() { "/" } else { a }, true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path(p).map(|x| x.0)
    }

    #[test]
    fn a_covering_pattern_matches_every_path_the_covered_one_does() {
        // Every pattern and path over a small alphabet, up to three segments.
        let mut segments = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = segments
                .iter()
                .flat_map(|s| ["a", "B", "b"].map(|x| format!("{s}/{x}")))
                .collect();
            segments.extend(longer);
        }
        // Paths one segment deeper than any pattern.
        let deeper: Vec<String> = segments
            .iter()
            .flat_map(|s| [s.clone(), format!("{s}/a"), format!("{s}/c")])
            .collect();
        let paths: Vec<NormalizedPath> = deeper
            .iter()
            .flat_map(|s| [s.clone(), format!("{s}/")])
            .filter_map(|s| normalize_path(if s.is_empty() { "/" } else { &s }).ok())
            .collect();
        let patterns: Vec<PathPattern> = segments
            .iter()
            .flat_map(|s| {
                [
                    PathPattern::parse(if s.is_empty() { "/" } else { s }),
                    PathPattern::parse(&format!("{s}/*")),
                ]
            })
            .flatten()
            .collect();
        let mut covering = 0;
        for a in &patterns {
            for b in &patterns {
                let implied = paths
                    .iter()
                    .all(|p| !b.matches_ignoring_case(p) || a.matches_ignoring_case(p));
                assert_eq!(a.covers_ignoring_case(b), implied, "{a:?} covers {b:?}");
                covering += usize::from(implied);
            }
        }
        assert!(covering > patterns.len(), "the property was exercised");
    }

    #[test]
    fn p03_normal_forms() {
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/a/b").unwrap(), "/a/b");
        assert_eq!(n("//a///b").unwrap(), "/a/b");
        assert_eq!(n("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(n("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(n("/a/%2E/b").unwrap(), "/a/b");
        assert_eq!(n("/admin;jsessionid=1").unwrap(), "/admin");
        assert_eq!(
            n("/static/..;/admin"),
            Err(PathError::DotSegmentWithParameters)
        );
        assert_eq!(
            n("/admin/..;/public/x"),
            Err(PathError::DotSegmentWithParameters)
        );
        assert_eq!(n("/admin/..%3B/public/x"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a;x/b;y=1/").unwrap(), "/a/b/");
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
        assert_eq!(n("/caf%C3%A9").unwrap(), "/café");
        assert_eq!(n("/docs/").unwrap(), "/docs/");
    }

    #[test]
    fn p03_ambiguous_paths_are_refused() {
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a\\b"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/%252e%252e/admin"), Err(PathError::DoubleEncoded));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%00b"), Err(PathError::BadCharacter));
        assert_eq!(n("/a%0d%0ab"), Err(PathError::BadCharacter));
        assert_eq!(n("/%ff"), Err(PathError::BadCharacter));
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn patterns_match_on_segment_boundaries() {
        let p = PathPattern::parse("/static/*").unwrap();
        let ok = |s: &str| p.matches(&normalize_path(s).unwrap());
        assert!(ok("/static"));
        assert!(ok("/static/app.js"));
        assert!(ok("/static/a/b"));
        assert!(!ok("/staticfiles/x"));
        assert!(!ok("/static/../admin"));
        assert!(!ok("/STATIC/app.js"));
        let exact = PathPattern::parse("/healthcheck").unwrap();
        assert!(exact.matches(&normalize_path("/healthcheck").unwrap()));
        assert!(!exact.matches(&normalize_path("/healthcheck/x").unwrap()));
        assert!(exact.matches(&normalize_path("/healthcheck;x").unwrap()));
        for bad in ["static/*", "/a/*/b", "/a*", "/a/../b", "/a//b"] {
            assert_eq!(PathPattern::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn restrictions_match_ignoring_case_and_overlaps_are_found() {
        let admin = PathPattern::parse("/admin/*").unwrap();
        let m = |s: &str| admin.matches_ignoring_case(&normalize_path(s).unwrap());
        assert!(m("/admin") && m("/Admin/x") && m("/ADMIN/") && m("/%61dmin/x"));
        assert!(!m("/administrator") && !m("/x/admin"));
        let exact = PathPattern::parse("/admin").unwrap();
        let e = |s: &str| exact.matches_ignoring_case(&normalize_path(s).unwrap());
        assert!(e("/admin") && e("/Admin/") && e("/admin/.") && e("/admin;x/"));
        assert!(!e("/admin/x") && !e("/admin//x"));
        let p = |s: &str| PathPattern::parse(s).unwrap();
        let overlap = |a: &str, b: &str| {
            let (a, b) = (p(a), p(b));
            assert_eq!(a.overlaps_ignoring_case(&b), b.overlaps_ignoring_case(&a));
            a.overlaps_ignoring_case(&b)
        };
        assert!(overlap("/admin/*", "/Admin/login"));
        assert!(overlap("/admin/*", "/admin"));
        assert!(overlap("/admin/*", "/ADMIN/public/*"));
        assert!(overlap("/*", "/anything"));
        assert!(overlap("/*", "/x/*"));
        assert!(overlap("/health", "/HEALTH"));
        assert!(!overlap("/admin/*", "/administrator/*"));
        assert!(!overlap("/admin/*", "/static/*"));
        assert!(!overlap("/admin", "/admin/x"));
    }

    #[test]
    fn g01_normal_form_is_exactly_the_defined_one() {
        for ok in [
            "/",
            "/a",
            "/a/",
            "/a/b.c/d..e/.f",
            "/caf%C3%A9/a%20b",
            "/%61dmin",
            "/a/~x-y_z",
            "/a:b@c!$&'()*+,=",
        ] {
            assert!(is_normal_form(ok), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "//a",
            "/a//b",
            "/a//",
            "/.",
            "/./a",
            "/a/.",
            "/a/..",
            "/admin/../public/x",
            "/a;jsessionid=1",
            "/admin;/x",
            "/a\\b",
            "/a b",
            "/a\tb",
            "/a\x7fb",
            "/café",
            "/%2e%2e/admin",
            "/a%2Eb",
            "/a%2fb",
            "/a%2F",
            "/a%5cb",
            "/a%3bb",
            "/a%25",
            "/a%2",
            "/a%zz",
            "/a%+5",
        ] {
            assert!(!is_normal_form(bad), "{bad:?}");
        }
    }

    proptest! {
        /// Normalising twice changes nothing, and the result has no dot segments,
        /// empty segments or `;` parameters.
        #[test]
        fn normalisation_is_idempotent(s in "/[a-z./;%2eE5cC0-9]{0,40}") {
            if let Ok(once) = normalize_path(&s) {
                let twice = normalize_path(once.as_str());
                prop_assert_eq!(twice.as_ref().map(NormalizedPath::as_str), Ok(once.as_str()));
                let trimmed = once.as_str().trim_end_matches('/');
                for seg in trimmed.split('/').skip(1) {
                    prop_assert!(seg != "." && seg != ".." && !seg.is_empty() && !seg.contains(';'));
                }
            }
        }

        /// A public prefix never admits a path that resolves outside it.
        #[test]
        fn prefix_match_implies_containment(tail in "[a-z./;%2eE]{0,30}") {
            let pattern = PathPattern::parse("/public/*").unwrap();
            if let Ok(path) = normalize_path(&format!("/public/{tail}"))
                && pattern.matches(&path)
            {
                prop_assert!(path.as_str() == "/public" || path.as_str().starts_with("/public/"));
            }
        }

        #[test]
        fn never_panics(s in "\\PC{0,64}") {
            let _ = normalize_path(&s);
        }

        /// G01: a path in normal form is read the same by everyone: normalising it
        /// only decodes its escapes (nothing is resolved, dropped or merged).
        #[test]
        fn a_normal_form_path_normalises_to_its_own_decoding(s in "/[a-zA-Z./;%2eE5cCfF0-9+]{0,40}") {
            if is_normal_form(&s) {
                match String::from_utf8(crate::percent::decode_once(&s)) {
                    Ok(decoded) if !decoded.chars().any(char::is_control) => {
                        prop_assert_eq!(normalize_path(&s).map(|p| p.0), Ok(decoded));
                    }
                    // Escapes of controls or invalid UTF-8: refused by everyone here.
                    _ => prop_assert!(normalize_path(&s).is_err()),
                }
            }
        }
    }
}

#[cfg(test)]
mod encoding_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoded_paths_read_back_to_themselves() {
        let p = normalize_path("/caf%C3%A9/a%20b/x%3Fy/%23").unwrap();
        assert_eq!(p.as_str(), "/café/a b/x?y/#");
        assert_eq!(p.encoded(), "/caf%C3%A9/a%20b/x%3Fy/%23");
        assert_eq!(normalize_path(&p.encoded()).unwrap(), p);
    }

    proptest! {
        /// What the upstream receives normalises to what the decision was made on.
        #[test]
        fn forwarded_form_round_trips(s in "/[a-zA-Z0-9./;%2eE5fF?# é-]{0,40}") {
            if let Ok(p) = normalize_path(&s) {
                let forwarded = p.encoded();
                prop_assert!(forwarded.parse::<axum::http::Uri>().is_ok(), "{}", forwarded);
                prop_assert_eq!(normalize_path(&forwarded).unwrap(), p);
            }
        }
    }
}
