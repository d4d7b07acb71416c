//! The gateway's two cookies (docs/security.md "What the browser holds"):
//! reading them from `Cookie` headers and writing `Set-Cookie` values. Host-only,
//! `Path=/`, `HttpOnly`, `SameSite=Lax`; on https also `Secure` and the `__Host-` prefix
//! (RFC 6265bis §4.1.3.2), so no sibling subdomain can plant or read them.

use axum::http::HeaderMap;
use axum::http::header::COOKIE;

/// Which of our cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieKind {
    Session,
    LoginBinding,
    /// The `state` of an RP-initiated logout in progress at the provider.
    Logout,
}

/// Cookie names and attributes for one deployment.
#[derive(Debug, Clone)]
pub struct CookieJar {
    secure: bool,
}

/// What a request carried for one cookie name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieValue {
    Missing,
    One(String),
    /// Several different values: refused rather than guessed.
    Ambiguous,
}

impl CookieValue {
    pub fn value(&self) -> Option<&str> {
        match self {
            Self::One(v) => Some(v),
            _ => None,
        }
    }
}

impl CookieJar {
    pub fn new(secure: bool) -> Self {
        Self { secure }
    }

    pub fn name(&self, kind: CookieKind) -> &'static str {
        match (kind, self.secure) {
            (CookieKind::Session, false) => "portcullis",
            (CookieKind::Session, true) => "__Host-portcullis",
            (CookieKind::LoginBinding, false) => "portcullis_tx",
            (CookieKind::LoginBinding, true) => "__Host-portcullis-tx",
            (CookieKind::Logout, false) => "portcullis_logout",
            (CookieKind::Logout, true) => "__Host-portcullis-logout",
        }
    }

    /// Every name the gateway might use, for stripping before proxying.
    pub fn all_names() -> [&'static str; 6] {
        [
            "portcullis",
            "__Host-portcullis",
            "portcullis_tx",
            "__Host-portcullis-tx",
            "portcullis_logout",
            "__Host-portcullis-logout",
        ]
    }

    /// Reads one of our cookies from the request.
    pub fn read(&self, headers: &HeaderMap, kind: CookieKind) -> CookieValue {
        find_cookie(headers, self.name(kind))
    }

    /// `Set-Cookie` for a value that lives `max_age` seconds.
    pub fn set(&self, kind: CookieKind, value: &str, max_age: i64) -> String {
        format!(
            "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
            self.name(kind),
            value,
            max_age.max(0),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// `Set-Cookie` that deletes the cookie, with the same attributes it was set with.
    pub fn clear(&self, kind: CookieKind) -> String {
        self.set(kind, "", 0)
    }
}

/// Finds cookie `name` across all `Cookie` headers (RFC 6265 §5.4 syntax).
/// Duplicates with the same value count once; differing duplicates are ambiguous.
pub fn find_cookie(headers: &HeaderMap, name: &str) -> CookieValue {
    let mut found: Option<String> = None;
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            let Some((n, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if n.trim() != name {
                continue;
            }
            let v = v.trim();
            match &found {
                None => found = Some(v.to_owned()),
                Some(prev) if prev == v => {}
                Some(_) => return CookieValue::Ambiguous,
            }
        }
    }
    match found {
        Some(v) if !v.is_empty() => CookieValue::One(v),
        _ => CookieValue::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn finds_our_cookie_among_others() {
        let h = headers(&["a=1; portcullis=abc; portcullis_tx=def", "b=2"]);
        assert_eq!(
            find_cookie(&h, "portcullis"),
            CookieValue::One("abc".into())
        );
        assert_eq!(
            find_cookie(&h, "portcullis_tx"),
            CookieValue::One("def".into())
        );
        assert_eq!(find_cookie(&h, "portcullis_t"), CookieValue::Missing);
    }

    #[test]
    fn differing_duplicates_are_ambiguous() {
        let h = headers(&["portcullis=abc", "portcullis=xyz"]);
        assert_eq!(find_cookie(&h, "portcullis"), CookieValue::Ambiguous);
        let same = headers(&["portcullis=abc; portcullis=abc"]);
        assert_eq!(
            find_cookie(&same, "portcullis"),
            CookieValue::One("abc".into())
        );
    }

    #[test]
    fn empty_and_malformed_cookies_are_missing() {
        for v in ["", ";;;", "portcullis", "portcullis=", "=x"] {
            assert_eq!(
                find_cookie(&headers(&[v]), "portcullis"),
                CookieValue::Missing,
                "{v:?}"
            );
        }
    }

    #[test]
    fn s01_attributes_on_https_and_http() {
        let https = CookieJar::new(true);
        let c = https.set(CookieKind::Session, "v", 100);
        assert!(c.starts_with("__Host-portcullis=v;"));
        for attr in [
            "Path=/",
            "Max-Age=100",
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
        ] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(!c.to_ascii_lowercase().contains("domain"));
        let http = CookieJar::new(false).set(CookieKind::LoginBinding, "v", 600);
        assert!(http.starts_with("portcullis_tx=v;") && !http.contains("Secure"));
        assert!(https.clear(CookieKind::Session).contains("Max-Age=0"));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "[ -~]{0,200}") {
            if let Ok(v) = HeaderValue::from_str(&s) {
                let mut h = HeaderMap::new();
                h.insert(COOKIE, v);
                let _ = find_cookie(&h, "portcullis");
            }
        }

        #[test]
        fn a_set_value_reads_back(v in "[A-Za-z0-9_-]{1,64}", other in "[a-z]{1,8}") {
            let h = headers(&[&format!("{other}=1; portcullis={v}")]);
            prop_assume!(other != "portcullis");
            prop_assert_eq!(find_cookie(&h, "portcullis"), CookieValue::One(v));
        }
    }
}
