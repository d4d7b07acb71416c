-- The keys the gateway signs identity assertions with (ES256). The private key is
-- sealed with the key ring. A generation is written once (insert-if-absent), so
-- instances adding the same generation at once agree on one key; the newest signs.
CREATE TABLE signing_keys (
    generation INTEGER PRIMARY KEY NOT NULL,
    kid        TEXT NOT NULL UNIQUE,
    sealed_key TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
