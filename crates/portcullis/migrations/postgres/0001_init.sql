-- Portcullis store, PostgreSQL. `{p}` is the store prefix (`store_prefix`). Session ids
-- are stored only as SHA-256 hex; tokens only sealed (v1.<kid>.<base64url>). Times are
-- Unix seconds: every decision compares them with the caller's clock.

CREATE TABLE {p}_users (
    id          TEXT PRIMARY KEY,
    issuer      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    email       TEXT,
    name        TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (issuer, subject)
);

CREATE TABLE {p}_sessions (
    family_id            TEXT PRIMARY KEY,
    id_hash              TEXT NOT NULL UNIQUE,
    previous_id_hash     TEXT UNIQUE,
    previous_valid_until BIGINT,
    previous_handover    TEXT,
    current_seen         BOOLEAN NOT NULL DEFAULT TRUE,
    user_id              TEXT NOT NULL REFERENCES {p}_users (id),
    provider_sid         TEXT,
    created_at           BIGINT NOT NULL,
    last_seen_at         BIGINT NOT NULL,
    idle_expires_at      BIGINT NOT NULL,
    absolute_expires_at  BIGINT NOT NULL,
    refresh_token        TEXT,
    access_token         TEXT,
    id_token             TEXT,
    access_expires_at    BIGINT,
    refresh_expires_at   BIGINT,
    access_issued_at     BIGINT,
    token_version        BIGINT NOT NULL DEFAULT 0,
    user_agent           TEXT,
    claims               TEXT NOT NULL DEFAULT '{}',
    email_verified       BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX {p}_sessions_by_user ON {p}_sessions (user_id);
CREATE INDEX {p}_sessions_by_provider_sid ON {p}_sessions (provider_sid);
CREATE INDEX {p}_sessions_by_idle_expiry ON {p}_sessions (idle_expires_at);
CREATE INDEX {p}_sessions_by_absolute_expiry ON {p}_sessions (absolute_expires_at);
CREATE INDEX {p}_sessions_by_refresh_expiry ON {p}_sessions (refresh_expires_at);
CREATE INDEX {p}_sessions_by_age ON {p}_sessions (created_at);

CREATE TABLE {p}_login_transactions (
    state_hash   TEXT PRIMARY KEY,
    seq          BIGSERIAL NOT NULL,
    binding_hash TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    verifier     TEXT NOT NULL,
    return_to    TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX {p}_login_transactions_by_binding ON {p}_login_transactions (binding_hash, created_at, seq);
CREATE INDEX {p}_login_transactions_by_expiry ON {p}_login_transactions (expires_at);
CREATE INDEX {p}_login_transactions_by_age ON {p}_login_transactions (created_at, seq);

CREATE TABLE {p}_refresh_leases (
    lease_key  TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX {p}_refresh_leases_by_expiry ON {p}_refresh_leases (expires_at);

CREATE TABLE {p}_replay_cache (
    replay_key TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX {p}_replay_cache_by_expiry ON {p}_replay_cache (expires_at);
