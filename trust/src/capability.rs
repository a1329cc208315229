//! Capability tokens: Biscuit run tokens, per-call attenuation, and offline verification.
//!
//! Control mints a **run token** signed by its root key: the authority block names the run,
//! tenant, agent and expiry, and turns the run's grants (hosts, methods, path prefixes, models)
//! into checks. The proxy verifies that token once (cached), then for every call appends a block
//! bound to that call — host, method, path, model, step and a short expiry — and authorizes the
//! call's facts against the result. Tools receive that per-call token and can check it offline
//! with the root public key ([`verify_for_call`]): it is valid for exactly that call.
//!
//! Facts the authorizer supplies, per call: `time`, `host`, `method`, `path`, `step`, and
//! `model(M)` or `no_model(true)`. Checks in the authority block see only the authority block and
//! these facts, so an attenuation block can narrow a token but never widen it.
//!
//! Grant patterns: a host or model `*` allows all; `*.example.com` allows subdomains (suffix);
//! `gpt-4o*` allows a prefix; anything else is exact. Paths are prefixes. An empty list puts no
//! restriction on that dimension.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use biscuit_auth::builder::{BlockBuilder, Term};
use biscuit_auth::datalog::RunLimits;
use biscuit_auth::macros::{authorizer, block};
use biscuit_auth::{AuthorizerBuilder, Biscuit, KeyPair, PublicKey, RootKeyProvider, UnverifiedBiscuit};

use crate::text::{hex, rfc3339_from_unix_secs as rfc3339};

/// Why a token was refused or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// Not a Biscuit, bad signature, or signed by a root key this verifier does not know.
    #[error("the capability token is not valid: {0}")]
    Invalid(String),
    /// The token names no root key this verifier knows.
    #[error("the capability token is signed by root key {0:?}, which is not known here")]
    UnknownKey(Option<u32>),
    /// A well-formed token that lacks a required fact.
    #[error("the capability token has no {0} fact")]
    Missing(&'static str),
    /// The token has expired.
    #[error("the capability token expired at {0}")]
    Expired(String),
    /// The token is for another run.
    #[error("the capability token is for run {token_run}, not {presented}")]
    WrongRun {
        /// The run in the token.
        token_run: String,
        /// The run the call claimed.
        presented: String,
    },
    /// The token does not authorize this call; the message lists the failed checks.
    #[error("the capability token does not allow this call: {0}")]
    Denied(String),
    /// A grant or parameter that cannot be expressed.
    #[error("invalid capability parameter: {0}")]
    Parameter(String),
}

impl CapabilityError {
    /// Whether the token itself is bad (407) rather than out of scope for the call (403).
    pub fn is_authentication(&self) -> bool {
        !matches!(self, CapabilityError::Denied(_))
    }
}

/// What a run may do.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grants {
    /// Hosts (`*`, `*.example.com`, exact).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// HTTP methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path prefixes.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Models (`*`, `gpt-4o*`, exact).
    #[serde(default)]
    pub models: Vec<String>,
    /// Token budget of the run: input + output tokens of all its LLM calls (the proxy's meter
    /// phase enforces it, like every member of the run's [`Budget`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// The rest of the run's budget.
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub budget: Budget,
}

/// A run's budget beyond its token ceiling ([`Grants::max_tokens`]), carried in the run token's
/// authority block so that any proxy can enforce it offline. Each member unset = unlimited.
/// Attenuation blocks cannot change it (the proxy reads these facts from the authority block
/// only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Budget {
    /// Cost ceiling, millionths of a US dollar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micro_usd: Option<u64>,
    /// Calls the run may make (every call the proxy forwards, LLM or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    /// Unix seconds after which the run may make no more calls (its wall-time budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
    /// Rate SLO: LLM tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Rate SLO: calls per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_per_minute: Option<u64>,
}

impl Budget {
    /// Whether no member is set.
    pub fn is_empty(&self) -> bool {
        *self == Budget::default()
    }

    /// The Datalog facts of the set members, as `(fact, value)`.
    fn facts(&self) -> [(&'static str, Option<u64>); 5] {
        [
            ("budget_cost", self.cost_micro_usd),
            ("budget_calls", self.calls),
            ("budget_deadline", self.deadline),
            ("budget_tokens_per_minute", self.tokens_per_minute),
            ("budget_calls_per_minute", self.calls_per_minute),
        ]
    }
}

/// The claims of a run token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunClaims {
    /// Run id.
    pub run: String,
    /// Tenant.
    pub tenant: String,
    /// Agent name, if the run has one.
    pub agent: Option<String>,
    /// Expiry, unix seconds.
    pub expires: u64,
    /// What the run may do.
    pub grants: Grants,
}

/// One call, as the authorizer sees it. The per-call block pins host, method, path and model
/// (or their absence) and a short expiry; the step is recorded in it as `call_step`.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    /// Upstream host.
    pub host: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Request path (without query).
    pub path: &'a str,
    /// Model, when the body names one.
    pub model: Option<&'a str>,
    /// Step within the run.
    pub step: u64,
    /// Now.
    pub now: SystemTime,
}

/// Now, unix seconds.
pub fn unix_now() -> u64 {
    unix(SystemTime::now())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Limits for every authorizer run: generous for debug builds, still bounded.
fn limits() -> RunLimits {
    RunLimits { max_facts: 1000, max_iterations: 100, max_time: Duration::from_millis(50) }
}

fn invalid(e: impl std::fmt::Display) -> CapabilityError {
    CapabilityError::Invalid(e.to_string())
}

/// Datalog for one grant dimension: `check if F($x), <alternatives>` or nothing when unrestricted.
fn grant_check(
    fact: &str,
    patterns: &[String],
    prefix_only: bool,
    params: &mut HashMap<String, Term>,
    extra: Option<&str>,
) -> Result<Option<String>, CapabilityError> {
    if patterns.is_empty() || patterns.iter().any(|p| p == "*") {
        return Ok(None);
    }
    let mut alternatives = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        if p.is_empty() || p.contains('"') {
            return Err(CapabilityError::Parameter(format!("{fact} pattern {p:?} is empty or contains a quote")));
        }
        let name = format!("{fact}_{i}");
        let expr = if prefix_only {
            params.insert(name.clone(), Term::Str(p.clone()));
            format!("$x.starts_with({{{name}}})")
        } else if let Some(suffix) = p.strip_prefix('*') {
            params.insert(name.clone(), Term::Str(suffix.to_owned()));
            format!("$x.ends_with({{{name}}})")
        } else if let Some(prefix) = p.strip_suffix('*') {
            params.insert(name.clone(), Term::Str(prefix.to_owned()));
            format!("$x.starts_with({{{name}}})")
        } else {
            let exact = if fact == "method" { p.to_ascii_uppercase() } else { p.to_ascii_lowercase() };
            params.insert(name.clone(), Term::Str(if fact == "model" { p.clone() } else { exact }));
            format!("$x == {{{name}}}")
        };
        alternatives.push(format!("{fact}($x), {expr}"));
    }
    if let Some(extra) = extra {
        alternatives.push(extra.to_owned());
    }
    Ok(Some(format!("check if {};", alternatives.join(" or "))))
}

/// The checks for every restricted dimension of `g`, one per line.
fn grant_checks(g: &Grants, params: &mut HashMap<String, Term>) -> Result<String, CapabilityError> {
    let mut code = String::new();
    for check in [
        grant_check("host", &g.hosts, false, params, None)?,
        grant_check("method", &g.methods, false, params, None)?,
        grant_check("path", &g.paths, true, params, None)?,
        grant_check("model", &g.models, false, params, Some("no_model(true)"))?,
    ]
    .into_iter()
    .flatten()
    {
        code.push_str(&check);
        code.push('\n');
    }
    Ok(code)
}

/// A freshly minted run token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The token, base64url.
    pub token: String,
    /// Its id: the revocation id of the authority block, hex.
    pub id: String,
}

/// Mints a run token with `root` (root key id `key_id`).
pub fn mint(root: &KeyPair, key_id: u32, claims: &RunClaims) -> Result<Minted, CapabilityError> {
    let mut params: HashMap<String, Term> = HashMap::new();
    params.insert("run".into(), Term::Str(claims.run.clone()));
    params.insert("tenant".into(), Term::Str(claims.tenant.clone()));
    params.insert("expires".into(), Term::Date(claims.expires));
    let mut code = String::from("run({run});\ntenant({tenant});\nexpires({expires});\n");
    code.push_str("check if time($t), $t <= {expires};\n");
    if let Some(agent) = &claims.agent {
        params.insert("agent".into(), Term::Str(agent.clone()));
        code.push_str("agent({agent});\n");
    }
    if let Some(max) = claims.grants.max_tokens {
        params.insert("max_tokens".into(), Term::Integer(i64::try_from(max).unwrap_or(i64::MAX)));
        code.push_str("max_tokens({max_tokens});\n");
    }
    for (fact, value) in claims.grants.budget.facts() {
        if let Some(value) = value {
            params.insert(fact.into(), Term::Integer(i64::try_from(value).unwrap_or(i64::MAX)));
            code.push_str(&format!("{fact}({{{fact}}});\n"));
        }
    }
    code.push_str(&grant_checks(&claims.grants, &mut params)?);
    let token = Biscuit::builder()
        .code_with_params(&code, params, HashMap::new())
        .map_err(invalid)?
        .root_key_id(key_id)
        .build(root)
        .map_err(invalid)?;
    let id = token.revocation_identifiers().first().map(|id| hex(id)).unwrap_or_default();
    Ok(Minted { token: token.to_base64().map_err(invalid)?, id })
}

/// Root public keys by id.
#[derive(Debug, Clone, Default)]
pub struct RootKeys {
    keys: HashMap<u32, PublicKey>,
}

impl RootKeys {
    /// Adds a root public key (32 bytes, ed25519).
    pub fn insert(&mut self, id: u32, public_key: &[u8]) -> Result<(), CapabilityError> {
        let key = PublicKey::from_bytes(public_key, biscuit_auth::Algorithm::Ed25519).map_err(invalid)?;
        self.keys.insert(id, key);
        Ok(())
    }

    /// Whether a key with this id is known.
    pub fn contains(&self, id: u32) -> bool {
        self.keys.contains_key(&id)
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No keys at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl RootKeyProvider for &RootKeys {
    fn choose(&self, key_id: Option<u32>) -> Result<PublicKey, biscuit_auth::error::Format> {
        key_id.and_then(|id| self.keys.get(&id).copied()).ok_or(biscuit_auth::error::Format::UnknownPublicKey)
    }
}

/// The root key id a token names, read without verifying anything (to refresh keys on a miss).
pub fn root_key_id(token: &str) -> Option<u32> {
    UnverifiedBiscuit::from_base64(token.trim()).ok().and_then(|t| t.root_key_id())
}

/// A verified run token, ready to attenuate per call.
#[derive(Debug, Clone)]
pub struct RunToken {
    biscuit: Biscuit,
    /// Run id.
    pub run: String,
    /// Tenant.
    pub tenant: String,
    /// Agent, if any.
    pub agent: Option<String>,
    /// Expiry, unix seconds.
    pub expires: u64,
    /// Revocation ids of every block, hex, authority first: revoking any of them revokes the token.
    pub revocation_ids: Vec<String>,
    /// The run's token budget (`max_tokens`), from the authority block.
    pub max_tokens: Option<u64>,
    /// The rest of the run's budget, from the authority block.
    pub budget: Budget,
    /// Signs per-call blocks with the keys derived once (`None`: biscuit-auth's append is used).
    minter: Option<Arc<mint::CallMinter>>,
    /// The token's Datalog, loaded once (`None`: biscuit-auth's authorizer is used).
    compiled: Option<Arc<decide::CompiledToken>>,
}

impl RunToken {
    /// Verifies `token`'s signatures against `roots` and reads its claims. Expensive (one
    /// signature check per block): cache the result per token.
    pub fn verify(token: &str, roots: &RootKeys) -> Result<Self, CapabilityError> {
        let biscuit = Biscuit::from_base64(token.trim(), roots).map_err(|e| match e {
            biscuit_auth::error::Token::Format(biscuit_auth::error::Format::UnknownPublicKey) => {
                CapabilityError::UnknownKey(root_key_id(token))
            }
            other => invalid(other),
        })?;
        let mut authorizer = AuthorizerBuilder::new().set_limits(limits()).build(&biscuit).map_err(invalid)?;
        let one = |a: &mut biscuit_auth::Authorizer, rule: &str| -> Option<Term> {
            let facts: Vec<biscuit_auth::builder::Fact> = a.query_with_limits(rule, limits()).ok()?;
            facts.first().and_then(|f| f.predicate.terms.first().cloned())
        };
        let text = |t: Option<Term>| match t {
            Some(Term::Str(s)) => Some(s),
            _ => None,
        };
        let run = text(one(&mut authorizer, "data($x) <- run($x)")).ok_or(CapabilityError::Missing("run"))?;
        let tenant = text(one(&mut authorizer, "data($x) <- tenant($x)")).ok_or(CapabilityError::Missing("tenant"))?;
        let agent = text(one(&mut authorizer, "data($x) <- agent($x)"));
        let expires = match one(&mut authorizer, "data($x) <- expires($x)") {
            Some(Term::Date(d)) => d,
            _ => return Err(CapabilityError::Missing("expires")),
        };
        let mut count = |fact: &str| match one(&mut authorizer, &format!("data($x) <- {fact}($x)")) {
            Some(Term::Integer(n)) => u64::try_from(n).ok(),
            _ => None,
        };
        let max_tokens = count("max_tokens");
        let budget = Budget {
            cost_micro_usd: count("budget_cost"),
            calls: count("budget_calls"),
            deadline: count("budget_deadline"),
            tokens_per_minute: count("budget_tokens_per_minute"),
            calls_per_minute: count("budget_calls_per_minute"),
        };
        let revocation_ids = biscuit.revocation_identifiers().iter().map(|id| hex(id)).collect();
        let minter = mint::CallMinter::new(&biscuit).map(Arc::new);
        let compiled = decide::CompiledToken::new(&biscuit).map(Arc::new);
        Ok(Self { biscuit, run, tenant, agent, expires, revocation_ids, max_tokens, budget, minter, compiled })
    }

    /// The token's id: the revocation id of its authority block.
    pub fn id(&self) -> &str {
        self.revocation_ids.first().map_or("", String::as_str)
    }

    /// Checks expiry and run and authorizes the call's facts against the token, without minting
    /// a per-call token: the decision is the same as [`RunToken::authorize_call`]'s (a block bound
    /// to this very call only adds checks the call satisfies), at a fraction of the cost (no
    /// ed25519 key generation and signature). For calls whose upstream receives no token.
    pub fn authorize(&self, presented_run: &str, call: &CallFacts<'_>) -> Result<(), CapabilityError> {
        self.check_claims(presented_run, call.now)?;
        match &self.compiled {
            Some(compiled) => compiled.authorize(presented_run, call),
            None => authorize(&self.biscuit, presented_run, call),
        }
    }

    /// Expiry and run, checked natively before any Datalog.
    fn check_claims(&self, presented_run: &str, now: SystemTime) -> Result<(), CapabilityError> {
        if unix(now) > self.expires {
            return Err(CapabilityError::Expired(rfc3339(self.expires)));
        }
        if self.run != presented_run {
            return Err(CapabilityError::WrongRun { token_run: self.run.clone(), presented: presented_run.to_owned() });
        }
        Ok(())
    }

    /// Checks expiry and run, authorizes the call's facts against the token, and returns the
    /// per-call token ([`RunToken::authorize`], then [`RunToken::mint_call`]).
    pub fn authorize_call(
        &self,
        presented_run: &str,
        call: &CallFacts<'_>,
        ttl: Duration,
    ) -> Result<CallToken, CapabilityError> {
        self.authorize(presented_run, call)?;
        self.mint_call(call, ttl)
    }

    /// Appends a block bound to `call` (its step recorded; its host, method, path and model
    /// required; valid `ttl` from `call.now`) and returns the per-call token. Call it only for a
    /// call [`RunToken::authorize`] allowed: the block's checks are built from the very facts the
    /// authorizer was given, so they hold for this call by construction, and the minted token
    /// authorizes exactly what the run token authorized for it (a tool re-checks it offline with
    /// [`verify_for_call`]; a token minted for a call the run token does not allow keeps every
    /// check of the run token, so it fails there). Costs one ed25519 signature and no Datalog:
    /// the key pairs are derived once per run token (`mint::CallMinter`).
    pub fn mint_call(&self, call: &CallFacts<'_>, ttl: Duration) -> Result<CallToken, CapabilityError> {
        let expires = unix(call.now) + ttl.as_secs().max(1);
        if let Some(minter) = &self.minter {
            let (token, id) = minter.mint(call, expires)?;
            return Ok(CallToken { token, id: hex(&id) });
        }
        let attenuated = self.biscuit.append(call_block(call, expires)).map_err(invalid)?;
        let id = attenuated.revocation_identifiers().last().map(|id| hex(id)).unwrap_or_default();
        Ok(CallToken { token: attenuated.to_vec().map_err(invalid)?, id })
    }
}

/// A token attenuated to one call. `Debug` shows only its id: the token carries the secret that
/// lets its holder attenuate it further.
#[derive(Clone)]
pub struct CallToken {
    /// The token, serialized.
    token: Vec<u8>,
    /// Revocation id of the call's block, hex.
    pub id: String,
}

impl std::fmt::Debug for CallToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallToken").field("id", &self.id).finish_non_exhaustive()
    }
}

impl CallToken {
    /// The token, base64url (what tools receive in `x-fleetforge-capability`).
    pub fn to_base64(&self) -> Result<String, CapabilityError> {
        Ok(base64::engine::general_purpose::URL_SAFE.encode(&self.token))
    }
}

fn call_block(call: &CallFacts<'_>, expires: u64) -> BlockBuilder {
    // Datalog compiled by the macro at build time: nothing is parsed per call.
    let host = call.host.to_ascii_lowercase();
    let method = call.method.to_ascii_uppercase();
    let path = call.path;
    let step = i64::try_from(call.step).unwrap_or(i64::MAX);
    let expires = Term::Date(expires);
    // The step is recorded, not checked: a tool verifying the token offline knows the host,
    // method and path it was called with, not the run's step counter.
    let block = block!(
        r#"
        call_step({step});
        check if host({host}), method({method}), path({path});
        check if time($t), $t <= {expires};
        "#
    );
    let model_check = match call.model {
        Some(model) => block!("check if model({model});"),
        None => block!("check if no_model(true);"),
    };
    block.merge(model_check)
}

/// Runs the authorizer for `call` on `token`, requiring it to be `run`'s.
fn authorize(token: &Biscuit, run: &str, call: &CallFacts<'_>) -> Result<(), CapabilityError> {
    // Datalog compiled by the macro at build time: nothing is parsed per call.
    let now = Term::Date(unix(call.now));
    let host = call.host.to_ascii_lowercase();
    let method = call.method.to_ascii_uppercase();
    let path = call.path;
    let step = i64::try_from(call.step).unwrap_or(i64::MAX);
    let facts = authorizer!(
        r#"
        time({now});
        host({host});
        method({method});
        path({path});
        step({step});
        allow if run({run});
        "#
    );
    let model = match call.model {
        Some(model) => authorizer!("model({model});"),
        None => authorizer!("no_model(true);"),
    };
    let mut authorizer = facts.merge(model).set_limits(limits()).build(token).map_err(invalid)?;
    authorizer.authorize_with_limits(limits()).map(|_| ()).map_err(|e| describe(&e))
}

/// A readable reason from a failed authorization: the failing checks' source.
fn describe(e: &biscuit_auth::error::Token) -> CapabilityError {
    use biscuit_auth::error::{FailedCheck, Logic, Token};
    match e {
        Token::FailedLogic(Logic::Unauthorized { checks, .. }) if !checks.is_empty() => {
            let failed: Vec<String> = checks
                .iter()
                .map(|c| match c {
                    FailedCheck::Block(b) => format!("block {}: {}", b.block_id, b.rule),
                    FailedCheck::Authorizer(a) => format!("authorizer: {}", a.rule),
                })
                .collect();
            if failed.iter().any(|f| f.contains("time($t)")) {
                return CapabilityError::Expired(failed.join("; "));
            }
            CapabilityError::Denied(failed.join("; "))
        }
        Token::FailedLogic(Logic::NoMatchingPolicy { .. }) => {
            CapabilityError::Denied("no policy matched (the token is for another run)".into())
        }
        other => CapabilityError::Denied(other.to_string()),
    }
}

/// Offline check a tool runs: `token` (base64url) verifies against `roots` and allows exactly
/// this call now. Returns the run id.
pub fn verify_for_call(token: &str, roots: &RootKeys, call: &CallFacts<'_>) -> Result<String, CapabilityError> {
    let verified = RunToken::verify(token, roots)?;
    verified.check_claims(&verified.run, call.now)?;
    authorize(&verified.biscuit, &verified.run, call)?;
    Ok(verified.run)
}

/// Narrows `token` offline (no key needed): an extra block limiting hosts, methods, path
/// prefixes, models and lifetime, for handing a sub-agent less than you hold.
pub fn attenuate(
    token: &str,
    narrow: &Grants,
    ttl: Option<Duration>,
    now: SystemTime,
) -> Result<String, CapabilityError> {
    let unverified = UnverifiedBiscuit::from_base64(token.trim()).map_err(invalid)?;
    let mut params = HashMap::new();
    let mut code = grant_checks(narrow, &mut params)?;
    if let Some(ttl) = ttl {
        params.insert("ttl_expires".into(), Term::Date(unix(now) + ttl.as_secs()));
        code.push_str("check if time($t), $t <= {ttl_expires};\n");
    }
    if code.is_empty() {
        return Err(CapabilityError::Parameter(
            "nothing to narrow: give at least one of hosts, methods, paths, models or a ttl".into(),
        ));
    }
    let block = BlockBuilder::new().code_with_params(&code, params, HashMap::new()).map_err(invalid)?;
    unverified.append(block).map_err(invalid)?.to_base64().map_err(invalid)
}

/// A new ed25519 root key pair: (private key bytes, public key bytes).
pub fn generate_root() -> (Vec<u8>, Vec<u8>) {
    let kp = KeyPair::new();
    (kp.private().to_bytes().to_vec(), kp.public().to_bytes())
}

/// The key pair from private key bytes (32, ed25519).
pub fn root_from_bytes(private: &[u8]) -> Result<KeyPair, CapabilityError> {
    let key = biscuit_auth::PrivateKey::from_bytes(private, biscuit_auth::Algorithm::Ed25519).map_err(invalid)?;
    Ok(KeyPair::from(&key))
}

mod decide;
mod mint;

#[cfg(test)]
mod tests;
