-- Transparency log: per tenant, an append-only Merkle tree over receipt hashes (RFC 9162 §2.1),
-- appended in the ingest transaction of the receipts it logs. A tenant's tree is kept as its
-- perfect subtrees: node (level, idx) is the hash (hex) of leaves idx·2^level .. (idx+1)·2^level,
-- written once that range is complete. Leaves (level 0) are not stored here: leaf i is
-- SHA-256(0x00 ‖ hash) of the tenant's receipt whose log_index is i. Every head and proof of any
-- size is computed from these; nothing in them is ever updated or deleted.
CREATE TABLE log_nodes (
    tenant  TEXT NOT NULL,
    level   BIGINT NOT NULL,
    idx     BIGINT NOT NULL,
    hash    TEXT NOT NULL,
    PRIMARY KEY (tenant, level, idx)
);

-- The size and head of each tenant's log; the row is locked while a batch is appended.
CREATE TABLE log_heads (
    tenant      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    root        TEXT NOT NULL,       -- hex
    updated_at  BIGINT NOT NULL      -- unix microseconds
);

-- Each receipt's leaf index in its tenant's log (NULL until logged: receipts stored before the log
-- existed are appended when control starts); the index also finds a leaf's receipt.
ALTER TABLE receipts ADD COLUMN log_index BIGINT;
CREATE UNIQUE INDEX receipts_log_index ON receipts (tenant, log_index);
-- What control appends when it starts: receipts not logged yet, oldest first.
CREATE INDEX receipts_unlogged ON receipts (ingested_at, id) WHERE log_index IS NULL;
