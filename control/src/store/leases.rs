//! Budget leases: the slices of a run's budget the proxies of a fleet hold
//! (`POST /v1/runs/{id}/budget/lease`).
//!
//! A holder's row is what it holds in total. A request reports what the holder has committed of
//! it (used + reserved by calls in flight) and asks for more, or gives back the rest. Every request
//! runs in one transaction that first locks the run's row (`FOR UPDATE` on Postgres; SQLite's
//! write transactions are serial), so the holders of a run together never hold more than its
//! budget: slices are reservations, and the fleet's overspend bound is zero.

use fleetforge_trust::wire::{Held, LeaseRequest, Slice};
use sqlx::Row as _;

use super::{Backend, Store, StoreError, now_micros};

/// One holder's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The holder (a proxy's receipt signing key id).
    pub holder: String,
    /// What it holds.
    pub held: Slice,
    /// What it last reported committed.
    pub committed: Slice,
    /// Last request, unix µs.
    pub updated_at: i64,
}

/// The outcome of a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// What the holder now holds.
    pub held: Slice,
    /// What every holder together now holds.
    pub leased: Slice,
}

/// Applies `request` to one member: `limit` of the run (`None`: unlimited), `others` held by the
/// other holders, `held` and `committed` by this one; its new holding.
fn member(limit: Option<u64>, others: u64, held: u64, committed: u64, want: u64, release: bool) -> u64 {
    let Some(limit) = limit else { return 0 };
    // A holder that committed more than it held (an upstream that ignored the output cap) holds
    // what it committed: the run's figures must show the spend.
    let base = held.max(committed);
    if release {
        return committed;
    }
    let free = limit.saturating_sub(others.saturating_add(base));
    base.saturating_add(want.min(free))
}

/// The holder's new holding and the run's new total, for `limits`, the run's `rows` and `request`.
pub fn grant(limits: &Held, rows: &[LeaseRow], request: &LeaseRequest) -> Granted {
    let (held, others) = rows.iter().fold((Slice::default(), Slice::default()), |(held, others), r| {
        if r.holder == request.holder {
            (r.held, others)
        } else {
            let o = Slice {
                tokens: others.tokens.saturating_add(r.held.tokens),
                cost_micro_usd: others.cost_micro_usd.saturating_add(r.held.cost_micro_usd),
                calls: others.calls.saturating_add(r.held.calls),
            };
            (held, o)
        }
    });
    let (c, w, release) = (&request.committed, &request.want, request.release);
    let new = Slice {
        tokens: member(limits.tokens, others.tokens, held.tokens, c.tokens, w.tokens, release),
        cost_micro_usd: member(
            limits.cost_micro_usd,
            others.cost_micro_usd,
            held.cost_micro_usd,
            c.cost_micro_usd,
            w.cost_micro_usd,
            release,
        ),
        calls: member(limits.calls, others.calls, held.calls, c.calls, w.calls, release),
    };
    let leased = Slice {
        tokens: others.tokens.saturating_add(new.tokens),
        cost_micro_usd: others.cost_micro_usd.saturating_add(new.cost_micro_usd),
        calls: others.calls.saturating_add(new.calls),
    };
    Granted { held: new, leased }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn lease_row(row: &sqlx::any::AnyRow) -> Result<LeaseRow, sqlx::Error> {
    let slice = |t: &str, c: &str, n: &str| -> Result<Slice, sqlx::Error> {
        Ok(Slice {
            tokens: to_u64(row.try_get(t)?),
            cost_micro_usd: to_u64(row.try_get(c)?),
            calls: to_u64(row.try_get(n)?),
        })
    };
    Ok(LeaseRow {
        holder: row.try_get("holder")?,
        held: slice("tokens", "cost_micro_usd", "calls")?,
        committed: slice("committed_tokens", "committed_cost_micro_usd", "committed_calls")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const LEASE_COLUMNS: &str = "holder, tokens, cost_micro_usd, calls, committed_tokens, committed_cost_micro_usd, \
     committed_calls, updated_at";

impl Store {
    /// Applies a lease request to run `run` whose budget is `limits`, under the run's row lock.
    /// `None` when the run does not exist.
    pub async fn lease(&self, run: &str, limits: &Held, request: &LeaseRequest) -> Result<Option<Granted>, StoreError> {
        let mut tx = self.begin().await?;
        let lock = match self.backend {
            Backend::Postgres => "SELECT id FROM runs WHERE id = $1 FOR UPDATE",
            Backend::Sqlite => "SELECT id FROM runs WHERE id = $1",
        };
        if sqlx::query(lock).bind(run).fetch_optional(&mut *tx).await?.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(&format!("SELECT {LEASE_COLUMNS} FROM budget_leases WHERE run_id = $1"))
            .bind(run)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(lease_row)
            .collect::<Result<Vec<_>, _>>()?;
        let granted = grant(limits, &rows, request);
        let (h, c) = (&granted.held, &request.committed);
        sqlx::query(
            "INSERT INTO budget_leases (run_id, holder, tokens, cost_micro_usd, calls, committed_tokens, \
             committed_cost_micro_usd, committed_calls, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (run_id, holder) DO UPDATE SET tokens = $3, cost_micro_usd = $4, calls = $5, \
             committed_tokens = $6, committed_cost_micro_usd = $7, committed_calls = $8, updated_at = $9",
        )
        .bind(run)
        .bind(&request.holder)
        .bind(to_i64(h.tokens))
        .bind(to_i64(h.cost_micro_usd))
        .bind(to_i64(h.calls))
        .bind(to_i64(c.tokens))
        .bind(to_i64(c.cost_micro_usd))
        .bind(to_i64(c.calls))
        .bind(now_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(granted))
    }

    /// The lease rows of a run, by holder.
    pub async fn leases(&self, run: &str) -> Result<Vec<LeaseRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {LEASE_COLUMNS} FROM budget_leases WHERE run_id = $1 ORDER BY holder"))
            .bind(run)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(lease_row).collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use fleetforge_trust::wire::{Held, LeaseRequest, Slice};

    use super::{LeaseRow, grant};

    fn row(holder: &str, tokens: u64, committed: u64) -> LeaseRow {
        LeaseRow {
            holder: holder.into(),
            held: Slice { tokens, ..Slice::default() },
            committed: Slice { tokens: committed, ..Slice::default() },
            updated_at: 0,
        }
    }

    fn ask(holder: &str, committed: u64, want: u64, release: bool) -> LeaseRequest {
        LeaseRequest {
            holder: holder.into(),
            committed: Slice { tokens: committed, ..Slice::default() },
            want: Slice { tokens: want, calls: 1, ..Slice::default() },
            release,
        }
    }

    #[test]
    fn holders_together_never_hold_more_than_the_limit() {
        let limits = Held { tokens: Some(1000), ..Held::default() };
        let rows = vec![row("a", 600, 100)];
        let g = grant(&limits, &rows, &ask("b", 0, 500, false));
        assert_eq!(g.held.tokens, 400, "only what a does not hold");
        assert_eq!(g.leased.tokens, 1000);
        let rows = vec![row("a", 600, 100), row("b", 400, 0)];
        assert_eq!(grant(&limits, &rows, &ask("b", 0, 10, false)).held.tokens, 400, "nothing left to add");
        // Unlimited members are not held.
        assert_eq!(g.held.calls, 0);
    }

    #[test]
    fn a_release_keeps_what_was_committed_and_frees_the_rest() {
        let limits = Held { tokens: Some(1000), ..Held::default() };
        let rows = vec![row("a", 600, 100), row("b", 400, 0)];
        let g = grant(&limits, &rows, &ask("a", 150, 0, true));
        assert_eq!(g.held.tokens, 150);
        assert_eq!(g.leased.tokens, 550);
        // What a freed, b can now take.
        let rows = vec![row("a", 150, 150), row("b", 400, 0)];
        assert_eq!(grant(&limits, &rows, &ask("b", 0, 1000, false)).held.tokens, 850);
    }

    #[test]
    fn a_holder_that_committed_more_than_it_held_holds_its_commitment() {
        let limits = Held { tokens: Some(1000), ..Held::default() };
        let rows = vec![row("a", 100, 0), row("b", 900, 0)];
        let g = grant(&limits, &rows, &ask("a", 130, 50, false));
        assert_eq!(g.held.tokens, 130, "no more is granted, and the spend shows");
        assert_eq!(g.leased.tokens, 1030);
    }
}
