//! The transparency log's storage: each tenant's perfect subtrees above the leaves (`log_nodes`),
//! its size and head (`log_heads`), and each receipt's leaf index (`receipts.log_index`). A leaf
//! is not stored twice: leaf `i` is SHA-256(0x00 ‖ hash) of the tenant's receipt whose
//! `log_index` is `i`, or of the log's other record at `i` (`log_leaves`: what retention pruned). The tree arithmetic is [`fleetforge_trust::tlog`]'s; this module reads and
//! writes what it needs.
//!
//! [`IngestTx::append_log`] appends a batch inside the ingest transaction, with the tenant's head
//! row locked, so a receipt is stored if and only if it is logged. Reads compute which nodes a
//! head or proof needs first ([`fleetforge_trust::tlog::positions`]) and fetch them in one
//! statement.

use std::collections::HashMap;

use fleetforge_trust::canonical::{hex, sha256, unhex32};
use fleetforge_trust::merkle::{Hash, leaf_hash};
use fleetforge_trust::tlog::{self, Frontier, LogError, Node};
use sqlx::{AnyConnection, PgConnection, Row as _};

use super::{IngestTx, Store, StoreError, now_micros};

/// Most `(level, idx)` pairs in one statement.
const POSITIONS_PER_STATEMENT: usize = 100;
/// Most node rows in one portable INSERT (four values each).
const NODES_PER_STATEMENT: usize = 250;

/// The origin (and signed-note key name) of `tenant`'s log: `fleetforge/log/{tenant}`.
pub fn log_origin(tenant: &str) -> String {
    format!("fleetforge/log/{tenant}")
}

/// A tenant's log head as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// Number of leaves.
    pub size: u64,
    /// The head (RFC 9162 `MTH`).
    pub root: Hash,
}

/// Where a stored receipt is in its tenant's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its tenant.
    pub tenant: String,
    /// Its leaf index; `None` until it is logged.
    pub index: Option<u64>,
    /// The receipt hash (the leaf's data).
    pub hash: Hash,
}

fn unhex(s: &str) -> Result<Hash, StoreError> {
    unhex32(s).ok_or_else(|| StoreError::Corrupt(format!("{s:?} is not a 32-byte hex hash")))
}

fn as_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative log size or index {v}")))
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl From<LogError> for StoreError {
    fn from(e: LogError) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl IngestTx {
    /// Appends receipt hashes to `tenant`'s log, in order; the first one's leaf index (the
    /// others follow it).
    pub async fn append_log(&mut self, tenant: &str, hashes: &[Hash]) -> Result<u64, StoreError> {
        let size: i64 = on_tx!(self, |conn| {
            let row =
                sqlx::query(LOCK_HEAD).bind(tenant).bind(hex(&sha256(b""))).bind(now_micros()).fetch_one(conn).await?;
            row.try_get(0)?
        });
        let size = as_u64(size)?;
        let positions = Frontier::positions(size);
        let stored = match self {
            IngestTx::Any(tx) => nodes(tx, tenant, &positions).await?,
            IngestTx::Pg(tx) => pg_nodes(tx, tenant, &positions).await?,
        };
        let mut frontier = Frontier::load(size, &stored)?;
        let mut created: Vec<Node> = Vec::with_capacity(hashes.len() * 2);
        for h in hashes {
            created.extend(frontier.push(h));
        }
        let root = frontier.root();
        // Leaves are the receipts' own hashes, stored with the receipts.
        created.retain(|(level, _, _)| *level > 0);
        match self {
            IngestTx::Any(tx) => insert_nodes(tx, tenant, &created).await?,
            IngestTx::Pg(tx) => pg_insert_nodes(tx, tenant, &created).await?,
        }
        on_tx!(self, |conn| {
            let q = sqlx::query(SET_HEAD).bind(tenant).bind(as_i64(frontier.size)).bind(hex(&root));
            q.bind(now_micros()).execute(conn).await?;
        });
        Ok(size)
    }
}

/// Creates the tenant's empty head if it has none and returns its size, locking the row until the
/// transaction ends (an upsert locks the row it touches; on SQLite the whole database is locked
/// already, `BEGIN IMMEDIATE`). One statement on both databases.
const LOCK_HEAD: &str = "INSERT INTO log_heads (tenant, size, root, updated_at) VALUES ($1, 0, $2, $3) \
     ON CONFLICT (tenant) DO UPDATE SET tenant = excluded.tenant RETURNING size";

/// Moves the tenant's head.
const SET_HEAD: &str = "UPDATE log_heads SET size = $2, root = $3, updated_at = $4 WHERE tenant = $1";

/// The placeholder of the `i`-th value (from 1): `$i` on Postgres, `?` on SQLite, which looks each
/// `$i` up by a linear scan of the statement's names (quadratic over a long value list).
fn ph(conn: &AnyConnection, i: usize) -> String {
    if conn.backend_name().eq_ignore_ascii_case("sqlite") { "?".to_owned() } else { format!("${i}") }
}

/// `WHERE tenant = $1 AND ((level = $2 AND idx = $3) OR …)` for `n` positions.
fn positions_clause(conn: &AnyConnection, n: usize) -> String {
    let terms: Vec<String> =
        (0..n).map(|i| format!("(level = {} AND idx = {})", ph(conn, 2 + 2 * i), ph(conn, 3 + 2 * i))).collect();
    format!("SELECT level, idx, hash FROM log_nodes WHERE tenant = {} AND ({})", ph(conn, 1), terms.join(" OR "))
}

fn node_of(level: i64, idx: i64, hash: &str) -> Result<((u32, u64), Hash), StoreError> {
    let level = u32::try_from(level).map_err(|_| StoreError::Corrupt(format!("log node level {level}")))?;
    Ok(((level, as_u64(idx)?), unhex(hash)?))
}

/// The stored nodes among `positions`: where a level's positions are dense (a run's receipts,
/// the nodes above them), one range scan per level; else lists of at most
/// [`POSITIONS_PER_STATEMENT`] pairs.
async fn nodes(
    conn: &mut AnyConnection,
    tenant: &str,
    positions: &[(u32, u64)],
) -> Result<HashMap<(u32, u64), Hash>, StoreError> {
    let mut out = HashMap::with_capacity(positions.len());
    let mut sparse: Vec<(u32, u64)> = Vec::new();
    let mut levels: std::collections::BTreeMap<u32, Vec<u64>> = std::collections::BTreeMap::new();
    for (level, idx) in positions {
        levels.entry(*level).or_default().push(*idx);
    }
    if let Some(idxs) = levels.remove(&0) {
        out.extend(leaves(conn, tenant, &idxs).await?);
    }
    for (level, idxs) in levels {
        let (lo, hi) = (idxs.iter().min().copied().unwrap_or(0), idxs.iter().max().copied().unwrap_or(0));
        if dense(&idxs) {
            let rows = sqlx::query(
                "SELECT level, idx, hash FROM log_nodes WHERE tenant = $1 AND level = $2 AND idx >= $3 AND idx <= $4",
            )
            .bind(tenant)
            .bind(i64::from(level))
            .bind(as_i64(lo))
            .bind(as_i64(hi))
            .fetch_all(&mut *conn)
            .await?;
            for row in rows {
                let (k, v) = node_of(row.try_get(0)?, row.try_get(1)?, row.try_get::<String, _>(2)?.as_str())?;
                out.insert(k, v);
            }
        } else {
            sparse.extend(idxs.into_iter().map(|i| (level, i)));
        }
    }
    for chunk in sparse.chunks(POSITIONS_PER_STATEMENT) {
        let sql = positions_clause(conn, chunk.len());
        let mut q = sqlx::query(&sql).bind(tenant);
        for (level, idx) in chunk {
            q = q.bind(i64::from(*level)).bind(as_i64(*idx));
        }
        for row in q.fetch_all(&mut *conn).await? {
            let (k, v) = node_of(row.try_get(0)?, row.try_get(1)?, row.try_get::<String, _>(2)?.as_str())?;
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// Whether positions are close enough together to read their whole range.
fn dense(idxs: &[u64]) -> bool {
    let (lo, hi) = (idxs.iter().min().copied().unwrap_or(0), idxs.iter().max().copied().unwrap_or(0));
    idxs.len() > 8 && hi - lo < 8 * idxs.len() as u64
}

fn leaf_of(index: i64, hash: &str) -> Result<((u32, u64), Hash), StoreError> {
    Ok(((0, as_u64(index)?), leaf_hash(&unhex(hash)?)))
}

/// Leaves `idxs` of `tenant`'s log: the leaf hashes of the receipts at those indexes, and of the
/// log's other records (`log_leaves`: what retention pruned).
async fn leaves(conn: &mut AnyConnection, tenant: &str, idxs: &[u64]) -> Result<HashMap<(u32, u64), Hash>, StoreError> {
    let mut out = HashMap::with_capacity(idxs.len());
    for table in ["receipts", "log_leaves"] {
        let mut rows = Vec::new();
        if dense(idxs) {
            let (lo, hi) = (idxs.iter().min().copied().unwrap_or(0), idxs.iter().max().copied().unwrap_or(0));
            rows = sqlx::query(&format!(
                "SELECT log_index, hash FROM {table} WHERE tenant = $1 AND log_index >= $2 AND log_index <= $3"
            ))
            .bind(tenant)
            .bind(as_i64(lo))
            .bind(as_i64(hi))
            .fetch_all(&mut *conn)
            .await?;
        } else {
            for chunk in idxs.chunks(POSITIONS_PER_STATEMENT) {
                let list: Vec<String> = (0..chunk.len()).map(|i| ph(conn, i + 2)).collect();
                let sql = format!(
                    "SELECT log_index, hash FROM {table} WHERE tenant = {} AND log_index IN ({})",
                    ph(conn, 1),
                    list.join(", ")
                );
                let mut q = sqlx::query(&sql).bind(tenant);
                for idx in chunk {
                    q = q.bind(as_i64(*idx));
                }
                rows.extend(q.fetch_all(&mut *conn).await?);
            }
        }
        for row in rows {
            let (k, v) = leaf_of(row.try_get(0)?, row.try_get::<String, _>(1)?.as_str())?;
            out.insert(k, v);
        }
        if out.len() == idxs.len() {
            break;
        }
    }
    Ok(out)
}

async fn pg_nodes(
    conn: &mut PgConnection,
    tenant: &str,
    positions: &[(u32, u64)],
) -> Result<HashMap<(u32, u64), Hash>, StoreError> {
    let leaf_idxs: Vec<i64> = positions.iter().filter(|p| p.0 == 0).map(|p| as_i64(p.1)).collect();
    let mut out = HashMap::with_capacity(positions.len());
    if !leaf_idxs.is_empty() {
        let rows = sqlx::query(
            "SELECT log_index, hash FROM receipts WHERE tenant = $1 AND log_index = ANY($2) \
             UNION ALL SELECT log_index, hash FROM log_leaves WHERE tenant = $1 AND log_index = ANY($2)",
        )
        .bind(tenant)
        .bind(leaf_idxs)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let (k, v) = leaf_of(row.try_get(0)?, row.try_get::<String, _>(1)?.as_str())?;
            out.insert(k, v);
        }
    }
    let inner: Vec<&(u32, u64)> = positions.iter().filter(|p| p.0 > 0).collect();
    let levels: Vec<i64> = inner.iter().map(|p| i64::from(p.0)).collect();
    let idxs: Vec<i64> = inner.iter().map(|p| as_i64(p.1)).collect();
    let rows = sqlx::query(
        "SELECT n.level, n.idx, n.hash FROM log_nodes n \
         JOIN UNNEST($2::int8[], $3::int8[]) AS w(level, idx) ON n.level = w.level AND n.idx = w.idx \
         WHERE n.tenant = $1",
    )
    .bind(tenant)
    .bind(levels)
    .bind(idxs)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let (k, v) = node_of(row.try_get(0)?, row.try_get(1)?, row.try_get::<String, _>(2)?.as_str())?;
        out.insert(k, v);
    }
    Ok(out)
}

async fn insert_nodes(conn: &mut AnyConnection, tenant: &str, nodes: &[Node]) -> Result<(), StoreError> {
    for chunk in nodes.chunks(NODES_PER_STATEMENT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                format!(
                    "({}, {}, {}, {})",
                    ph(conn, 4 * i + 1),
                    ph(conn, 4 * i + 2),
                    ph(conn, 4 * i + 3),
                    ph(conn, 4 * i + 4)
                )
            })
            .collect();
        let sql = format!("INSERT INTO log_nodes (tenant, level, idx, hash) VALUES {}", values.join(", "));
        let mut q = sqlx::query(&sql);
        for (level, idx, hash) in chunk {
            q = q.bind(tenant).bind(i64::from(*level)).bind(as_i64(*idx)).bind(hex(hash));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn pg_insert_nodes(conn: &mut PgConnection, tenant: &str, nodes: &[Node]) -> Result<(), StoreError> {
    let levels: Vec<i64> = nodes.iter().map(|n| i64::from(n.0)).collect();
    let idxs: Vec<i64> = nodes.iter().map(|n| as_i64(n.1)).collect();
    let hashes: Vec<String> = nodes.iter().map(|n| hex(&n.2)).collect();
    sqlx::query(
        "INSERT INTO log_nodes (tenant, level, idx, hash) \
         SELECT $1, u.level, u.idx, u.hash FROM UNNEST($2::int8[], $3::int8[], $4::text[]) AS u(level, idx, hash)",
    )
    .bind(tenant)
    .bind(levels)
    .bind(idxs)
    .bind(hashes)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// `tenant`'s log head; size 0 (and the hash of nothing) for a tenant with no receipts.
    pub async fn log_head(&self, tenant: &str) -> Result<LogHead, StoreError> {
        let row = sqlx::query("SELECT size, root FROM log_heads WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => LogHead { size: as_u64(r.try_get(0)?)?, root: unhex(&r.try_get::<String, _>(1)?)? },
            None => LogHead { size: 0, root: sha256(b"") },
        })
    }

    /// Where receipt `id` is in its tenant's log; `None` for an unknown receipt.
    pub async fn log_entry(&self, id: &str) -> Result<Option<LogEntry>, StoreError> {
        let row = sqlx::query("SELECT tenant, log_index, hash FROM receipts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let index: Option<i64> = r.try_get(1)?;
        Ok(Some(LogEntry {
            tenant: r.try_get(0)?,
            index: index.map(as_u64).transpose()?,
            hash: unhex(&r.try_get::<String, _>(2)?)?,
        }))
    }

    /// Where each receipt of `run` is in its tenant's log: `(receipt id, entry)`.
    pub async fn log_entries_of_run(&self, run: &str) -> Result<Vec<(String, LogEntry)>, StoreError> {
        let rows = sqlx::query("SELECT id, tenant, log_index, hash FROM receipts WHERE run_id = $1")
            .bind(run)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let index: Option<i64> = r.try_get(2)?;
                Ok((
                    r.try_get(0)?,
                    LogEntry {
                        tenant: r.try_get(1)?,
                        index: index.map(as_u64).transpose()?,
                        hash: unhex(&r.try_get::<String, _>(3)?)?,
                    },
                ))
            })
            .collect()
    }

    /// Runs a computation over `tenant`'s stored nodes: first over placeholders to learn which
    /// nodes it reads, then over those, the leaves and the inner nodes fetched at once on two
    /// connections.
    pub async fn with_log_nodes<T>(
        &self,
        tenant: &str,
        compute: impl Fn(&dyn tlog::Nodes) -> Result<T, LogError>,
    ) -> Result<Result<T, LogError>, StoreError> {
        let (leaf, inner): (Vec<_>, Vec<_>) = tlog::positions(&compute).into_iter().partition(|(level, _)| *level == 0);
        let leaf: Vec<u64> = leaf.into_iter().map(|(_, idx)| idx).collect();
        let (mut stored, inner) = tokio::try_join!(
            async {
                if leaf.is_empty() {
                    return Ok(HashMap::new());
                }
                leaves(&mut *self.pool.acquire().await?, tenant, &leaf).await
            },
            async {
                if inner.is_empty() {
                    return Ok(HashMap::new());
                }
                nodes(&mut *self.pool.acquire().await?, tenant, &inner).await
            },
        )?;
        stored.extend(inner);
        Ok(compute(&stored))
    }

    /// Appends the receipts stored before the log existed (`log_index` NULL) to their tenants'
    /// logs, oldest first, a thousand per transaction; the number appended.
    pub async fn backfill_log(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        loop {
            let rows = sqlx::query(
                "SELECT id, tenant, hash FROM receipts WHERE log_index IS NULL ORDER BY ingested_at, id LIMIT 1000",
            )
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(total);
            }
            let mut by_tenant: Vec<(String, Vec<(String, Hash)>)> = Vec::new();
            for r in &rows {
                let tenant: String = r.try_get(1)?;
                let entry = (r.try_get::<String, _>(0)?, unhex(&r.try_get::<String, _>(2)?)?);
                match by_tenant.iter_mut().find(|(t, _)| *t == tenant) {
                    Some((_, list)) => list.push(entry),
                    None => by_tenant.push((tenant, vec![entry])),
                }
            }
            let mut tx = self.begin_ingest().await?;
            for (tenant, list) in &by_tenant {
                let hashes: Vec<Hash> = list.iter().map(|(_, h)| *h).collect();
                let first = tx.append_log(tenant, &hashes).await?;
                let ids: Vec<&str> = list.iter().map(|(id, _)| id.as_str()).collect();
                tx.set_log_indexes(&ids, first).await?;
            }
            tx.commit().await?;
            total += rows.len() as u64;
        }
    }
}

impl IngestTx {
    /// Sets the leaf index of receipts `ids`: `first`, `first + 1`, … in order.
    async fn set_log_indexes(&mut self, ids: &[&str], first: u64) -> Result<(), StoreError> {
        for (i, id) in ids.iter().enumerate() {
            let index = as_i64(first + i as u64);
            on_tx!(self, |conn| {
                sqlx::query("UPDATE receipts SET log_index = $1 WHERE id = $2")
                    .bind(index)
                    .bind(*id)
                    .execute(conn)
                    .await?;
            });
        }
        Ok(())
    }
}
