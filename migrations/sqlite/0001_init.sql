-- FleetForge control schema v1 (SQLite). Never edit once released: add a new migration.

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,          -- SHA-256 hex of the bearer token; the token itself is never stored
    role        TEXT NOT NULL CHECK (role IN ('admin', 'proxy', 'reader')),
    tenant      TEXT NOT NULL,
    label       TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL                -- unix microseconds
);

CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    labels          TEXT NOT NULL DEFAULT '{}', -- JSON object
    budget          TEXT NOT NULL DEFAULT '{}', -- JSON object
    token_hash      TEXT,                       -- SHA-256 hex of the run token
    created_at      BIGINT NOT NULL,
    last_activity   BIGINT,
    calls           BIGINT NOT NULL DEFAULT 0,
    input_tokens    BIGINT NOT NULL DEFAULT 0,
    output_tokens   BIGINT NOT NULL DEFAULT 0,
    cost_micro_usd  BIGINT NOT NULL DEFAULT 0,
    rejected        BIGINT NOT NULL DEFAULT 0,  -- receipts refused at ingest
    verified_at     BIGINT,                     -- last GET /v1/runs/{id}/verify
    verify_ok       BIGINT,                     -- its result: 1 ok, 0 problems
    verify_checked  BIGINT                      -- receipts it checked
);
CREATE INDEX runs_tenant_created ON runs (tenant, created_at DESC, id);

CREATE TABLE keys (
    key_id      TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    public_key  TEXT NOT NULL,                  -- base64url
    tenant      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- The head of each (run, lane) chain: what the next receipt must continue from.
CREATE TABLE lanes (
    run_id  TEXT NOT NULL,
    lane    TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    hash    TEXT NOT NULL,
    PRIMARY KEY (run_id, lane)
);

CREATE TABLE receipts (
    id               TEXT PRIMARY KEY,
    run_id           TEXT NOT NULL,
    tenant           TEXT NOT NULL,
    lane             TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    step             BIGINT NOT NULL,
    hash             TEXT NOT NULL,
    prev_hash        TEXT NOT NULL,
    kind             TEXT NOT NULL,
    started_at       TEXT NOT NULL,
    ended_at         TEXT NOT NULL,
    method           TEXT NOT NULL,
    host             TEXT NOT NULL,
    path             TEXT NOT NULL,
    status           BIGINT,
    allow            INTEGER NOT NULL,
    outcome          TEXT NOT NULL,
    request_bytes    BIGINT NOT NULL,
    response_bytes   BIGINT NOT NULL,
    request_digest   TEXT,
    response_digest  TEXT,
    body             TEXT NOT NULL,             -- the receipt JSON (re-serialized; its hash is unchanged)
    ingested_at      BIGINT NOT NULL,
    UNIQUE (run_id, lane, seq)
);
CREATE INDEX receipts_run_seq ON receipts (run_id, seq, lane);
