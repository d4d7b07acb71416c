-- Portcullis store, SQLite. Session ids are stored only as SHA-256 hex; tokens only
-- sealed (v1.<kid>.<base64url>).

CREATE TABLE users (
    id          TEXT PRIMARY KEY NOT NULL,
    issuer      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    email       TEXT,
    name        TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (issuer, subject)
);

CREATE TABLE sessions (
    family_id           TEXT PRIMARY KEY NOT NULL,
    id_hash             TEXT NOT NULL UNIQUE,
    previous_id_hash    TEXT UNIQUE,
    previous_valid_until INTEGER,
    current_seen        INTEGER NOT NULL DEFAULT 1,
    user_id             TEXT NOT NULL REFERENCES users (id),
    provider_sid        TEXT,
    created_at          INTEGER NOT NULL,
    last_seen_at        INTEGER NOT NULL,
    idle_expires_at     INTEGER NOT NULL,
    absolute_expires_at INTEGER NOT NULL,
    refresh_token       TEXT,
    access_token        TEXT,
    id_token            TEXT,
    access_expires_at   INTEGER,
    refresh_expires_at  INTEGER,
    token_version       INTEGER NOT NULL DEFAULT 0,
    user_agent          TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_provider_sid ON sessions (provider_sid);
CREATE INDEX sessions_by_idle_expiry ON sessions (idle_expires_at);
CREATE INDEX sessions_by_absolute_expiry ON sessions (absolute_expires_at);

CREATE TABLE login_transactions (
    state_hash   TEXT PRIMARY KEY NOT NULL,
    binding_hash TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    verifier     TEXT NOT NULL,
    return_to    TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX login_transactions_by_binding ON login_transactions (binding_hash, created_at);
CREATE INDEX login_transactions_by_expiry ON login_transactions (expires_at);
CREATE INDEX login_transactions_by_age ON login_transactions (created_at);

CREATE TABLE refresh_leases (
    lease_key  TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE replay_cache (
    replay_key TEXT PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX replay_cache_by_expiry ON replay_cache (expires_at);
