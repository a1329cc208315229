//! SCITT: control's signed statements about runs and receipts, the registration of statements
//! others sign, and the worker that emits a statement when a run ends.
//!
//! Control signs with its newest capability root key; a statement's CWT `iss` is that key's
//! `did:key` (so a verifier reads the key from the statement itself) and `kid` its key id in
//! `GET /v1/keys`. A run statement's payload ([`RUN_CONTENT_TYPE`]) is JCS JSON:
//! `{type: "fleetforge.run-statement/v1", tenant, run, reason, ended_at, receipts,
//! receipts_root, lanes: [{lane, seq, head}], log: {origin, size, root}}` where `receipts_root`
//! is the RFC 9162 tree head over the run's receipt hashes in chain order (lane, then seq).
//!
//! Every statement is registered: appended to its tenant's transparency log (leaf data =
//! SHA-256 of the COSE bytes, which is the statement's id) in the transaction that stores it.

use std::sync::Arc;

use fleetforge_trust::canonical::{hex, sha256, to_canonical, unhex32};
use fleetforge_trust::merkle::{Hash, Tree};
use fleetforge_trust::scitt::{self, Claims, RECEIPT_CONTENT_TYPE, RUN_CONTENT_TYPE};
use fleetforge_trust::text::rfc3339_from_unix_micros as rfc3339;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::capability::KeyRing;
use crate::config;
use crate::store::{IngestTx, NewStatement, StatementRow, Store, StoreError, log_origin, now_micros};

/// Outbox rows claimed per transaction.
const CLAIM: i64 = 16;
/// Idle runs ended per pass.
const IDLE_BATCH: i64 = 500;

/// Why a statement could not be issued or registered.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// No key can sign.
    #[error("no capability root key can sign statements")]
    NoKey,
    /// The subject cannot be stated (unknown, pruned).
    #[error("{0}")]
    Refused(String),
}

/// What issuing statements and the worker need of the running service (the API's state).
pub trait Service: Send + Sync + 'static {
    /// The database.
    fn store(&self) -> &Store;
    /// The capability root keys; the newest signs statements.
    fn roots(&self) -> &KeyRing;
    /// The worker's wake-up.
    fn wake(&self) -> &Wake;
    /// Counts statements the worker emitted.
    fn emitted(&self, n: u64);
}

/// Wakes the statement worker (a run was closed).
#[derive(Debug, Default)]
pub struct Wake(Notify);

impl Wake {
    /// Wakes the worker now instead of at its next pass.
    pub fn now(&self) {
        self.0.notify_one();
    }
}

/// The signer: control's newest root key, its id and its `did:key`.
struct Signer {
    pair: ring::signature::Ed25519KeyPair,
    kid: String,
    iss: String,
}

fn signer(roots: &KeyRing) -> Result<Signer, IssueError> {
    let root = roots.newest().ok_or(IssueError::NoKey)?;
    let pair = root.ring().ok_or(IssueError::NoKey)?;
    Ok(Signer { pair, kid: root.key_id(), iss: fleetforge_trust::vc::did_key(&root.public_array()) })
}

fn now_secs() -> i64 {
    now_micros() / 1_000_000
}

fn canonical(v: &Value) -> Result<Vec<u8>, IssueError> {
    to_canonical(v).map_err(|e| IssueError::Refused(format!("cannot encode the statement: {e}")))
}

/// The `receipts_root` of a run statement: the RFC 9162 head over its receipt hashes.
pub fn receipts_root(hashes: &[Hash]) -> Hash {
    if hashes.is_empty() { sha256(b"") } else { Tree::new(hashes).root() }
}

async fn register(tx: &mut IngestTx, s: &NewStatement<'_>) -> Result<StatementRow, IssueError> {
    let index = tx.register_statement(s).await?;
    Ok(StatementRow {
        id: hex(&s.id),
        tenant: s.tenant.to_owned(),
        kind: s.kind.to_owned(),
        subject: s.subject.to_owned(),
        run_id: s.run_id.map(str::to_owned),
        issuer: s.issuer.to_owned(),
        content_type: s.content_type.map(str::to_owned),
        receipts: s.receipts,
        cose: s.cose.to_vec(),
        log_index: index,
        created_at: now_micros(),
    })
}

/// Issues and registers the statement of run `run` (tenant `tenant`) in `tx`, unless the newest
/// one already covers the same receipts: then that one. `reason` is why it is issued (`closed`,
/// `idle` or `requested`).
pub async fn issue_run(
    app: &impl Service,
    tx: &mut IngestTx,
    tenant: &str,
    run: &str,
    reason: &str,
) -> Result<(StatementRow, bool), IssueError> {
    let chain = tx.run_chain(run).await?;
    let hashes = chain
        .iter()
        .map(|l| unhex32(&l.hash).ok_or_else(|| StoreError::Corrupt(format!("receipt {} hash {:?}", l.id, l.hash))))
        .collect::<Result<Vec<_>, _>>()?;
    let root = hex(&receipts_root(&hashes));
    let subject = format!("run:{run}");
    if let Some(last) = tx.latest_statement("run", &subject).await? {
        let same = scitt::parse_statement(&last.cose)
            .ok()
            .and_then(|s| s.payload)
            .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
            .is_some_and(|p| p["receipts_root"] == root.as_str() && p["receipts"] == chain.len());
        if same {
            return Ok((last, false));
        }
    }
    let mut lanes: Vec<Value> = Vec::new();
    for (i, l) in chain.iter().enumerate() {
        if chain.get(i + 1).is_none_or(|next| next.lane != l.lane) {
            lanes.push(json!({ "lane": l.lane, "seq": l.seq, "head": l.hash }));
        }
    }
    let (size, log_root) = tx.log_head_in_tx(tenant).await?;
    let payload = canonical(&json!({
        "type": "fleetforge.run-statement/v1",
        "tenant": tenant,
        "run": run,
        "reason": reason,
        "ended_at": rfc3339(now_micros()),
        "receipts": chain.len(),
        "receipts_root": root,
        "lanes": lanes,
        "log": { "origin": log_origin(tenant), "size": size, "root": log_root },
    }))?;
    let receipts = i64::try_from(chain.len()).unwrap_or(i64::MAX);
    let row =
        sign_and_register(app, tx, tenant, ("run", &subject), run, (RUN_CONTENT_TYPE, &payload), receipts).await?;
    Ok((row, true))
}

/// Signs `payload` as a statement of `kind` about `subject` (run `run`) and registers it.
async fn sign_and_register(
    app: &impl Service,
    tx: &mut IngestTx,
    tenant: &str,
    (kind, subject): (&str, &str),
    run: &str,
    (content_type, payload): (&str, &[u8]),
    receipts: i64,
) -> Result<StatementRow, IssueError> {
    let s = signer(app.roots())?;
    let claims = Claims { iss: s.iss.clone(), sub: subject.to_owned(), iat: Some(now_secs()) };
    let cose = scitt::sign_statement(payload, content_type, &claims, &s.kid, &s.pair);
    let statement = NewStatement {
        id: sha256(&cose),
        tenant,
        kind,
        subject,
        run_id: Some(run),
        issuer: &s.iss,
        content_type: Some(content_type),
        receipts: Some(receipts),
        cose: &cose,
    };
    register(tx, &statement).await
}

/// Issues and registers the statement of one receipt (its stored JSON as the payload), unless
/// one exists: then that one.
pub async fn issue_receipt(
    app: &impl Service,
    tx: &mut IngestTx,
    tenant: &str,
    run: &str,
    receipt: &str,
    body: &str,
) -> Result<(StatementRow, bool), IssueError> {
    let subject = format!("receipt:{receipt}");
    if let Some(last) = tx.latest_statement("receipt", &subject).await? {
        return Ok((last, false));
    }
    let row =
        sign_and_register(app, tx, tenant, ("receipt", &subject), run, (RECEIPT_CONTENT_TYPE, body.as_bytes()), 1)
            .await?;
    Ok((row, true))
}

/// Registers an external statement (already parsed and checked) in `tenant`'s log, unless it is
/// registered already: then the stored one.
pub async fn register_external(
    tx: &mut IngestTx,
    tenant: &str,
    statement: &scitt::Statement,
    bytes: &[u8],
) -> Result<(StatementRow, bool), IssueError> {
    if let Some(existing) = tx.statement(&hex(&statement.id)).await? {
        return Ok((existing, false));
    }
    let row = register(
        tx,
        &NewStatement {
            id: statement.id,
            tenant,
            kind: "external",
            subject: &statement.claims.sub,
            run_id: None,
            issuer: &statement.claims.iss,
            content_type: statement.content_type.as_deref(),
            receipts: None,
            cose: bytes,
        },
    )
    .await?;
    Ok((row, true))
}

/// Emits the statements of up to [`CLAIM`] outbox rows in one transaction; how many rows it
/// finished.
pub async fn drain_once(app: &impl Service) -> Result<usize, IssueError> {
    let (mut tx, items) = app.store().claim_outbox(CLAIM).await?;
    if items.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    for item in &items {
        let (row, _) = issue_run(app, &mut tx, &item.tenant, &item.run_id, &item.reason).await?;
        tx.finish_outbox(item.id, &row.id).await?;
    }
    tx.commit().await?;
    Ok(items.len())
}

/// The statement worker: every `interval` (or when woken), ends runs idle past `idle` and emits
/// the statements of the outbox.
pub fn spawn<S: Service>(app: Arc<S>, cfg: config::Scitt) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Some(idle) = cfg.idle {
                let before = now_micros() - i64::try_from(idle.as_micros()).unwrap_or(i64::MAX);
                match app.store().idle_runs(before, IDLE_BATCH).await {
                    Ok(runs) => {
                        for run in runs {
                            match app.store().end_run(&run, "idle").await {
                                Ok(true) => tracing::info!(run = %run, "run ended: idle past control.scitt.idle_secs"),
                                Ok(false) => {}
                                Err(e) => {
                                    tracing::error!(run = %run, error = %e, "ending an idle run failed; retried next pass")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "listing idle runs failed; retried next pass"),
                }
            }
            loop {
                match drain_once(&*app).await {
                    Ok(0) => break,
                    Ok(n) => {
                        app.emitted(n as u64);
                        tracing::debug!(statements = n, "SCITT statements emitted");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "emitting SCITT statements failed; retried next pass");
                        break;
                    }
                }
            }
            tokio::select! {
                () = app.wake().0.notified() => {}
                () = tokio::time::sleep(cfg.interval) => {}
            }
        }
    })
}
