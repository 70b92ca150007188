-- Version 2 of the SQLite schema: chat sessions revoked by signing out (DELETE /api/session).
-- A session cookie is signed and carries its own expiry, so a row is only needed until then;
-- revoking prunes the rows whose cookies have expired.

CREATE TABLE revoked_sessions (
    id TEXT PRIMARY KEY NOT NULL,
    expires_at REAL NOT NULL   -- when the cookie expires anyway, seconds since the epoch, UTC
) WITHOUT ROWID;

CREATE INDEX revoked_sessions_by_expiry ON revoked_sessions (expires_at);
