//! Request headers on their way to the upstream (docs/proxy.md "What the upstream
//! receives"; docs/security.md P01, P02, P04, P07, P08): client-sent identity headers
//! removed in any spelling an upstream might normalise to ours, forwarding headers
//! removed unless the peer is a trusted proxy, hop-by-hop headers removed (RFC 9110
//! §7.6.1), the gateway's own cookies removed, and our identity headers set from the
//! session alone.

use axum::http::header::{COOKIE, HeaderName};
use axum::http::{HeaderMap, HeaderValue, header};

use super::cookies::CookieJar;

/// The identity headers the gateway sets.
pub const USER_ID: &str = "x-user-id";
pub const USER_EMAIL: &str = "x-user-email";
pub const USER_NAME: &str = "x-user-name";
/// The id of the provider that signed the user in (`[[providers]]`; `default` for the
/// top-level form).
pub const USER_PROVIDER: &str = "x-user-provider";
/// How the request was authenticated: `session`, `bearer` or `dpop`.
pub const USER_AUTH_METHOD: &str = "x-user-auth-method";
/// The DPoP proof of a relayed bound token (RFC 9449 §4.1).
pub const DPOP: &str = "dpop";
/// A resource server's DPoP nonce (RFC 9449 §9).
pub const DPOP_NONCE: &str = "dpop-nonce";
/// The signed identity assertion (`session::assertion`).
pub const JWT_ASSERTION: &str = "x-portcullis-jwt-assertion";

/// Longest identity header value passed on; longer claims are left out (P07).
pub const MAX_IDENTITY_VALUE: usize = 1024;

/// How an upstream might read a header name: case-folded, and any character that is
/// not a letter or digit (`_`, `.`, `+`, …) read as `-`. Compared as it is made, so
/// that checking every header of every request allocates nothing.
fn canonical(name: &str) -> impl Iterator<Item = char> + '_ {
    name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        }
    })
}

/// Whether `name`, read as an upstream might, starts with `prefix` (lower case).
fn canonical_starts_with(name: &str, prefix: &str) -> bool {
    let mut read = canonical(name);
    prefix.chars().all(|p| read.next() == Some(p))
}

/// Whether `name`, read as an upstream might, is `other` (lower case).
pub(crate) fn canonical_is(name: &str, other: &str) -> bool {
    canonical(name).eq(other.chars())
}

/// Headers a client may not have removed by naming them in `Connection`: the ones the
/// gateway sets for the upstream, and the framing of the message.
fn is_protected_from_connection(name: &str) -> bool {
    is_identity_header(name)
        || is_forwarding_header(name)
        || matches!(
            name,
            "host" | "content-length" | "content-type" | "cookie" | "authorization"
        )
}

/// Whether a client-sent header claims an identity or speaks for the gateway
/// (`X-User-*`, `X-Auth-Request-*`, `X-Portcullis-*`, in any spelling).
pub fn is_identity_header(name: &str) -> bool {
    canonical_starts_with(name, "x-user-")
        || canonical_starts_with(name, "x-auth-request-")
        || canonical_starts_with(name, "x-portcullis-")
}

/// G05 (docs/security.md): headers that tell an app (or a framework in it) which path,
/// method, host or prefix a request "really" had. The gateway decided on the request it
/// saw: none of these reaches the app from any peer, in any spelling.
const ROUTING_HEADERS: [&str; 10] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-method",
    "x-forwarded-uri",
    "x-forwarded-method",
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
];

/// Whether a header is one of G05's routing headers, in any spelling.
pub fn is_routing_header(name: &str) -> bool {
    ROUTING_HEADERS
        .iter()
        .any(|other| canonical_is(name, other))
}

/// Forwarding headers that are only believed from trusted proxies (P04).
pub fn is_forwarding_header(name: &str) -> bool {
    canonical_starts_with(name, "x-forwarded-")
        || [
            "forwarded",
            "x-original-url",
            "x-rewrite-url",
            "x-original-uri",
            "x-real-ip",
            "x-client-ip",
            "true-client-ip",
        ]
        .iter()
        .any(|other| canonical_is(name, other))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): always removed.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// The headers `Connection` names as hop-by-hop (RFC 9110 §7.6.1), lower-cased.
fn named_by_connection(headers: &HeaderMap) -> Vec<String> {
    let mut names = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        if let Ok(v) = value.to_str() {
            names.extend(
                v.split(',')
                    .map(|n| n.trim().to_ascii_lowercase())
                    .filter(|n| !n.is_empty() && !is_protected_from_connection(n)),
            );
        }
    }
    names
}

/// Removes hop-by-hop headers; with `keep_upgrade`, keeps `Connection: upgrade` and
/// `Upgrade` for a WebSocket handshake.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Without any of them (no `Connection` either) there is nothing to do: one pass
    // over the names instead of a lookup per hop-by-hop name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in named_by_connection(headers) {
        headers.remove(name.as_str());
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade && let Some(u) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
}

/// Removes every client-sent identity header and routing header (G05), and the other
/// forwarding headers unless the peer is trusted — and even from a trusted peer when
/// spelled otherwise than a proxy writes them (`X_Forwarded_Host`, `x.forwarded.proto`:
/// CGI, Rack and WSGI read those as the real ones, and proxies pass them on).
pub fn remove_client_claims(headers: &mut HeaderMap, peer_trusted: bool) {
    let odd_spelling = |n: &str| n.bytes().any(|b| b != b'-' && !b.is_ascii_alphanumeric());
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            is_identity_header(n)
                || is_routing_header(n)
                || (is_forwarding_header(n) && (!peer_trusted || odd_spelling(n)))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes the gateway's own cookies from `Cookie`, keeping the app's (P08). A `Cookie`
/// header that is not visible ASCII is dropped whole: an upstream might still find our
/// cookie in it.
pub fn remove_gateway_cookies(headers: &mut HeaderMap) {
    let ours = CookieJar::all_names();
    let is_ours = |pair: &str| ours.contains(&pair.split('=').next().unwrap_or("").trim());
    // Most requests carry none of ours (public paths): nothing to rebuild.
    let rebuild = headers.get_all(COOKIE).iter().any(|value| {
        value
            .to_str()
            .map_or(true, |text| cookie_pairs(text).any(is_ours))
    });
    if !rebuild {
        return;
    }
    let mut kept = String::new();
    for text in headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for pair in cookie_pairs(text).filter(|pair| !is_ours(pair)) {
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(pair);
        }
    }
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept)
    {
        headers.insert(COOKIE, v);
    }
}

/// Removes the upstream's `Set-Cookie` headers that would set, replace or delete one
/// of the gateway's cookies (C01): any case, with or without `__Host-`/`__Secure-`,
/// `_` or `-`, and a nameless cookie whose value a browser would send as ours.
pub fn remove_gateway_set_cookies(headers: &mut HeaderMap) {
    let ours = |set_cookie: &HeaderValue| {
        let bytes = set_cookie.as_bytes();
        let pair = bytes.split(|b| *b == b';').next().unwrap_or_default();
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (&[][..], pair),
        };
        // A nameless cookie is sent as its bare value: `=portcullis=x` arrives as
        // `portcullis=x`.
        let sent = match name.trim_ascii() {
            [] => value.split(|b| *b == b'=').next().unwrap_or_default(),
            name => name,
        };
        is_gateway_cookie_name(sent.trim_ascii())
    };
    if !headers.get_all(header::SET_COOKIE).iter().any(ours) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !ours(v))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

/// Whether a cookie name is one the gateway uses, however spelled.
fn is_gateway_cookie_name(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    let bare = lower
        .strip_prefix(b"__host-")
        .or_else(|| lower.strip_prefix(b"__secure-"))
        .unwrap_or(&lower);
    let bare: Vec<u8> = bare
        .iter()
        .map(|b| if *b == b'_' { b'-' } else { *b })
        .collect();
    matches!(
        &bare[..],
        b"portcullis" | b"portcullis-tx" | b"portcullis-logout"
    )
}

/// The `name=value` pairs of one `Cookie` header.
fn cookie_pairs(text: &str) -> impl Iterator<Item = &str> {
    text.split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
}

/// A claim as a header value: printable ASCII kept, everything else (non-ASCII,
/// controls, `%`) percent-encoded as UTF-8; `None` when empty or too long (P07).
pub fn identity_value(claim: &str) -> Option<HeaderValue> {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'%';
    if claim.bytes().all(plain) {
        // Nothing to encode (most claims): one copy, straight into the value.
        if claim.is_empty() || claim.len() > MAX_IDENTITY_VALUE {
            return None;
        }
        return HeaderValue::from_str(claim).ok();
    }
    let mut out = String::with_capacity(claim.len() + 8);
    for b in claim.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
    if out.len() > MAX_IDENTITY_VALUE {
        return None;
    }
    HeaderValue::from_str(&out).ok()
}

/// A list claim (`groups`) as one comma-separated header value (G10): in each item,
/// `%`, `,` and everything but printable ASCII are percent-encoded as UTF-8, so that no
/// item splits into two and a reader decodes each back; `None` when empty or over
/// [`MAX_IDENTITY_VALUE`].
pub fn identity_list_value<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<HeaderValue> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for b in item.bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' && b != b',' {
                out.push(b as char);
            } else {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
    }
    if out.is_empty() || out.len() > MAX_IDENTITY_VALUE {
        return None;
    }
    HeaderValue::from_str(&out).ok()
}

/// Who a request passes as: the identity headers' values.
#[derive(Debug, Clone, Copy)]
pub struct IdentityValues<'a> {
    pub id: &'a str,
    pub email: Option<&'a str>,
    pub name: Option<&'a str>,
    pub provider: &'a str,
    /// `session`, `bearer` or `dpop`.
    pub auth_method: &'a str,
}

/// Sets our identity headers (exactly one of each) from the session's user.
pub fn set_identity(headers: &mut HeaderMap, who: IdentityValues<'_>) {
    const NAMES: [HeaderName; 5] = [
        HeaderName::from_static(USER_ID),
        HeaderName::from_static(USER_EMAIL),
        HeaderName::from_static(USER_NAME),
        HeaderName::from_static(USER_PROVIDER),
        HeaderName::from_static(USER_AUTH_METHOD),
    ];
    let [
        id_header,
        email_header,
        name_header,
        provider_header,
        method_header,
    ] = NAMES;
    for (header, value) in [
        (id_header, Some(who.id)),
        (email_header, who.email),
        (name_header, who.name),
        (provider_header, Some(who.provider)),
        (method_header, Some(who.auth_method)),
    ] {
        headers.remove(&header);
        if let Some(v) = value.and_then(identity_value) {
            headers.insert(header, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn p01_identity_headers_in_every_spelling() {
        for name in [
            "X-User-Id",
            "x-user-id",
            "X_USER_ID",
            "x_user-email",
            "X-User-Anything",
        ] {
            assert!(is_identity_header(name), "{name}");
        }
        assert!(is_identity_header("X.User.Id") && is_identity_header("x+user+id"));
        assert!(!is_identity_header("x-username"));
        assert!(!is_identity_header("x-users"));
    }

    #[test]
    fn p01_client_claims_are_removed_and_ours_set_once() {
        let mut h = HeaderMap::new();
        h.append("x-user-id", HeaderValue::from_static("admin"));
        h.append("x-user-id", HeaderValue::from_static("root"));
        h.append("x_user_id", HeaderValue::from_static("admin"));
        h.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.append("x-original-url", HeaderValue::from_static("/public"));
        h.append("accept", HeaderValue::from_static("*/*"));
        remove_client_claims(&mut h, false);
        h.append("x-user-provider", HeaderValue::from_static("corp"));
        set_identity(
            &mut h,
            IdentityValues {
                id: "u-1",
                email: Some("a@example.com"),
                name: Some("Zoë\r\nX-Evil: 1"),
                provider: "partner",
                auth_method: "session",
            },
        );
        assert_eq!(h.get_all("x-user-provider").iter().count(), 1);
        assert_eq!(h["x-user-provider"], "partner");
        assert_eq!(h.get_all("x-user-id").iter().count(), 1);
        assert_eq!(h["x-user-id"], "u-1");
        assert!(h.get("x_user_id").is_none());
        assert!(h.get("x-forwarded-for").is_none() && h.get("x-original-url").is_none());
        assert_eq!(h["x-user-name"], "Zo%C3%AB%0D%0AX-Evil: 1");
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn p04_forwarding_headers_kept_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-real-ip", HeaderValue::from_static("10.0.0.1"));
        remove_client_claims(&mut h, true);
        assert!(h.get("x-forwarded-for").is_some() && h.get("x-real-ip").is_some());
    }

    #[test]
    fn g05_forwarding_headers_in_odd_spellings_never_pass() {
        let mut h = HeaderMap::new();
        for name in ["x_forwarded_host", "x.forwarded.proto", "x_real_ip"] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        remove_client_claims(&mut h, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.get("x-forwarded-for").is_some());
    }

    #[test]
    fn g05_routing_headers_never_pass_from_any_peer() {
        for trusted in [false, true] {
            let mut h = HeaderMap::new();
            for name in [
                "x-original-url",
                "X-Rewrite-URL",
                "x_original_uri",
                "x-original-method",
                "x-forwarded-uri",
                "X-Forwarded-Method",
                "forwarded",
                "x.forwarded.port",
                "x-forwarded-prefix",
                "x-forwarded-server",
            ] {
                h.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_static("/admin"),
                );
            }
            h.append("accept", HeaderValue::from_static("*/*"));
            remove_client_claims(&mut h, trusted);
            assert_eq!(h.len(), 1, "trusted: {trusted}: {h:?}");
        }
    }

    #[test]
    fn g10_list_items_never_split() {
        let v = identity_list_value(["a,b", "100%", "ok", "é"]).unwrap();
        assert_eq!(v, "a%2Cb,100%25,ok,%C3%A9");
        let items: Vec<String> = v
            .to_str()
            .unwrap()
            .split(',')
            .map(|i| String::from_utf8(crate::percent::decode_once(i)).unwrap())
            .collect();
        assert_eq!(items, ["a,b", "100%", "ok", "é"]);
        assert!(identity_list_value([]).is_none());
        assert!(identity_list_value(["x".repeat(MAX_IDENTITY_VALUE + 1).as_str()]).is_none());
    }

    #[test]
    fn p07_oversized_values_are_left_out() {
        assert!(identity_value(&"a".repeat(MAX_IDENTITY_VALUE + 1)).is_none());
        assert!(identity_value("").is_none());
        assert_eq!(identity_value("100%").unwrap(), "100%25");
    }

    #[test]
    fn p08_gateway_cookies_are_removed() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("app=1; portcullis=secret; __Host-portcullis=s2"),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static("portcullis_tx=t; theme=dark"),
        );
        remove_gateway_cookies(&mut h);
        assert_eq!(h[COOKIE], "app=1; theme=dark");
        let mut only_ours = HeaderMap::new();
        only_ours.append(COOKIE, HeaderValue::from_static("portcullis=secret"));
        remove_gateway_cookies(&mut only_ours);
        assert!(only_ours.get(COOKIE).is_none());
        // A header we cannot read might still carry ours to the app: dropped whole.
        let mut unreadable = HeaderMap::new();
        unreadable.append(
            COOKIE,
            HeaderValue::from_bytes(b"a=\xff; portcullis=s").unwrap(),
        );
        unreadable.append(COOKIE, HeaderValue::from_static("theme=dark"));
        remove_gateway_cookies(&mut unreadable);
        assert_eq!(unreadable[COOKIE], "theme=dark");
        // None of ours: left as it came.
        let mut theirs = HeaderMap::new();
        theirs.append(COOKIE, HeaderValue::from_static("app=1;theme=dark"));
        remove_gateway_cookies(&mut theirs);
        assert_eq!(theirs[COOKIE], "app=1;theme=dark");
    }

    #[test]
    fn c01_the_upstream_cannot_set_the_gateway_cookies() {
        let mut h = HeaderMap::new();
        for v in [
            "portcullis=evil; Path=/",
            "__Host-portcullis=evil; Path=/; Secure",
            "__secure-Portcullis=evil",
            "PORTCULLIS_TX=evil",
            "portcullis-tx=x",
            "__Host-portcullis-logout=; Max-Age=0",
            " portcullis =evil",
            "=portcullis=evil",
            "app=1; Path=/",
            "portcullisx=kept",
            "theme=dark",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_bytes(b"x=\xff").unwrap(),
        );
        remove_gateway_set_cookies(&mut h);
        let left: Vec<&[u8]> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(
            left,
            [
                &b"app=1; Path=/"[..],
                b"portcullisx=kept",
                b"theme=dark",
                b"x=\xff"
            ]
        );
    }

    #[test]
    fn client_headers_in_the_gateway_s_names_are_dropped() {
        for name in [
            "X-Auth-Request-User",
            "x_auth_request_email",
            "X-Portcullis-Jwt-Assertion",
        ] {
            assert!(is_identity_header(name), "{name}");
        }
        assert!(!is_identity_header("x-authorization"));
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.append("x-secret-hop", HeaderValue::from_static("1"));
        h.append("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("upgrade", HeaderValue::from_static("websocket"));
        h.append("accept", HeaderValue::from_static("*/*"));
        let mut upgrade = h.clone();
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        remove_hop_by_hop(&mut upgrade, true);
        assert_eq!(upgrade["upgrade"], "websocket");
        assert_eq!(upgrade["connection"], "upgrade");
        assert!(upgrade.get("x-secret-hop").is_none());
    }

    proptest! {
        /// Whatever a claim holds, the header value is one line of visible ASCII.
        #[test]
        fn identity_values_never_split_headers(claim in "\\PC{0,64}|[\\x00-\\x1f\\x7f]{0,8}") {
            if let Some(v) = identity_value(&claim) {
                prop_assert!(v.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)));
            }
        }

        /// No header that an upstream could read as X-User-* survives the filter.
        #[test]
        fn no_identity_spelling_survives(prefix in "[xX][-_][uU][sS][eE][rR][-_]", rest in "[a-zA-Z_-]{1,12}") {
            let name = format!("{prefix}{rest}");
            if let Ok(header) = HeaderName::from_bytes(name.as_bytes()) {
                let mut h = HeaderMap::new();
                h.append(header, HeaderValue::from_static("admin"));
                remove_client_claims(&mut h, true);
                prop_assert!(h.is_empty());
            }
        }
    }
}

#[cfg(test)]
mod connection_tests {
    use super::*;

    #[test]
    fn p01_connection_cannot_remove_our_identity_headers() {
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_static("x-user-id, X-User-Email, host, x-forwarded-for, keep-alive"),
        );
        set_identity(
            &mut h,
            IdentityValues {
                id: "u-1",
                email: Some("a@example.com"),
                name: None,
                provider: "default",
                auth_method: "session",
            },
        );
        h.insert("host", HeaderValue::from_static("app"));
        h.insert("x-forwarded-for", HeaderValue::from_static("127.0.0.1"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h["x-user-id"], "u-1");
        assert_eq!(h["x-user-email"], "a@example.com");
        assert_eq!(h["host"], "app");
        assert!(h.get("x-forwarded-for").is_some());
        assert!(h.get("connection").is_none());
    }
}
