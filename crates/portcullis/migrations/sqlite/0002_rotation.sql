-- Session-id rotation (refresh): the new id sealed under a key derived from the id it
-- replaced, so that only a holder of the old id can be handed the new cookie; and when
-- the access token was issued, for the refresh window min(refresh_before, lifetime / 2).
ALTER TABLE sessions ADD COLUMN previous_handover TEXT;
ALTER TABLE sessions ADD COLUMN access_issued_at INTEGER;
