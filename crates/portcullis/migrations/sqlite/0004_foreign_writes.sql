-- Every change to users or sessions leaves a write-log entry, whoever makes it. The
-- gateway claims its own entries (origin = the instance) inside the writing
-- transaction; an entry left unclaimed ('') was made by someone else (`sqlite3` by
-- hand, another tool), and every instance sharing the file treats it as a reset.
CREATE TRIGGER feed_sessions_insert AFTER INSERT ON sessions
BEGIN INSERT INTO feed_log (origin) VALUES (''); END;
CREATE TRIGGER feed_sessions_update AFTER UPDATE ON sessions
BEGIN INSERT INTO feed_log (origin) VALUES (''); END;
CREATE TRIGGER feed_sessions_delete AFTER DELETE ON sessions
BEGIN INSERT INTO feed_log (origin) VALUES (''); END;
CREATE TRIGGER feed_users_update AFTER UPDATE ON users
BEGIN INSERT INTO feed_log (origin) VALUES (''); END;
CREATE TRIGGER feed_users_delete AFTER DELETE ON users
BEGIN INSERT INTO feed_log (origin) VALUES (''); END;
