-- Budget leases: the slices of a run's budget each proxy of a fleet holds
-- (POST /v1/runs/{id}/budget/lease). A holder's row is what it holds in total: what it has
-- committed (used + reserved by calls in flight) plus what it may still reserve. The rows of a run
-- never add up to more than its budget; a request takes the run's row lock first.
CREATE TABLE budget_leases (
    run_id          TEXT NOT NULL REFERENCES runs (id),
    holder          TEXT NOT NULL,                 -- the proxy's receipt signing key id
    tokens          BIGINT NOT NULL DEFAULT 0,
    cost_micro_usd  BIGINT NOT NULL DEFAULT 0,
    calls           BIGINT NOT NULL DEFAULT 0,
    committed_tokens          BIGINT NOT NULL DEFAULT 0,
    committed_cost_micro_usd  BIGINT NOT NULL DEFAULT 0,
    committed_calls           BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL,               -- unix microseconds
    PRIMARY KEY (run_id, holder)
);
