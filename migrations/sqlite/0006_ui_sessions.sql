-- Web view sign-in: one-time login codes (kind 'code', spent on first use) and the sessions they
-- open (kind 'session'), by the SHA-256 (hex) of their secret. Kept in the database so a login URL
-- printed by one control process works in the next one started on the same database.
CREATE TABLE ui_sessions (
    token_hash  TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,      -- 'code' or 'session'
    tenant      TEXT,               -- NULL: every tenant (asked for with the bootstrap token)
    expires_at  BIGINT NOT NULL     -- unix microseconds
);
