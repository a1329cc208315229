-- Retention and legal holds. A run on hold (held_at set) keeps its receipts and the blobs they
-- name whatever the retention periods say.
ALTER TABLE runs ADD COLUMN held_at BIGINT;
ALTER TABLE runs ADD COLUMN hold_reason TEXT;

-- A pruned receipt keeps its row — id, chain position, hash and log leaf — without its body.
ALTER TABLE receipts ADD COLUMN pruned_at BIGINT;

-- Log leaves that are not receipts: what retention pruned, each a JCS record
-- {"at", "hash", "pruned": "receipt" | "seal", "subject", "type": "fleetforge.pruned/v1"} whose
-- SHA-256 is the leaf's data, appended to the tenant's log in the transaction that prunes.
CREATE TABLE log_leaves (
    tenant     TEXT NOT NULL,
    log_index  BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (tenant, log_index)
);
