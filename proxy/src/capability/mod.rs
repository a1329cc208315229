//! Capability tokens in the authorize phase: verify the run's Biscuit, attenuate it to this call,
//! authorize the call's facts.
//!
//! Expensive work stays off the per-call path: a run token's signatures are checked once and the
//! verified token is cached by its text; root public keys are fetched from control by the
//! [`sync`] thread (at start, every 30 s, and at once when a token names an unknown key id);
//! revocations are polled every second and checked per call with one hash lookup per block.
//! Per call: one Datalog authorization of the call's facts — remembered for single-block run
//! tokens, whose decision depends on time only through their expiry (checked on every call); for
//! tool upstreams, which receive the per-call token, also one block appended that restates the
//! allowed call's facts (one ed25519 signature, the key pairs being derived once per run token;
//! no second authorization, see `RunToken::mint_call`).
//!
//! Result: `Ok(Some(grant))` — the per-call token, its ids for the receipt, and the header value
//! for tool upstreams; `Ok(None)` when capabilities are off; or `407 proxy_auth_required` (no,
//! bad, expired, revoked or foreign token) or `403 capability_denied` (the call is out of the
//! token's scope), each recorded with a signed receipt like every refused call.

pub mod sync;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use fleetforge_trust::capability::{CallFacts, CapabilityError, RootKeys, RunToken};
use http::HeaderValue;

use crate::context::{Call, Grant};
use crate::error::{ErrorKind, Phase, ProxyError, Side};

/// Verified run tokens kept at most (the cache is cleared when it grows past this).
const CACHE_MAX: usize = 10_000;

/// The proxy's capability state.
#[derive(Debug, Default)]
pub struct Capabilities {
    roots: RwLock<Arc<RootKeys>>,
    verified: RwLock<HashMap<String, Arc<RunToken>>>,
    /// Authorization results of single-block run tokens by (token, run, host, method, path,
    /// model): those tokens' only time-dependent check is their expiry, which is checked on every
    /// call, so the rest of the decision is a pure function of these facts.
    decisions: RwLock<HashMap<String, Result<(), CapabilityError>>>,
    revoked: RwLock<HashSet<String>>,
    /// Woken to fetch root keys now (a token named an unknown key id).
    pub refresh: tokio::sync::Notify,
    /// Per-call token lifetime.
    pub call_ttl: Duration,
}

fn auth_required(message: String, reason: &str) -> ProxyError {
    ProxyError::new(ErrorKind::ProxyAuthRequired, Phase::Authorize, Side::Agent, message).with_reason(reason)
}

impl Capabilities {
    /// Empty state: no keys yet (the sync thread fetches them).
    pub fn new(call_ttl: Duration) -> Self {
        Self { call_ttl, ..Self::default() }
    }

    /// Replaces the root keys.
    pub fn set_roots(&self, roots: RootKeys) {
        *self.roots.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(roots);
    }

    /// How many root keys are loaded.
    pub fn root_count(&self) -> usize {
        self.roots.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Adds revoked ids.
    pub fn revoke(&self, ids: impl IntoIterator<Item = String>) {
        let mut set = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        set.extend(ids);
    }

    /// Whether a root key id is known.
    pub fn knows_root(&self, id: u32) -> bool {
        self.roots.read().unwrap_or_else(|e| e.into_inner()).contains(id)
    }

    /// Whether `token` has been verified already (a cache hit: no key lookup needed).
    pub fn is_verified(&self, token: &str) -> bool {
        self.verified.read().unwrap_or_else(|e| e.into_inner()).contains_key(token)
    }

    /// The verified run token for `token`, from the cache or by verifying it now.
    pub fn run_token(&self, token: &str) -> Result<Arc<RunToken>, CapabilityError> {
        if let Some(hit) = self.verified.read().unwrap_or_else(|e| e.into_inner()).get(token) {
            return Ok(hit.clone());
        }
        let roots = self.roots.read().unwrap_or_else(|e| e.into_inner()).clone();
        let verified = Arc::new(RunToken::verify(token, &roots)?);
        let mut cache = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(token.to_owned(), verified.clone());
        Ok(verified)
    }

    /// `token.authorize(run, facts)`, from the decision cache when the token allows it.
    fn decide(&self, token: &RunToken, run: &str, facts: &CallFacts<'_>) -> Result<(), CapabilityError> {
        let cacheable = token.revocation_ids.len() == 1;
        if !cacheable {
            return token.authorize(run, facts);
        }
        if fleetforge_trust::capability::unix_now() > token.expires {
            // Not cached: the expiry is the one check that depends on time.
            return token.authorize(run, facts);
        }
        let key = format!(
            "{}\0{run}\0{}\0{}\0{}\0{}",
            token.id(),
            facts.host,
            facts.method,
            facts.path,
            facts.model.unwrap_or("\u{1}")
        );
        if let Some(hit) = self.decisions.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return hit.clone();
        }
        let decision = token.authorize(run, facts);
        let mut cache = self.decisions.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, decision.clone());
        decision
    }

    fn revoked_id(&self, token: &RunToken) -> Option<String> {
        let set = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        token.revocation_ids.iter().find(|id| set.contains(*id)).cloned()
    }

    /// Checks `call` against the token it presented; `tool` says whether the upstream receives
    /// the per-call token.
    pub fn check(&self, call: &Call, tool: bool) -> Result<Grant, ProxyError> {
        let identity = call.identity.as_ref();
        let run = identity.map(|i| i.run.as_str()).unwrap_or_default();
        let Some(token) = identity.and_then(|i| i.token.as_ref()) else {
            return Err(auth_required(
                format!(
                    "run {run} presented no capability token; send it as the proxy password (HTTPS_PROXY=http://RUN_ID:RUN_TOKEN@…) or x-fleetforge-token"
                ),
                "capability_missing",
            ));
        };
        let run_token = self.run_token(token.expose()).map_err(|e| refused(&e))?;
        if let Some(id) = self.revoked_id(&run_token) {
            return Err(auth_required(
                format!("the capability token of run {run} was revoked (revocation id {id})"),
                "capability_revoked",
            ));
        }
        let target = call.target.as_ref();
        let facts = CallFacts {
            host: target.map(|t| t.host.as_str()).unwrap_or_default(),
            method: call.method.as_str(),
            path: call.path.split('?').next().unwrap_or_default(),
            model: call.model(),
            step: identity.map_or(0, |i| i.step),
            now: SystemTime::now(),
        };
        let expires = fleetforge_trust::capability::unix_now() + self.call_ttl.as_secs().max(1);
        self.decide(&run_token, run, &facts).map_err(|e| refused(&e))?;
        if !tool {
            // Nobody receives a per-call token, so none is minted: the decision is the same (see
            // `RunToken::authorize`) without an ed25519 key generation and signature per call.
            return Ok(Grant { call_token_id: None, header: None, ..grant(&run_token, expires) });
        }
        // The call is allowed; the per-call block only restates its facts (`RunToken::mint_call`).
        let per_call = run_token.mint_call(&facts, self.call_ttl).map_err(|e| refused(&e))?;
        let b64 = per_call.to_base64().map_err(|e| refused(&e))?;
        let header = HeaderValue::from_str(&b64).ok();
        Ok(Grant { call_token_id: Some(per_call.id), header, ..grant(&run_token, expires) })
    }
}

/// What every grant under `token` carries: its id, the run's budget, agent and tenant.
fn grant(token: &RunToken, expires: u64) -> Grant {
    Grant {
        token_id: token.id().to_owned(),
        call_token_id: None,
        expires,
        header: None,
        limits: crate::budget::Limits::from_token(token.max_tokens, &token.budget),
        agent: token.agent.clone(),
        tenant: token.tenant.clone(),
    }
}

/// The contract error for a refused token: 407 when the token itself is bad, 403 when the call
/// is outside its scope.
fn refused(e: &CapabilityError) -> ProxyError {
    if e.is_authentication() {
        auth_required(format!("{e}; ask the operator for a valid run token"), "capability_invalid")
    } else {
        ProxyError::new(ErrorKind::CapabilityDenied, Phase::Authorize, Side::Agent, e.to_string())
            .with_reason("capability_out_of_scope")
    }
}
