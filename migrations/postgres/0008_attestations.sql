-- The attestation vault: external attestations (in-toto statements, SLSA provenance, DSSE
-- envelopes) stored as received, validated on arrival, optionally linked to a run. An id names
-- one attestation for good: storing other bytes under it is refused.
CREATE TABLE attestations (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    run_id          TEXT,                -- the run it is about, if any
    kind            TEXT NOT NULL,       -- 'in-toto', 'slsa-provenance' or 'dsse'
    predicate_type  TEXT,                -- the in-toto predicateType (inside a DSSE envelope too)
    sha256          TEXT NOT NULL,       -- of the body as received (hex)
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL      -- unix microseconds
);
CREATE INDEX attestations_run ON attestations (run_id);
