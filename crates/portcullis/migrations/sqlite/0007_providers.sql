-- Several identity providers: which provider a session and a login transaction
-- belong to. Sessions and sign-ins from before are the `default` provider's (the
-- top-level form's id).
ALTER TABLE sessions ADD COLUMN provider_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE login_transactions ADD COLUMN provider_id TEXT NOT NULL DEFAULT 'default';
