//! The one decision. Every front door — the reverse proxy and the embeddable layer
//! (`guard`), forward-auth (`forward_auth`) — reads its request into a [`RequestView`]
//! and asks [`Decider::decide`]: pass (a public path, or as this user), sign in, or
//! refuse with a stable code. Nothing else decides who gets through, so the same
//! normalised request gets the same answer at every door (docs/security.md G11), and
//! [`OwnPaths`] is the one place that says which paths are the gateway's own.
//!
//! The rules, in the order they apply:
//! 1. TRACE and CONNECT: 405 (TRACE echoes cookies; CONNECT would make a tunnel).
//! 2. The target: a path no two readers agree on → 400 `ambiguous_path` (P03); at
//!    forward-auth, which cannot rewrite what the front proxy forwards, any target not
//!    in normal form → 400 `bad_original_request` (G01); at the embeddable layer, which
//!    runs after axum has routed on the raw path, → 400 `ambiguous_path`.
//! 3. Forward-auth from a peer outside `proxy.trusted_proxies` that names an original
//!    request → 403 `untrusted_forwarder` (G03).
//! 4. The gateway's own paths (under the prefix, any case) → 404 (D03).
//! 5. `public_paths` → pass, without identity.
//! 6. Forward-auth from an untrusted peer (no path believed) while routes or token
//!    relay are configured → 403 `untrusted_forwarder` (P05).
//! 7. A CORS preflight from a foreign origin → 403 `cross_origin` (S06).
//! 8. On a `[[bearer]]` path, a request carrying `Authorization: Bearer|DPoP` is
//!    decided by its access token alone (`session::bearer`, G13): 401 `invalid_token`
//!    or 403 `insufficient_scope` with a challenge, never a sign-in; a valid token then
//!    meets `[[routes]]` (rule 11) and passes as its principal, without CSRF rules.
//!    No live session → sign in; a store or provider outage → 503 (S04, R05).
//! 9. A write — any method the request may be read as (G04) — not from this site →
//!    403 `csrf_refused` (S06).
//! 10. A WebSocket handshake, by any signal (G02), from a foreign `Origin` → 403
//!     `cross_origin_websocket` (W01).
//! 11. `[[routes]]`: every method the request may be read as, and the user → 403
//!     `method_refused` / `route_refused` (G04).
//! 12. Token relay without a valid access token → sign in.
//! 13. The signed assertion; pass as the user.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use super::access::{AccessNote, Kind as AccessKind};
use super::cookies::{CookieJar, CookieKind};
use super::error::HttpError;
use super::guard::Cidr;
use super::path::{NormalizedPath, PathError, PathPattern, is_normal_form, normalize_path};
use super::request::{is_navigation, is_same_origin_write};
use crate::config::Config;
use crate::session::bearer::{TokenIdentity, TokenRequest};
use crate::session::routes::{Caller, RouteRefusal, session_claims};
use crate::session::{ActiveSession, Sessions};

/// Which door a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `portcullis serve` with an upstream: the app gets the decided path.
    ReverseProxy,
    /// [`super::guard::GuardLayer`] in an axum app: the inner service gets the decided
    /// path.
    Layer,
    /// `{prefix}/verify`: a front proxy asks, then forwards the client's own target.
    ForwardAuth,
}

/// What a request is aimed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The request's own path (reverse proxy, layer) or the original one a trusted
    /// proxy named (forward-auth), normalised; `normal`: the raw path already was in
    /// normal form (G01).
    Path { path: NormalizedPath, normal: bool },
    /// A path that readers could resolve differently (P03).
    Unreadable(PathError),
    /// Forward-auth from a peer outside `proxy.trusted_proxies`: no path is believed.
    /// `named`: it sent original-request headers anyway (G03).
    Untrusted { named: bool },
}

impl Target {
    /// The target of a raw request path.
    pub fn of_raw_path(raw: &str) -> Self {
        match normalize_path(raw) {
            Ok(path) => Self::Path {
                normal: is_normal_form(raw),
                path,
            },
            Err(e) => Self::Unreadable(e),
        }
    }

    pub fn path(&self) -> Option<&NormalizedPath> {
        match self {
            Self::Path { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Everything the decision reads about one request. Doors build it; nothing in it is
/// believed that the door did not check (original-request headers only from trusted
/// proxies).
#[derive(Debug)]
pub struct RequestView<'a> {
    pub door: Door,
    /// The method (forward-auth: the original one).
    pub method: Method,
    /// Every other method the request may be read as (`request::method_overrides`);
    /// `None` for a value that names no method.
    pub overrides: Vec<Option<Method>>,
    pub target: Target,
    /// The raw path and query to come back to after signing in, when known.
    pub return_to: Option<&'a str>,
    /// The request's headers (forward-auth: the ones the front proxy passed on): the
    /// cookie, `Origin`, `Accept`, `Sec-Fetch-*`, the CSRF header.
    pub headers: &'a HeaderMap,
    /// A WebSocket handshake, by any of its signals (G02).
    pub websocket: bool,
    pub peer: Option<SocketAddr>,
    /// The peer is in `proxy.trusted_proxies`.
    pub trusted_peer: bool,
}

impl RequestView<'_> {
    /// A page navigation (302 to sign in) rather than an API call (401 JSON): S05.
    pub fn is_page(&self) -> bool {
        is_navigation(&self.method, self.headers)
    }

    /// Whether any method the request may be read as changes state (or cannot be read).
    fn is_write(&self) -> bool {
        let changes_state =
            |m: &Method| !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS);
        changes_state(&self.method)
            || self
                .overrides
                .iter()
                .any(|o| o.as_ref().is_none_or(changes_state))
    }
}

/// Who a request passes as: a signed-in session, or the principal of an access token
/// on a `[[bearer]]` path.
#[derive(Debug)]
pub enum Who {
    Session(Box<ActiveSession>),
    Token(Box<TokenIdentity>),
}

impl Who {
    /// `X-User-Auth-Method`: `session`, `bearer` or `dpop`.
    pub fn auth_method(&self) -> &'static str {
        match self {
            Self::Session(_) => "session",
            Self::Token(t) => t.scheme.auth_method(),
        }
    }

    /// The identity row (`X-User-Id` is its id).
    pub fn user(&self) -> &crate::store::User {
        match self {
            Self::Session(a) => &a.user,
            Self::Token(t) => &t.user,
        }
    }

    pub fn provider_id(&self) -> &str {
        match self {
            Self::Session(a) => &a.record.provider_id,
            Self::Token(t) => &t.provider_id,
        }
    }
}

/// A user who may pass, with what the app receives besides the identity headers.
#[derive(Debug)]
pub struct Identity {
    pub who: Who,
    /// `X-Portcullis-Jwt-Assertion`.
    pub assertion: HeaderValue,
    /// The access token where `proxy.token_relay` matches the decided path.
    pub relay: Option<RelayHeaders>,
}

/// What a relayed request carries: `Authorization` (`Bearer …` or `DPoP …`) and, for
/// a DPoP-bound token, the `DPoP` proof for this request.
#[derive(Debug)]
pub struct RelayHeaders {
    pub authorization: HeaderValue,
    pub dpop: Option<HeaderValue>,
}

/// The answer to one request.
#[derive(Debug)]
pub enum Decision {
    /// A `public_paths` path: passes, without identity.
    Public,
    /// Signed in and allowed: passes as this user.
    SignedIn(Box<Identity>),
    /// No live session (or nothing to relay): sign in first.
    SignIn,
    /// Refused: the status, stable code and sentence to answer.
    Refuse(HttpError),
}

/// A decision and what every answer to the request carries, whatever it is.
#[derive(Debug)]
pub struct Verdict {
    pub decision: Decision,
    /// A rotated session id: every answer to this request sets it, refusals included.
    pub set_cookie: Option<HeaderValue>,
    /// What the access log and metrics say about the request.
    pub note: AccessNote,
}

/// The paths that belong to the gateway, never to the app (D03).
#[derive(Debug, Clone)]
pub struct OwnPaths {
    prefix: String,
    spa_path: Option<String>,
}

impl OwnPaths {
    pub fn new(config: &Config) -> Self {
        Self {
            prefix: config.prefix.clone(),
            spa_path: config
                .spa
                .code_exchange
                .then(|| config.spa.code_exchange_path.clone()),
        }
    }

    /// Whether the gateway's router may have an endpoint for this raw path (its routes
    /// match exact strings); everything else goes to the decision directly.
    pub fn may_route(&self, raw: &str) -> bool {
        raw.starts_with(self.prefix.as_str())
            || raw == "/healthz"
            || raw == "/readyz"
            || self.spa_path.as_deref() == Some(raw)
    }

    /// Whether a normalised path lies under the prefix, ignoring ASCII case (`/AUTH/x`
    /// is not the app's either): what the router did not answer there is a 404.
    pub fn covers(&self, path: &NormalizedPath) -> bool {
        let (p, prefix) = (path.as_str().as_bytes(), self.prefix.as_bytes());
        p.len() >= prefix.len()
            && p[..prefix.len()].eq_ignore_ascii_case(prefix)
            && (p.len() == prefix.len() || p[prefix.len()] == b'/')
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The decision's fixed settings, derived once from the configuration, and the session
/// service it asks.
#[derive(Debug)]
pub struct Decider {
    sessions: Arc<Sessions>,
    cookies: CookieJar,
    public_paths: Vec<PathPattern>,
    token_relay: Vec<PathPattern>,
    trusted_proxies: Vec<Cidr>,
    csrf_header: HeaderName,
    public_origin: String,
    login_path: String,
    own: OwnPaths,
}

impl Decider {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        let config = sessions.config();
        Self {
            cookies: CookieJar::new(config.is_https()),
            public_paths: config.public_paths.clone(),
            token_relay: config.token_relay.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            csrf_header: HeaderName::from_bytes(config.csrf_header.to_ascii_lowercase().as_bytes())
                .unwrap_or(HeaderName::from_static("x-csrf")),
            public_origin: config.public_origin(),
            login_path: format!("{}/login", config.prefix),
            own: OwnPaths::new(config),
            sessions,
        }
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    pub fn cookies(&self) -> &CookieJar {
        &self.cookies
    }

    pub fn own_paths(&self) -> &OwnPaths {
        &self.own
    }

    /// Whether the direct peer is a configured trusted proxy.
    pub fn peer_is_trusted(&self, peer: Option<SocketAddr>) -> bool {
        peer.is_some_and(|p| self.trusted_proxies.iter().any(|c| c.contains(p.ip())))
    }

    /// The browser-visible origin of the gateway.
    pub fn public_origin(&self) -> &str {
        &self.public_origin
    }

    /// The public URL's `host[:port]`, as a trusted `X-Forwarded-Host` must name it.
    pub fn public_host(&self) -> &str {
        self.public_origin
            .split_once("://")
            .map_or(self.public_origin.as_str(), |(_, host)| host)
    }

    /// `{prefix}/login`, with `return_to` when given.
    pub fn login_url(&self, return_to: Option<&str>) -> String {
        match return_to {
            Some(r) => format!(
                "{}?return_to={}",
                self.login_path,
                url::form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
            ),
            None => self.login_path.clone(),
        }
    }

    /// Whether the request carries an `Origin` other than the gateway's.
    pub fn is_foreign_origin(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::ORIGIN)
            .is_some_and(|o| o.as_bytes() != self.public_origin.as_bytes())
    }

    /// The one decision (see the module text for its rules).
    pub async fn decide(&self, view: &RequestView<'_>) -> Verdict {
        let path = view.target.path();
        let mut note = AccessNote {
            kind: if view.websocket {
                AccessKind::Websocket
            } else {
                AccessKind::Protected
            },
            path: path.map(|p| p.as_str().to_owned()),
            user: None,
            session: None,
        };
        let verdict = |decision, note| Verdict {
            decision,
            set_cookie: None,
            note,
        };
        if let Some(refusal) = self.refusal_before_session(view) {
            return verdict(Decision::Refuse(refusal.page(view.is_page())), note);
        }
        if path.is_some_and(|p| self.public_paths.iter().any(|pattern| pattern.matches(p))) {
            note.kind = AccessKind::Public;
            return verdict(Decision::Public, note);
        }
        if let Some(refusal) = self.refusal_of_anonymous(view) {
            return verdict(Decision::Refuse(refusal.page(view.is_page())), note);
        }

        if let Some(path) = path
            && self.sessions.is_token_path(path)
        {
            match self.by_token(view, path).await {
                Ok(None) => {}
                Ok(Some(identity)) => {
                    if let Who::Token(t) = &identity.who {
                        note.user = Some(t.user.id);
                    }
                    return verdict(Decision::SignedIn(Box::new(identity)), note);
                }
                Err(refusal) => return verdict(Decision::Refuse(refusal), note),
            }
        }

        let cookie = self.cookies.read(view.headers, CookieKind::Session);
        let active = match cookie.value() {
            None => None,
            Some(cookie) => match self.sessions.authenticate(cookie).await {
                Ok(active) => active,
                Err(e) => {
                    let refusal = HttpError::from(e).page(view.is_page());
                    return verdict(Decision::Refuse(refusal), note);
                }
            },
        };
        let Some(active) = active else {
            return verdict(Decision::SignIn, note);
        };
        note.user = Some(active.user.id);
        note.session = Some(active.record.id_hash.short().to_owned());
        // A rotated id: every answer to this request carries the new cookie.
        let set_cookie = active.new_cookie.as_ref().and_then(|id| {
            HeaderValue::from_str(&self.cookies.set(
                CookieKind::Session,
                id.expose(),
                active.max_age,
            ))
            .ok()
        });
        let decision = match self.signed_in(view, active).await {
            Ok(decision) => decision,
            Err(refusal) => Decision::Refuse(refusal.page(view.is_page())),
        };
        Verdict {
            decision,
            set_cookie,
            note,
        }
    }

    /// Rules 1–4: what is refused whoever asks.
    fn refusal_before_session(&self, view: &RequestView<'_>) -> Option<HttpError> {
        if matches!(view.method, Method::TRACE | Method::CONNECT) {
            return Some(HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This method is not allowed.",
            ));
        }
        let forward_auth = view.door == Door::ForwardAuth;
        match &view.target {
            // The embeddable layer runs after axum has routed on the raw path (a
            // `Router::layer` wraps each route): it cannot hand the app another path,
            // so, like forward-auth, it decides only on paths every reader reads alike.
            Target::Path { normal: false, .. } if view.door == Door::Layer => {
                Some(HttpError::bad_request(
                    "ambiguous_path",
                    "This address is not in normal form (dot or empty segments, `;`, `\\`, or an escaped `/ \\ ; . %`).",
                ))
            }
            Target::Unreadable(e) if forward_auth => Some(bad_original_request(&format!(
                "The original address cannot be served: {e}."
            ))),
            Target::Unreadable(e) => Some(HttpError::bad_request(
                "ambiguous_path",
                format!("This address cannot be served: {e}."),
            )),
            Target::Path { normal: false, .. } if forward_auth => Some(bad_original_request(
                "The original path is not in normal form (dot or empty segments, `;`, `\\`, or an escaped `/ \\ ; . %`): the app would not see the path decided on.",
            )),
            Target::Untrusted { named: true } => Some(self.untrusted_forwarder(view)),
            Target::Path { path, .. } if self.own.covers(path) => Some(HttpError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "There is nothing here.",
            )),
            _ => None,
        }
    }

    /// Rules 6–7: what is refused before a session is looked at.
    fn refusal_of_anonymous(&self, view: &RequestView<'_>) -> Option<HttpError> {
        if matches!(view.target, Target::Untrusted { .. })
            && (self.sessions.has_routes() || !self.token_relay.is_empty())
        {
            return Some(self.untrusted_forwarder(view));
        }
        // A CORS preflight carries no cookie; one from a foreign origin is refused, with
        // no CORS headers, so no foreign site is granted credentialed access. Any other
        // is judged like every request: without a session it never reaches the app.
        if view.method == Method::OPTIONS
            && view
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            && self.is_foreign_origin(view.headers)
        {
            return Some(HttpError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "Cross-origin requests are not allowed here.",
            ));
        }
        None
    }

    /// G03 / P05: a forward-auth question from a peer the gateway does not trust.
    fn untrusted_forwarder(&self, view: &RequestView<'_>) -> HttpError {
        let peer = view.peer.map_or_else(
            || "unknown".to_owned(),
            |p| p.ip().to_canonical().to_string(),
        );
        tracing::warn!(
            event = "untrusted_forwarder",
            %peer,
            "a forward-auth request came from a peer outside proxy.trusted_proxies"
        );
        self.sessions.security_events().count("untrusted_forwarder");
        HttpError::new(
            StatusCode::FORBIDDEN,
            "untrusted_forwarder",
            format!(
                "This gateway answers forward-auth requests only from the proxies in proxy.trusted_proxies, and {peer} is not one of them."
            ),
        )
    }

    /// `[[routes]]`: a method the route does not allow, or a user it does not admit, is
    /// refused (403).
    fn check_route(
        &self,
        view: &RequestView<'_>,
        path: &NormalizedPath,
        caller: &Caller<'_>,
        who: (&str, uuid::Uuid),
        scheme: Option<crate::session::bearer::Scheme>,
    ) -> Result<(), HttpError> {
        if self.sessions.has_routes()
            && let Err(refusal) =
                self.sessions
                    .check_route(&view.method, &view.overrides, path, caller, who)
        {
            return Err(match refusal {
                RouteRefusal::Scope(scope) => HttpError::insufficient_scope(&scope, scheme),
                RouteRefusal::Method => HttpError::new(
                    StatusCode::FORBIDDEN,
                    "method_refused",
                    format!("This address does not accept {} requests.", view.method),
                ),
                RouteRefusal::Access(denied) => HttpError::new(
                    StatusCode::FORBIDDEN,
                    "route_refused",
                    format!("You may not open this address: {denied}."),
                ),
            });
        }
        Ok(())
    }

    /// Rule 8: on a `[[bearer]]` path, a request carrying an access token is decided by
    /// the token alone (never a sign-in: a refusal is 401 or 403 with a challenge);
    /// `None` when it carries none. CSRF rules do not apply: a browser never attaches
    /// a token by itself.
    async fn by_token(
        &self,
        view: &RequestView<'_>,
        path: &NormalizedPath,
    ) -> Result<Option<Identity>, HttpError> {
        let htu = format!("{}{}", self.public_origin, path.encoded());
        // The raw path names the same resource only when it was in normal form.
        let htu_as_sent = match (&view.target, view.return_to) {
            (Target::Path { normal: true, .. }, Some(raw)) => {
                let raw = raw.split(['?', '#']).next().unwrap_or(raw);
                let as_sent = format!("{}{raw}", self.public_origin);
                (as_sent != htu).then_some(as_sent)
            }
            _ => None,
        };
        let request = TokenRequest {
            method: view.method.as_str(),
            path,
            htu: &htu,
            htu_as_sent,
            headers: view.headers,
        };
        let Some(token) = self.sessions.authenticate_token(&request).await? else {
            return Ok(None);
        };
        let caller = Caller {
            provider_id: &token.provider_id,
            claims: &|| (*token.claims).clone(),
            scopes: &token.scopes,
        };
        self.check_route(
            view,
            path,
            &caller,
            ("token", token.user.id),
            Some(token.scheme),
        )?;
        Ok(Some(Identity {
            assertion: token.assertion.clone(),
            who: Who::Token(Box::new(token)),
            relay: None,
        }))
    }

    /// Rules 9–13, for a live session.
    async fn signed_in(
        &self,
        view: &RequestView<'_>,
        active: ActiveSession,
    ) -> Result<Decision, HttpError> {
        if view.is_write()
            && !is_same_origin_write(view.headers, &self.public_origin, self.csrf_header.as_str())
        {
            tracing::warn!(method = %view.method, path = view.target.path().map(NormalizedPath::as_str), "cross-site write refused");
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "csrf_refused",
                "This request did not come from this site, so it was refused.",
            ));
        }
        // W01: a WebSocket carries the session like a write does, and no CORS rule stops
        // a page elsewhere from opening one: only our own origin may. (Browsers always
        // send `Origin` on a handshake; a client without one is not a browser a foreign
        // page could drive.)
        if view.websocket && self.is_foreign_origin(view.headers) {
            tracing::warn!(
                path = view.target.path().map(NormalizedPath::as_str),
                "cross-origin WebSocket refused"
            );
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                "cross_origin_websocket",
                "This connection did not come from this site, so it was refused.",
            ));
        }
        let path = view.target.path();
        if let Some(path) = path {
            let record = &active.record;
            let scopes = self.sessions.session_scopes(record);
            let caller = Caller {
                provider_id: &record.provider_id,
                claims: &|| session_claims(record),
                scopes: &scopes,
            };
            self.check_route(
                view,
                path,
                &caller,
                (record.id_hash.short(), record.user.id),
                None,
            )?;
        }
        let mut relay = None;
        if let Some(path) = path
            && self.token_relay.iter().any(|pattern| pattern.matches(path))
        {
            // Token relay: the app gets our access token, never the client's header.
            let headers = self
                .sessions
                .relay(
                    &active.record,
                    view.method.as_str(),
                    &received_path(view, path),
                )
                .await?
                .and_then(|relay| relay_headers(&relay));
            let Some(headers) = headers else {
                tracing::info!(
                    session = active.record.id_hash.short(),
                    "no valid access token to relay; treated as signed out"
                );
                return Ok(Decision::SignIn);
            };
            relay = Some(headers);
        }
        // The signed assertion: an app that verifies it trusts no request that did not
        // pass here. Without one the request does not go on (an app may depend on it).
        let assertion = self.sessions.assertion(&active).await?;
        Ok(Decision::SignedIn(Box::new(Identity {
            who: Who::Session(Box::new(active)),
            assertion,
            relay,
        })))
    }
}

/// The path the app receives, which a relayed DPoP proof names (`htu`): the decided one
/// (the reverse proxy and the layer forward it), or behind a forward-auth proxy the raw
/// one the proxy forwards as it is (in normal form, G01, but escapes such as `%40` stay
/// escaped there).
fn received_path(view: &RequestView<'_>, decided: &NormalizedPath) -> String {
    match (view.door, view.return_to) {
        (Door::ForwardAuth, Some(raw)) => raw.split(['?', '#']).next().unwrap_or(raw).to_owned(),
        _ => decided.encoded(),
    }
}

/// The relay's header values (`None` when a token is not a valid header value).
fn relay_headers(relay: &crate::session::lookup::Relay) -> Option<RelayHeaders> {
    let sensitive = |v: &str| {
        HeaderValue::from_str(v).ok().map(|mut v| {
            v.set_sensitive(true);
            v
        })
    };
    Some(RelayHeaders {
        authorization: sensitive(&relay.authorization)?,
        dpop: match &relay.proof {
            Some(proof) => Some(sensitive(proof)?),
            None => None,
        },
    })
}

fn bad_original_request(message: &str) -> HttpError {
    HttpError::bad_request("bad_original_request", message.to_owned())
}
