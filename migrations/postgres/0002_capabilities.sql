-- Capability tokens (Biscuit): what each run may do, its token's revocation id, and revocations.

ALTER TABLE runs ADD COLUMN agent TEXT;
ALTER TABLE runs ADD COLUMN grants TEXT NOT NULL DEFAULT '{}';  -- JSON: hosts, methods, paths, models, max_tokens
ALTER TABLE runs ADD COLUMN expires_at BIGINT;                   -- run token expiry, unix seconds
ALTER TABLE runs ADD COLUMN token_id TEXT;                       -- revocation id (hex) of the run token's authority block
ALTER TABLE runs ADD COLUMN revoked_at BIGINT;                   -- unix microseconds

-- Revoked capability ids, in the order proxies poll them (GET /v1/revocations?after=SEQ).
CREATE TABLE revocations (
    seq BIGSERIAL PRIMARY KEY,
    revocation_id  TEXT NOT NULL UNIQUE,
    run_id         TEXT,
    tenant         TEXT NOT NULL,
    reason         TEXT NOT NULL DEFAULT '',
    created_at     BIGINT NOT NULL
);
