//! Where sessions live: one trait, one file per backend. A store never sees an HTTP
//! type or a plaintext token: ids arrive hashed, tokens arrive sealed.
//!
//! Every backend passes the shared conformance suite in `store/conformance/` (built for
//! tests and the `test-util` feature).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::clock::UnixTime;

/// The suite every engine passes (and helpers for tests that drive several instances):
/// for tests only, `--features test-util` outside this crate.
#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
pub mod copy;
pub mod feed;
pub mod id;
pub mod on_runtime;
pub mod postgres;
pub mod redis;
mod rows;
mod sealed;
mod sql;
pub mod sqlite;

pub use feed::{ChangeFeed, FeedEvent, FeedSubscription, SessionChange};
pub use id::IdHash;
pub use sealed::Sealed;

/// Total time any single store call may take (R05): a stuck store answers 503, it does
/// not hold requests forever.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most claims a session keeps (the ID token's and UserInfo's, as JSON).
pub const MAX_CLAIMS_BYTES: usize = 16 * 1024;

/// How long a refresh lease lasts unless its holder renews it (docs/sessions.md: a dead
/// holder loses it within 6 s).
pub const LEASE_SECONDS: i64 = 6;

/// How often a lease holder renews its lease.
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(2);

/// Login transactions one browser may hold at once; older ones are evicted (R01).
pub const MAX_TRANSACTIONS_PER_BROWSER: u32 = 16;

pub use crate::config::MAX_LIVE_TRANSACTIONS;

/// Opens the store at `location`: the SQLite file (created if needed), or a shared
/// PostgreSQL or Redis with its tables or keys under `prefix`. Migrations are applied.
pub async fn open(
    location: &crate::config::StoreLocation,
    prefix: &str,
) -> StoreResult<std::sync::Arc<dyn Store>> {
    use crate::config::StoreLocation;
    // Pasted into table names and keys: checked here too, not only by the config.
    if !crate::config::is_valid_store_prefix(prefix) {
        return Err(StoreError::Unavailable(format!(
            "`{prefix}` is not a valid store prefix (a–z, 0–9 and `_`, starting with a letter)"
        )));
    }
    Ok(match location {
        StoreLocation::Sqlite(path) => std::sync::Arc::new(sqlite::SqliteStore::open(path).await?),
        StoreLocation::Postgres(url) => {
            std::sync::Arc::new(postgres::PostgresStore::connect(url, prefix).await?)
        }
        StoreLocation::Redis(url) => {
            std::sync::Arc::new(redis::RedisStore::connect(url, prefix).await?)
        }
    })
}

/// Store failures. The store is down or misbehaving: never the user's fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
    #[error("the session store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the session store holds a record it cannot read: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "store_unavailable",
            Self::Timeout(_) => "store_timeout",
            Self::Corrupt(_) => "store_corrupt",
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Runs a store call under [`STORE_TIMEOUT`].
pub(crate) async fn timed<T>(fut: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    match tokio::time::timeout(STORE_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout(STORE_TIMEOUT)),
    }
}

/// Whom an identity row stands for: a person, or a program acting as itself (a
/// client-credentials token). Keyed apart, so that a client whose `client_id` equals a
/// user's `sub` never gets that user's id (docs/security.md G13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdentityKind {
    #[default]
    User,
    Client,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Client => "client",
        }
    }

    /// The stored text; anything else is not a kind this version knows.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "user" => Some(Self::User),
            "client" => Some(Self::Client),
            _ => None,
        }
    }
}

/// An identity: one per (issuer, kind, subject), never matched by email (seed flaw 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Our stable user id, handed to apps as `X-User-Id`.
    pub id: Uuid,
    pub issuer: String,
    /// A user (signed in, or by a user's access token) or a client (its own token).
    pub kind: IdentityKind,
    /// The user's `sub`, or the client's `client_id`.
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
}

/// What the provider told us about a user at sign-in.
#[derive(Debug, Clone, Default)]
pub struct UserProfile {
    pub email: Option<String>,
    pub name: Option<String>,
}

/// A session's provider tokens, sealed, plus what we know of their lifetimes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    pub refresh_token: Option<Sealed>,
    pub access_token: Option<Sealed>,
    pub id_token: Option<Sealed>,
    pub access_expires_at: Option<UnixTime>,
    pub refresh_expires_at: Option<UnixTime>,
    /// When the access token was issued: with `access_expires_at`, its lifetime.
    pub access_issued_at: Option<UnixTime>,
    /// The scope the provider granted (space-separated; RFC 6749 §5.1), for a route's
    /// `required_scopes`. `None`: the scope asked for (sessions from before it was kept,
    /// and providers that do not say).
    pub granted_scope: Option<String>,
}

/// A session to create.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Stable across id rotations; names the session "family" for the theft rule.
    pub family_id: Uuid,
    pub id_hash: IdHash,
    pub user_id: Uuid,
    /// The provider's `sid` claim, for back-channel logout.
    pub provider_sid: Option<String>,
    pub created_at: UnixTime,
    pub idle_expires_at: UnixTime,
    pub absolute_expires_at: UnixTime,
    pub tokens: TokenSet,
    pub user_agent: Option<String>,
    /// What the gateway keeps of the ID token's and UserInfo's claims (a JSON object,
    /// at most [`MAX_CLAIMS_BYTES`]), for routes and identity headers.
    pub claims: String,
    /// Whether the provider said the email address in *these* `claims` is verified. It
    /// vouches for `claims.email` only, never for [`User::email`] (which any other
    /// session of the user may overwrite): identity headers take both from here.
    pub email_verified: bool,
    /// The id of the provider that signed the user in; its refresh, logout and keys
    /// serve the session (a session of a provider no longer configured ends).
    pub provider_id: String,
}

#[cfg(any(test, feature = "test-util"))]
impl NewSession {
    /// A session of `user_id` at the default provider, made at `now`: no tokens, no
    /// claims, an hour of idleness and a day in all (tests change what they need).
    pub fn plain(user_id: Uuid, id_hash: IdHash, now: UnixTime) -> Self {
        Self {
            family_id: crate::random::new_uuid(),
            id_hash,
            user_id,
            provider_sid: None,
            created_at: now,
            idle_expires_at: now + 3600,
            absolute_expires_at: now + 86_400,
            tokens: TokenSet::default(),
            user_agent: None,
            claims: "{}".into(),
            email_verified: false,
            provider_id: "default".into(),
        }
    }
}

/// Which of a session's ids a lookup matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdMatch {
    Current,
    /// The id that a rotation replaced; valid until `previous_valid_until`.
    Previous,
}

/// A stored session with its user.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub family_id: Uuid,
    pub id_hash: IdHash,
    pub previous_id_hash: Option<IdHash>,
    pub previous_valid_until: Option<UnixTime>,
    /// The current id, sealed under a key derived from the previous id
    /// (`session::id::open_handover`): how a holder of the old id gets the new cookie.
    pub previous_handover: Option<String>,
    /// Whether the current id has been presented since the last rotation.
    pub current_seen: bool,
    pub matched: IdMatch,
    pub user: User,
    pub provider_sid: Option<String>,
    pub created_at: UnixTime,
    pub last_seen_at: UnixTime,
    pub idle_expires_at: UnixTime,
    pub absolute_expires_at: UnixTime,
    pub tokens: TokenSet,
    /// Bumped by every token update; the compare-and-swap guard.
    pub token_version: i64,
    pub user_agent: Option<String>,
    /// See [`NewSession::claims`].
    pub claims: String,
    pub email_verified: bool,
    /// See [`NewSession::provider_id`].
    pub provider_id: String,
}

impl SessionRecord {
    /// Every id hash that finds this session (the feed names them all).
    pub fn id_hashes(&self) -> Vec<IdHash> {
        let mut hashes = vec![self.id_hash.clone()];
        hashes.extend(self.previous_id_hash.clone());
        hashes
    }

    /// The earliest moment the session ends by itself.
    pub fn expires_at(&self) -> UnixTime {
        let mut end = self.idle_expires_at.min(self.absolute_expires_at);
        if let Some(r) = self.tokens.refresh_expires_at {
            end = end.min(r);
        }
        end
    }
}

/// A login in flight (docs/security.md "Signing in"), keyed by SHA-256 of its state.
/// `Debug` hides the nonce.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginTransaction {
    pub state_hash: String,
    /// SHA-256 of the browser-binding id in the `portcullis_tx` cookie.
    pub binding_hash: String,
    pub nonce: String,
    /// The PKCE verifier, sealed under the state hash.
    pub verifier: Sealed,
    pub return_to: String,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    /// The provider the sign-in was sent to: only its callback may finish it (G12).
    pub provider_id: String,
}

impl std::fmt::Debug for LoginTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginTransaction")
            .field("state_hash", &self.state_hash)
            .field("return_to", &self.return_to)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Bounds on stored login transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionLimits {
    pub per_browser: u32,
    pub total: u32,
}

impl Default for TransactionLimits {
    fn default() -> Self {
        Self {
            per_browser: MAX_TRANSACTIONS_PER_BROWSER,
            total: MAX_LIVE_TRANSACTIONS,
        }
    }
}

/// The operations every backend provides. Every decision compares stored deadlines
/// with the caller's `now` (never the store's own clock), so instances and the
/// conformance suite's synthetic clock agree; TTLs and expiry jobs only collect garbage.
///
/// Every write that ends or changes a session publishes one [`SessionChange`] per
/// session on [`Store::feed`], atomically with the write.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reachability, for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    /// Settings of the server that would lose or evict sessions (`portcullis doctor`;
    /// Redis: eviction policy and persistence), one sentence with its fix each.
    async fn deployment_problems(&self) -> Vec<String> {
        Vec::new()
    }

    /// The change feed of this store (see [`feed`]).
    fn feed(&self) -> &ChangeFeed;

    // Users.
    /// Finds the identity by (issuer, kind, subject) or creates it with a new UUID;
    /// sets the profile when one is given (`None` keeps what is stored: a token that
    /// carries no profile claims). The returned id never changes for one key.
    async fn upsert_identity(
        &self,
        issuer: &str,
        kind: IdentityKind,
        subject: &str,
        profile: Option<&UserProfile>,
        now: UnixTime,
    ) -> StoreResult<User>;
    /// [`Store::upsert_identity`] for a user who signed in.
    async fn upsert_user(
        &self,
        issuer: &str,
        subject: &str,
        profile: &UserProfile,
        now: UnixTime,
    ) -> StoreResult<User> {
        self.upsert_identity(issuer, IdentityKind::User, subject, Some(profile), now)
            .await
    }
    async fn get_user(&self, id: Uuid) -> StoreResult<Option<User>>;
    /// Users ordered by id, after `after`, at most `limit` (`store copy`).
    async fn list_users(&self, after: Option<Uuid>, limit: u32) -> StoreResult<Vec<User>>;
    /// Stores a user with its id as it is (`store copy`). Returns false, changing
    /// nothing, when the (issuer, kind, subject) or the id already exists.
    async fn import_user(&self, user: &User) -> StoreResult<bool>;

    // Sessions.
    async fn create_session(&self, session: &NewSession) -> StoreResult<()>;
    /// Finds a session by its current or its previous (rotated-away) id hash.
    async fn get_session(&self, id_hash: &IdHash) -> StoreResult<Option<SessionRecord>>;
    /// The same, past any cache: for decisions that end a session and for refreshes.
    async fn get_session_fresh(&self, id_hash: &IdHash) -> StoreResult<Option<SessionRecord>> {
        self.get_session(id_hash).await
    }
    /// Records activity: last seen and the new idle deadline (never moved backwards),
    /// and, when `seen` is the session's current id hash, that the current id has
    /// been presented (a hash that is no longer current marks nothing). Returns
    /// whether the session still exists.
    async fn touch_session(
        &self,
        family_id: Uuid,
        last_seen_at: UnixTime,
        idle_expires_at: UnixTime,
        seen: Option<&IdHash>,
    ) -> StoreResult<bool>;
    /// Replaces the tokens if the version is still `expected_version`; returns whether
    /// it did. The version is incremented.
    async fn update_tokens(
        &self,
        family_id: Uuid,
        expected_version: i64,
        tokens: &TokenSet,
    ) -> StoreResult<bool>;
    /// Gives the session a new id (and resealed tokens) if the version is still
    /// `expected_version`. The current id becomes the previous one, valid until
    /// `previous_valid_until`, with `handover` (the new id sealed for holders of the
    /// old one); the new id is marked unseen.
    ///
    /// `keep_previous` (a lost rotation: the browser still holds the previous id, its
    /// successor never reached it, e.g. behind a proxy that drops `Set-Cookie`): the
    /// previous id stays the previous one, `handover` is sealed for it, and the unseen
    /// current id is dropped — only while the current id is still unseen and there is
    /// a previous one, else nothing changes and `false` is returned.
    #[allow(clippy::too_many_arguments)]
    async fn rotate_session_id(
        &self,
        family_id: Uuid,
        expected_version: i64,
        new_id_hash: &IdHash,
        previous_valid_until: UnixTime,
        handover: &str,
        tokens: &TokenSet,
        keep_previous: bool,
    ) -> StoreResult<bool>;
    /// Replaces the claims the session keeps (at sign-in they come with the session;
    /// at every refresh through this). Returns whether the session exists.
    async fn update_claims(
        &self,
        family_id: Uuid,
        claims: &str,
        email_verified: bool,
    ) -> StoreResult<bool>;
    /// Stores a whole session record as it is, previous id and all (`store copy`; its
    /// user must exist). Returns false when the family already exists.
    async fn import_session(&self, session: &SessionRecord) -> StoreResult<bool>;
    async fn delete_session(&self, family_id: Uuid) -> StoreResult<bool>;
    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64>;
    async fn delete_sessions_by_provider_sid(&self, issuer: &str, sid: &str) -> StoreResult<u64>;
    /// Every session of the user (issuer, subject).
    async fn delete_sessions_by_subject(&self, issuer: &str, subject: &str) -> StoreResult<u64>;
    async fn delete_all_sessions(&self) -> StoreResult<u64>;
    /// Live sessions, newest first, optionally of one user.
    async fn list_sessions(
        &self,
        user_id: Option<Uuid>,
        now: UnixTime,
    ) -> StoreResult<Vec<SessionRecord>>;

    // Login transactions.
    /// Stores a new transaction: first removes expired ones (expired at
    /// `tx.created_at`), then, while fewer than `limits.total` are live, stores it
    /// (keeping the newest `limits.per_browser` of its browser) and answers `true`; at
    /// the bound it stores nothing and answers `false`. A live transaction is never
    /// dropped to make room for another browser's.
    async fn put_transaction(
        &self,
        tx: &LoginTransaction,
        limits: TransactionLimits,
    ) -> StoreResult<bool>;
    /// Removes and returns the transaction (single use), expired or not.
    async fn take_transaction(&self, state_hash: &str) -> StoreResult<Option<LoginTransaction>>;

    // Refresh leases (single flight across instances).
    /// Takes the lease `key` for `holder` until `until` if it is free, expired, or
    /// already `holder`'s.
    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool>;
    /// Compare-and-extend: moves the lease's end to `until` only while `holder` still
    /// holds it (unexpired at `now`). False: the lease was lost.
    async fn renew_lease(
        &self,
        key: &str,
        holder: &str,
        now: UnixTime,
        until: UnixTime,
    ) -> StoreResult<bool>;
    async fn release_lease(&self, key: &str, holder: &str) -> StoreResult<()>;

    // Replay cache (back-channel logout `jti`).
    /// Records `key` until `until`; returns false if it was already recorded.
    async fn remember_once(&self, key: &str, now: UnixTime, until: UnixTime) -> StoreResult<bool>;
    /// Forgets `key` (the work it guarded did not happen, so a retry must be allowed).
    async fn forget(&self, key: &str) -> StoreResult<()>;

    // Assertion signing keys (never expire on their own).
    /// Stores `key` unless its generation exists; returns whether it was stored.
    async fn add_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool>;
    /// Every signing key, oldest generation first.
    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>>;
    /// Removes the key of `generation` (`portcullis keys prune`); whether it was there.
    async fn delete_signing_key(&self, generation: i64) -> StoreResult<bool>;

    // Settings the instances learn and share (never expire; a name carries what its
    // value depends on), e.g. the client authentication method a probe found.
    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>>;
    /// Stores `value` under `key`, replacing any.
    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()>;
    /// Stores `value` under `key` unless `key` holds one already; whether it was stored.
    /// Instances that race to create one shared value (a key) agree on the first.
    async fn add_setting(&self, key: &str, value: &str) -> StoreResult<bool>;
    /// Removes `key`; whether it was there.
    async fn delete_setting(&self, key: &str) -> StoreResult<bool>;

    /// Deletes everything past its expiry; returns how many records went.
    async fn purge_expired(&self, now: UnixTime) -> StoreResult<u64>;
}

/// A key the gateway signs identity assertions with (ES256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// 1, 2, 3…: written once each, so that instances adding the same generation at
    /// once agree on one key.
    pub generation: i64,
    /// The `kid` in assertions and in `{prefix}/jwks.json`.
    pub kid: String,
    /// The PKCS#8 private key, sealed with the key ring.
    pub sealed_key: Sealed,
    pub created_at: UnixTime,
}

impl SigningKeyRecord {
    /// From a SQL row: generation, kid, sealed key, created.
    pub(crate) fn from_row(
        (generation, kid, sealed, created_at): (i64, String, String, i64),
    ) -> Self {
        Self {
            generation,
            kid,
            sealed_key: Sealed::from_stored(sealed),
            created_at,
        }
    }
}
