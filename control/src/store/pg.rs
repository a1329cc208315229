//! The ingest transaction on Postgres, over the native driver: each step is one statement whose
//! values travel as arrays (`= ANY($1)`, `UNNEST(…)`), so Postgres parses and plans a statement
//! of a few parameters instead of a multi-row `VALUES` list of ten thousand, and the values are
//! sent in binary. About twice the rows per second of the portable path on this machine.

use std::collections::HashMap;

use sqlx::{PgConnection, Row as _};

use super::{DatasetRow, ReceiptRow, RunDelta, StoreError, now_micros};

/// Hashes of the receipts among `ids` that are already stored.
pub async fn existing(conn: &mut PgConnection, ids: &[&str]) -> Result<HashMap<String, String>, StoreError> {
    let rows = sqlx::query("SELECT id, hash FROM receipts WHERE id = ANY($1)").bind(ids).fetch_all(&mut *conn).await?;
    rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("hash")?))).collect()
}

/// The tenant of each of `runs`, creating the missing ones in `tenant`.
pub async fn run_tenants_or_create(
    conn: &mut PgConnection,
    runs: &[&str],
    tenant: &str,
) -> Result<HashMap<String, String>, StoreError> {
    sqlx::query(
        "INSERT INTO runs (id, tenant, labels, budget, created_at) \
         SELECT id, $2, $3, $4, $5 FROM UNNEST($1::text[]) AS id ON CONFLICT (id) DO NOTHING",
    )
    .bind(runs)
    .bind(tenant)
    .bind(r#"{"created_by":"ingest"}"#)
    .bind("{}")
    .bind(now_micros())
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query("SELECT id, tenant FROM runs WHERE id = ANY($1)").bind(runs).fetch_all(&mut *conn).await?;
    rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("tenant")?))).collect()
}

/// The heads of every lane of `runs`, locked for this transaction in one key order.
pub async fn lane_heads(
    conn: &mut PgConnection,
    runs: &[&str],
) -> Result<HashMap<(String, String), (i64, String)>, StoreError> {
    let rows = sqlx::query(
        "SELECT run_id, lane, seq, hash FROM lanes WHERE run_id = ANY($1) ORDER BY run_id, lane FOR UPDATE",
    )
    .bind(runs)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok(((r.try_get("run_id")?, r.try_get("lane")?), (r.try_get("seq")?, r.try_get("hash")?))))
        .collect()
}

/// Moves lane heads: `(run, lane, seq, hash)` each.
pub async fn set_lane_heads(conn: &mut PgConnection, heads: &[(&str, &str, i64, &str)]) -> Result<(), StoreError> {
    let runs: Vec<&str> = heads.iter().map(|h| h.0).collect();
    let lanes: Vec<&str> = heads.iter().map(|h| h.1).collect();
    let seqs: Vec<i64> = heads.iter().map(|h| h.2).collect();
    let hashes: Vec<&str> = heads.iter().map(|h| h.3).collect();
    sqlx::query(
        "INSERT INTO lanes (run_id, lane, seq, hash) SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[]) \
         ON CONFLICT (run_id, lane) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )
    .bind(runs)
    .bind(lanes)
    .bind(seqs)
    .bind(hashes)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Inserts receipts in one statement.
pub async fn insert_receipts(conn: &mut PgConnection, rows: &[ReceiptRow]) -> Result<(), StoreError> {
    fn col<'a, T>(rows: &'a [ReceiptRow], f: impl Fn(&'a ReceiptRow) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    let now = now_micros();
    sqlx::query(
        "INSERT INTO receipts (id, run_id, tenant, lane, seq, step, hash, prev_hash, kind, started_at, ended_at, \
         method, host, path, status, allow, outcome, request_bytes, response_bytes, request_digest, response_digest, \
         body, log_index, ingested_at) \
         SELECT u.*, $22 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], \
         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], \
         $15::int8[], $16::bool[], $17::text[], $18::int8[], $19::int8[], $20::text[], $21::text[], $23::text[], \
         $24::int8[]) AS u",
    )
    .bind(col(rows, |r| r.id.as_str()))
    .bind(col(rows, |r| r.run_id.as_str()))
    .bind(col(rows, |r| r.tenant.as_str()))
    .bind(col(rows, |r| r.lane.as_str()))
    .bind(col(rows, |r| r.seq))
    .bind(col(rows, |r| r.step))
    .bind(col(rows, |r| r.hash.as_str()))
    .bind(col(rows, |r| r.prev_hash.as_str()))
    .bind(col(rows, |r| r.kind.as_str()))
    .bind(col(rows, |r| r.started_at.as_str()))
    .bind(col(rows, |r| r.ended_at.as_str()))
    .bind(col(rows, |r| r.method.as_str()))
    .bind(col(rows, |r| r.host.as_str()))
    .bind(col(rows, |r| r.path.as_str()))
    .bind(col(rows, |r| r.status))
    .bind(col(rows, |r| r.allow))
    .bind(col(rows, |r| r.outcome.as_str()))
    .bind(col(rows, |r| r.request_bytes))
    .bind(col(rows, |r| r.response_bytes))
    .bind(col(rows, |r| r.request_digest.as_deref()))
    .bind(col(rows, |r| r.response_digest.as_deref()))
    .bind(now)
    .bind(col(rows, |r| r.body.as_str()))
    .bind(col(rows, |r| r.log_index))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the datasets receipts name, in one statement; a row already recorded is kept.
pub async fn add_datasets(conn: &mut PgConnection, rows: &[DatasetRow]) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO run_datasets (run_id, tenant, name, sha256, size) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) \
         ON CONFLICT (run_id, name, sha256) DO NOTHING",
    )
    .bind(rows.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.sha256.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.size).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds a batch's figures to its runs, in one statement.
pub async fn bump_runs(conn: &mut PgConnection, deltas: &[(&str, RunDelta)]) -> Result<(), StoreError> {
    let field = |f: fn(&RunDelta) -> i64| deltas.iter().map(|(_, d)| f(d)).collect::<Vec<i64>>();
    sqlx::query(
        "UPDATE runs SET calls = runs.calls + v.calls, input_tokens = runs.input_tokens + v.input_tokens, \
         output_tokens = runs.output_tokens + v.output_tokens, cost_micro_usd = runs.cost_micro_usd + v.cost, \
         rejected = runs.rejected + v.rejected, \
         last_activity = GREATEST(COALESCE(runs.last_activity, v.last_activity), v.last_activity), \
         closed_at = CASE WHEN v.calls > 0 THEN NULL ELSE runs.closed_at END, \
         close_reason = CASE WHEN v.calls > 0 THEN NULL ELSE runs.close_reason END \
         FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[]) \
         AS v(id, calls, input_tokens, output_tokens, cost, rejected, last_activity) WHERE runs.id = v.id",
    )
    .bind(deltas.iter().map(|(run, _)| *run).collect::<Vec<&str>>())
    .bind(field(|d| d.calls))
    .bind(field(|d| d.input_tokens))
    .bind(field(|d| d.output_tokens))
    .bind(field(|d| d.cost_micro_usd))
    .bind(field(|d| d.rejected))
    .bind(field(|d| d.last_activity))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
