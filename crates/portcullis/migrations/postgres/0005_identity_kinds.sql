-- Machine clients: identities are keyed (issuer, kind, subject), kind `user` or
-- `client`, so that a client whose `client_id` equals a user's `sub` is another row
-- with another id. Every identity from before is a user.
ALTER TABLE {p}_users ADD COLUMN kind TEXT NOT NULL DEFAULT 'user';
DO $$
DECLARE
    old_key TEXT;
BEGIN
    SELECT conname INTO old_key FROM pg_constraint
        WHERE conrelid = '{p}_users'::regclass AND contype = 'u';
    IF old_key IS NOT NULL THEN
        EXECUTE format('ALTER TABLE {p}_users DROP CONSTRAINT %I', old_key);
    END IF;
END $$;
ALTER TABLE {p}_users ADD CONSTRAINT {p}_users_identity UNIQUE (issuer, kind, subject);
