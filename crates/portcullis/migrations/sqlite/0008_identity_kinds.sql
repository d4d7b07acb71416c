-- Machine clients: identities are keyed (issuer, kind, subject), kind `user` or
-- `client`, so that a client whose `client_id` equals a user's `sub` is another row
-- with another id. Every identity from before is a user. SQLite cannot change a
-- table's UNIQUE constraint in place: the table is rebuilt (its documented procedure;
-- the migration runs with foreign keys off and is checked before it commits).
CREATE TABLE users_new (
    id          TEXT PRIMARY KEY NOT NULL,
    issuer      TEXT NOT NULL,
    kind        TEXT NOT NULL DEFAULT 'user',
    subject     TEXT NOT NULL,
    email       TEXT,
    name        TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (issuer, kind, subject)
);
INSERT INTO users_new (id, issuer, kind, subject, email, name, created_at, updated_at)
    SELECT id, issuer, 'user', subject, email, name, created_at, updated_at FROM users;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;
-- The write-log triggers went with the old table (0004_foreign_writes.sql).
CREATE TRIGGER feed_users_update AFTER UPDATE ON users
BEGIN INSERT INTO feed_log (origin) VALUES (''); END;
CREATE TRIGGER feed_users_delete AFTER DELETE ON users
BEGIN INSERT INTO feed_log (origin) VALUES (''); END;
