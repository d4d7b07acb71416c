-- What the gateway keeps of a session's claims (routes, identity headers), whether the
-- email address is verified, and the write log through which instances sharing this
-- file (the admin CLI, a second process) learn that another process changed sessions.
ALTER TABLE sessions ADD COLUMN claims TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sessions ADD COLUMN email_verified INTEGER NOT NULL DEFAULT 0;

CREATE TABLE feed_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    origin     TEXT NOT NULL
);
