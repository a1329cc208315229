-- SCITT. A run ends when it is closed (POST /v1/runs/{id}/close) or has been idle past
-- control.scitt.idle_secs; ending writes an outbox row in the same transaction, and a worker turns
-- each row into a signed statement registered in the tenant's transparency log. Workers claim rows
-- with FOR UPDATE SKIP LOCKED (Postgres), so several control replicas never emit one twice. A
-- receipt ingested for an ended run opens it again; its next end emits a newer statement.
ALTER TABLE runs ADD COLUMN closed_at BIGINT;
ALTER TABLE runs ADD COLUMN close_reason TEXT;     -- 'closed' or 'idle'
-- What the idle sweep looks at: open runs by last activity.
CREATE INDEX runs_open_activity ON runs (last_activity) WHERE closed_at IS NULL;

CREATE TABLE scitt_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant      TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    reason      TEXT NOT NULL,       -- why the run ended: 'closed' or 'idle'
    created_at  BIGINT NOT NULL,     -- unix microseconds
    done_at     BIGINT,              -- when its statement was registered
    statement   TEXT                 -- that statement's id
);
CREATE INDEX scitt_outbox_pending ON scitt_outbox (id) WHERE done_at IS NULL;

-- Registered signed statements, control's own (runs, receipts) and external ones. The id is the
-- SHA-256 (hex) of the COSE_Sign1 bytes, which is also the data of the statement's leaf in the
-- tenant's log (a log_leaves row at log_index with that hash and body {"statement": id, "type":
-- "fleetforge.scitt/v1"}).
CREATE TABLE scitt_statements (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    kind          TEXT NOT NULL,     -- 'run', 'receipt' or 'external'
    subject       TEXT NOT NULL,     -- the run or receipt id; an external statement's CWT sub
    run_id        TEXT,              -- the run it is about, if any
    issuer        TEXT NOT NULL,     -- CWT iss
    content_type  TEXT,
    receipts      BIGINT,            -- a run statement: how many receipts it covers
    cose          TEXT NOT NULL,     -- the COSE_Sign1 bytes, base64
    log_index     BIGINT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX scitt_statements_run ON scitt_statements (run_id, created_at);
