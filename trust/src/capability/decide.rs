//! The authorizer's decision for one call, without rebuilding the token's world per call.
//!
//! biscuit-auth's `AuthorizerBuilder::build` decodes every block of the token, translates each
//! block's symbols into a fresh table (cloning the token's table per block) and loads its facts,
//! rules and checks into a new Datalog world, on every call; its API cannot add facts to an
//! authorizer once built. That rebuild is most of a first decision's cost.
//!
//! A [`CompiledToken`] loads the token once per verified run token: the token's facts and rules
//! sit in a world keyed by the token's own symbol table (so nothing needs translating), with the
//! checks and trusted origins `Authorizer::authorize` would compute. Per call it clones that world
//! and table, adds the call's facts at the authorizer's origin, runs the world with the same
//! limits, and evaluates the same checks and the same `allow if run(…)` policy in the same order,
//! reporting failures with the same block ids and printed rules. Tokens it cannot load this way
//! (third-party blocks, `trusting` scopes, invalid rules) are left to biscuit-auth, which then
//! reports what is wrong. `tests.rs` compares both paths' decisions and errors across grants,
//! offline attenuations, per-call tokens and calls.

use std::collections::HashMap;

use biscuit_auth::builder::CheckKind;
use biscuit_auth::datalog::{Check, Fact, Origin, Predicate, Rule, SymbolTable, Term, TrustedOrigins, World};
use biscuit_auth::error::{FailedBlockCheck, FailedCheck, Logic, Token};
use biscuit_auth::format::{convert, schema};
use prost::Message;

use super::{CallFacts, CapabilityError, describe, limits, unix};

/// Origin index of facts the authorizer supplies (biscuit-auth's convention).
const AUTHORIZER: usize = usize::MAX;

/// One check of a token block, with the origins its queries trust.
struct BlockCheck {
    block: usize,
    index: usize,
    check: Check,
    trusted: TrustedOrigins,
}

/// Symbols of the call facts' predicates, interned once.
struct Names {
    time: u64,
    host: u64,
    method: u64,
    path: u64,
    step: u64,
    model: u64,
    no_model: u64,
    run: u64,
    query: u64,
}

/// A run token's Datalog, loaded once: see the module documentation.
pub(super) struct CompiledToken {
    symbols: SymbolTable,
    world: World,
    checks: Vec<BlockCheck>,
    names: Names,
    /// The origin of the call's facts, and what the policy trusts (authority and authorizer).
    authorizer: Origin,
    authorizer_trusts: TrustedOrigins,
}

impl std::fmt::Debug for CompiledToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledToken").field("checks", &self.checks.len()).finish_non_exhaustive()
    }
}

impl CompiledToken {
    /// Loads `token`'s blocks, or `None` when it uses features this path does not reproduce
    /// (the caller then authorizes with biscuit-auth).
    pub(super) fn new(token: &biscuit_auth::Biscuit) -> Option<Self> {
        let proto = token.container().to_proto();
        let mut symbols = SymbolTable::new();
        let mut world = World::new();
        let mut checks = Vec::new();
        let no_keys = HashMap::new();
        for (i, signed) in std::iter::once(&proto.authority).chain(&proto.blocks).enumerate() {
            if signed.external_signature.is_some() {
                return None;
            }
            let block = schema::Block::decode(signed.block.as_slice()).ok()?;
            let block = convert::proto_block_to_token_block(&block, None).ok()?;
            // First-party blocks extend the token's table; their indexes are valid in it as is.
            symbols.extend(&block.symbols).ok()?;
            let scoped = |rule: &Rule| !rule.scopes.is_empty();
            if !block.scopes.is_empty()
                || block.rules.iter().any(scoped)
                || block.checks.iter().any(|c| c.queries.iter().any(scoped))
            {
                return None;
            }
            // What `TrustedOrigins::from_scopes` gives an unscoped block (the authority block, the
            // authorizer and the block itself), as biscuit-auth computes it both when it loads the
            // block's rules and when it runs the block's checks.
            let block_trusts = TrustedOrigins::from_scopes(&[], &TrustedOrigins::default(), i, &no_keys);
            let origin: Origin = [i].into_iter().collect();
            for fact in block.facts {
                world.add_fact(&origin, fact);
            }
            for rule in block.rules {
                rule.validate_variables(&symbols).ok()?;
                world.add_rule(i, &TrustedOrigins::from_scopes(&[], &block_trusts, i, &no_keys), rule);
            }
            for (index, check) in block.checks.into_iter().enumerate() {
                let trusted = TrustedOrigins::from_scopes(&[], &block_trusts, i, &no_keys);
                checks.push(BlockCheck { block: i, index, check, trusted });
            }
        }
        let mut name = |s: &str| symbols.insert(s);
        let names = Names {
            time: name("time"),
            host: name("host"),
            method: name("method"),
            path: name("path"),
            step: name("step"),
            model: name("model"),
            no_model: name("no_model"),
            run: name("run"),
            query: name("query"),
        };
        let authorizer = [AUTHORIZER].into_iter().collect();
        let authorizer_trusts = TrustedOrigins::from_scopes(&[], &TrustedOrigins::default(), AUTHORIZER, &no_keys);
        Some(Self { symbols, world, checks, names, authorizer, authorizer_trusts })
    }

    /// The decision `super::authorize` reaches for `call` with `run` as the run the call claims.
    pub(super) fn authorize(&self, run: &str, call: &CallFacts<'_>) -> Result<(), CapabilityError> {
        self.decide(run, call).map_err(|e| describe(&e))
    }

    fn decide(&self, run: &str, call: &CallFacts<'_>) -> Result<(), Token> {
        let n = &self.names;
        let mut symbols = self.symbols.clone();
        let mut world = self.world.clone();
        let host = Term::Str(symbols.insert(&call.host.to_ascii_lowercase()));
        let method = Term::Str(symbols.insert(&call.method.to_ascii_uppercase()));
        let path = Term::Str(symbols.insert(call.path));
        let step = Term::Integer(i64::try_from(call.step).unwrap_or(i64::MAX));
        let model = match call.model {
            Some(model) => Fact::new(n.model, &[Term::Str(symbols.insert(model))]),
            None => Fact::new(n.no_model, &[Term::Bool(true)]),
        };
        for fact in [
            Fact::new(n.time, &[Term::Date(unix(call.now))]),
            Fact::new(n.host, &[host]),
            Fact::new(n.method, &[method]),
            Fact::new(n.path, &[path]),
            Fact::new(n.step, &[step]),
            model,
        ] {
            world.add_fact(&self.authorizer, fact);
        }
        let limits = limits();
        world.run_with_limits(&symbols, limits.clone())?;
        // `Authorizer::authorize_with_limits` gives the checks a fresh time budget.
        let deadline = std::time::Instant::now() + limits.max_time;

        let policy = Rule {
            head: Predicate::new(n.query, &[]),
            body: vec![Predicate::new(n.run, &[Term::Str(symbols.insert(run))])],
            expressions: vec![],
            scopes: vec![],
        };

        let mut failed = Vec::new();
        // Order as biscuit-auth's: the authority block's checks, the policy, later blocks' checks
        // (`checks` is in block order, so the authority's are a prefix).
        let (authority, later) = self.checks.split_at(self.checks.partition_point(|c| c.block == 0));
        for c in authority {
            self.check(&world, &symbols, c, deadline, &mut failed)?;
        }
        let allowed = world.query_match(policy, AUTHORIZER, &self.authorizer_trusts, &symbols)?;
        timed_out(deadline)?;
        for c in later {
            self.check(&world, &symbols, c, deadline, &mut failed)?;
        }
        match (allowed, failed.is_empty()) {
            (true, true) => Ok(()),
            (false, _) => Err(Token::FailedLogic(Logic::NoMatchingPolicy { checks: failed })),
            (true, false) => Err(Token::FailedLogic(Logic::Unauthorized {
                policy: biscuit_auth::error::MatchedPolicy::Allow(0),
                checks: failed,
            })),
        }
    }

    fn check(
        &self,
        world: &World,
        symbols: &SymbolTable,
        c: &BlockCheck,
        deadline: std::time::Instant,
        failed: &mut Vec<FailedCheck>,
    ) -> Result<(), Token> {
        let mut successful = false;
        for query in &c.check.queries {
            let matched = match c.check.kind {
                CheckKind::One => world.query_match(query.clone(), c.block, &c.trusted, symbols)?,
                CheckKind::All => world.query_match_all(query.clone(), &c.trusted, symbols)?,
                CheckKind::Reject => !world.query_match(query.clone(), c.block, &c.trusted, symbols)?,
            };
            timed_out(deadline)?;
            if matched {
                successful = true;
                break;
            }
        }
        if !successful {
            failed.push(FailedCheck::Block(FailedBlockCheck {
                block_id: c.block as u32,
                check_id: c.index as u32,
                rule: symbols.print_check(&c.check),
            }));
        }
        Ok(())
    }
}

fn timed_out(deadline: std::time::Instant) -> Result<(), Token> {
    if std::time::Instant::now() >= deadline {
        return Err(Token::RunLimit(biscuit_auth::error::RunLimit::Timeout));
    }
    Ok(())
}
