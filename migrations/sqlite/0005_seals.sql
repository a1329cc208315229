-- Sealed IO: the content-addressed blobs proxies seal calls into (PUT /v1/seals/{sha256}), and the
-- datasets each run's receipts name. A blob's address is the SHA-256 (hex) of its bytes; it is
-- stored only when they match, once (a second PUT of the same address changes nothing).
-- GET /v1/runs/{id}/verify hashes the stored bytes again, so a blob altered here is reported.
CREATE TABLE seals (
    address     TEXT PRIMARY KEY,               -- SHA-256 hex of bytes
    bytes       BLOB NOT NULL,
    size        BIGINT NOT NULL,                -- length of bytes
    tenant      TEXT NOT NULL,                  -- tenant of the principal that stored it first
    created_at  BIGINT NOT NULL                 -- unix microseconds
);

-- Datasets a run depends on, by digest: from the `datasets` of its receipts, written in the
-- ingest transaction of the receipt that names them.
CREATE TABLE run_datasets (
    run_id  TEXT NOT NULL,
    tenant  TEXT NOT NULL,
    name    TEXT NOT NULL,
    sha256  TEXT NOT NULL,
    size    BIGINT NOT NULL,
    PRIMARY KEY (run_id, name, sha256)
);
