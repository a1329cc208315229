#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use super::*;

fn setup(grants: Grants) -> (RootKeys, String, KeyPair) {
    let (private, public) = generate_root();
    let root = root_from_bytes(&private).unwrap();
    let mut roots = RootKeys::default();
    roots.insert(7, &public).unwrap();
    let expires = unix(SystemTime::now()) + 3600;
    let claims =
        RunClaims { run: "run-a".into(), tenant: "acme".into(), agent: Some("planner".into()), expires, grants };
    (roots, mint(&root, 7, &claims).unwrap().token, root)
}

fn call<'a>(host: &'a str, path: &'a str, model: Option<&'a str>) -> CallFacts<'a> {
    CallFacts { host, method: "POST", path, model, step: 3, now: SystemTime::now() }
}

fn grants() -> Grants {
    Grants {
        hosts: vec!["api.openai.com".into(), "*.tools.example".into()],
        methods: vec!["POST".into(), "GET".into()],
        paths: vec!["/v1/".into()],
        models: vec!["gpt-4o*".into()],
        max_tokens: Some(1000),
        budget: Budget {
            cost_micro_usd: Some(2_500_000),
            calls: Some(40),
            deadline: None,
            tokens_per_minute: Some(600),
            calls_per_minute: None,
        },
    }
}

#[test]
fn a_run_token_verifies_and_carries_its_claims() {
    let (roots, token, _) = setup(grants());
    let t = RunToken::verify(&token, &roots).unwrap();
    assert_eq!((t.run.as_str(), t.tenant.as_str(), t.agent.as_deref()), ("run-a", "acme", Some("planner")));
    // The budget rides in the authority block and comes back whole.
    assert_eq!((t.max_tokens, t.budget), (Some(1000), grants().budget));
    let (private, _) = generate_root();
    let claims = RunClaims {
        run: "r".into(),
        tenant: "t".into(),
        agent: None,
        expires: 4_000_000_000,
        grants: Grants::default(),
    };
    let minted = mint(&root_from_bytes(&private).unwrap(), 1, &claims).unwrap();
    let mut other = RootKeys::default();
    other.insert(1, &root_from_bytes(&private).unwrap().public().to_bytes()).unwrap();
    assert_eq!(RunToken::verify(&minted.token, &other).unwrap().id(), minted.id, "mint reports the token's id");
    assert_eq!(t.revocation_ids.len(), 1);
    assert_eq!(t.id().len(), 128, "ed25519 signature, hex");
    assert_eq!(root_key_id(&token), Some(7));
}

#[test]
fn calls_in_scope_are_authorized_and_the_call_token_is_bound_to_the_call() {
    let (roots, token, _) = setup(grants());
    let t = RunToken::verify(&token, &roots).unwrap();
    let c = call("api.openai.com", "/v1/chat/completions", Some("gpt-4o-mini"));
    let per_call = t.authorize_call("run-a", &c, Duration::from_secs(60)).unwrap();
    assert_eq!(per_call.id.len(), 128);
    let b64 = per_call.to_base64().unwrap();
    // A tool verifies it offline for exactly this call…
    assert_eq!(verify_for_call(&b64, &roots, &c).unwrap(), "run-a");
    // …and not for another path, host or model.
    let other_path = call("api.openai.com", "/v1/embeddings", Some("gpt-4o-mini"));
    assert!(matches!(verify_for_call(&b64, &roots, &other_path), Err(CapabilityError::Denied(_))));
    let other_model = call("api.openai.com", "/v1/chat/completions", Some("gpt-4o"));
    assert!(matches!(verify_for_call(&b64, &roots, &other_model), Err(CapabilityError::Denied(_))));
    // The same decisions without minting a per-call token.
    t.authorize("run-a", &c).unwrap();
    t.authorize("run-a", &other_model).unwrap();
    let outside = call("api.openai.com", "/v1/chat/completions", Some("claude-3"));
    assert!(matches!(t.authorize("run-a", &outside), Err(CapabilityError::Denied(_))));
    assert!(matches!(t.authorize("run-b", &c), Err(CapabilityError::WrongRun { .. })));
    // Suffix grants.
    t.authorize_call("run-a", &call("search.tools.example", "/v1/q", None), Duration::from_secs(60)).unwrap();
}

#[test]
fn out_of_scope_calls_are_denied_naming_the_check() {
    let (roots, token, _) = setup(grants());
    let t = RunToken::verify(&token, &roots).unwrap();
    for (c, needle) in [
        (call("evil.example", "/v1/chat/completions", None), "host"),
        (call("api.openai.com", "/admin", None), "path"),
        (call("api.openai.com", "/v1/chat/completions", Some("claude-3")), "model"),
    ] {
        let err = t.authorize_call("run-a", &c, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(&err, CapabilityError::Denied(m) if m.contains(needle)), "{err}");
        assert!(!err.is_authentication());
    }
    let delete = CallFacts { method: "DELETE", ..call("api.openai.com", "/v1/files", None) };
    assert!(matches!(t.authorize_call("run-a", &delete, Duration::from_secs(60)), Err(CapabilityError::Denied(_))));
}

#[test]
fn bad_tokens_are_authentication_failures() {
    let (roots, token, _) = setup(Grants::default());
    let garbage = RunToken::verify("not-a-token", &roots).unwrap_err();
    assert!(garbage.is_authentication(), "{garbage}");
    // Signed by an unknown root.
    let (other_roots, _, _) = setup(Grants::default());
    let unknown = RunToken::verify(&token, &RootKeys::default()).unwrap_err();
    assert!(matches!(unknown, CapabilityError::UnknownKey(Some(7))), "{unknown}");
    let _ = other_roots;
    // Another run's token.
    let t = RunToken::verify(&token, &roots).unwrap();
    let err = t.authorize_call("run-b", &call("x.test", "/", None), Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, CapabilityError::WrongRun { .. }) && err.is_authentication(), "{err}");
    // A flipped byte breaks the signature.
    let mut bytes = token.clone().into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    assert!(RunToken::verify(&String::from_utf8(bytes).unwrap(), &roots).is_err());
}

#[test]
fn expired_tokens_are_refused() {
    let (private, public) = generate_root();
    let root = root_from_bytes(&private).unwrap();
    let mut roots = RootKeys::default();
    roots.insert(1, &public).unwrap();
    let past = unix(SystemTime::now()) - 10;
    let claims =
        RunClaims { run: "run-old".into(), tenant: "t".into(), agent: None, expires: past, grants: Grants::default() };
    let token = mint(&root, 1, &claims).unwrap().token;
    let t = RunToken::verify(&token, &roots).unwrap();
    let err = t.authorize_call("run-old", &call("x.test", "/", None), Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, CapabilityError::Expired(_)) && err.is_authentication(), "{err}");
    // The per-call block's own short expiry binds tools too.
    let (roots, token, _) = setup(Grants::default());
    let t = RunToken::verify(&token, &roots).unwrap();
    let c = call("x.test", "/", None);
    let b64 = t.authorize_call("run-a", &c, Duration::from_secs(5)).unwrap().to_base64().unwrap();
    let later = CallFacts { now: SystemTime::now() + Duration::from_secs(30), ..c };
    assert!(matches!(verify_for_call(&b64, &roots, &later), Err(CapabilityError::Expired(_))));
}

#[test]
fn an_appended_block_cannot_raise_the_budget() {
    let (roots, token, _) = setup(grants());
    let block = BlockBuilder::new().code("max_tokens(99999999);\nbudget_calls(99999);\nbudget_deadline(1);").unwrap();
    let raised = UnverifiedBiscuit::from_base64(&token).unwrap().append(block).unwrap().to_base64().unwrap();
    let t = RunToken::verify(&raised, &roots).unwrap();
    assert_eq!((t.max_tokens, t.budget), (Some(1000), grants().budget), "facts of later blocks are not the run's");
}

#[test]
fn offline_attenuation_narrows_and_never_widens() {
    let (roots, token, _) = setup(grants());
    let narrow = Grants { paths: vec!["/v1/chat/".into()], ..Grants::default() };
    let sub = attenuate(&token, &narrow, Some(Duration::from_secs(60)), SystemTime::now()).unwrap();
    let t = RunToken::verify(&sub, &roots).unwrap();
    assert_eq!(t.revocation_ids.len(), 2);
    t.authorize_call("run-a", &call("api.openai.com", "/v1/chat/completions", None), Duration::from_secs(5)).unwrap();
    assert!(t.authorize_call("run-a", &call("api.openai.com", "/v1/files", None), Duration::from_secs(5)).is_err());
    // Widening is impossible: the authority's host check still applies.
    let wide = Grants { hosts: vec!["*".into()], paths: vec!["/".into()], ..Grants::default() };
    let sub = attenuate(&token, &wide, None, SystemTime::now()).unwrap();
    let t = RunToken::verify(&sub, &roots).unwrap();
    assert!(t.authorize_call("run-a", &call("evil.example", "/v1/x", None), Duration::from_secs(5)).is_err());
    assert!(attenuate(&token, &Grants::default(), None, SystemTime::now()).is_err(), "nothing to narrow");
}

#[test]
fn a_minted_call_token_carries_every_block_and_verifies_for_that_call_only() {
    let (roots, token, _) = setup(grants());
    let narrow = Grants { paths: vec!["/v1/chat/".into()], ..Grants::default() };
    let sub = attenuate(&token, &narrow, None, SystemTime::now()).unwrap();
    let t = RunToken::verify(&sub, &roots).unwrap();
    let c = call("api.openai.com", "/v1/chat/completions", Some("gpt-4o-mini"));
    t.authorize("run-a", &c).unwrap();
    let minted = t.mint_call(&c, Duration::from_secs(60)).unwrap();
    let b64 = minted.to_base64().unwrap();
    // Authorized afresh as a whole (signatures, the sub-agent's narrowing, the call block): allowed.
    assert_eq!(verify_for_call(&b64, &roots, &c).unwrap(), "run-a");
    let again = RunToken::verify(&b64, &roots).unwrap();
    assert_eq!(again.revocation_ids.len(), 3);
    assert_eq!(again.revocation_ids[2], minted.id);
    let other = call("api.openai.com", "/v1/chat/other", Some("gpt-4o-mini"));
    assert!(matches!(verify_for_call(&b64, &roots, &other), Err(CapabilityError::Denied(_))));
    // Minted for a call the run token does not allow (misuse): the tool's check still refuses it.
    let outside = call("api.openai.com", "/v1/files", Some("gpt-4o-mini"));
    assert!(t.authorize("run-a", &outside).is_err());
    let b64 = t.mint_call(&outside, Duration::from_secs(60)).unwrap().to_base64().unwrap();
    assert!(matches!(verify_for_call(&b64, &roots, &outside), Err(CapabilityError::Denied(_))));
}

#[test]
fn quotes_in_grants_are_refused() {
    let (private, _) = generate_root();
    let root = root_from_bytes(&private).unwrap();
    let claims = RunClaims {
        run: "r".into(),
        tenant: "t".into(),
        agent: None,
        expires: 4_000_000_000,
        grants: Grants { hosts: vec!["a\"b".into()], ..Grants::default() },
    };
    assert!(matches!(mint(&root, 1, &claims), Err(CapabilityError::Parameter(_))));
}

/// The per-call token `mint::CallMinter` signs must be exactly what biscuit-auth's own append
/// produces for the same block and next key pair (ed25519 signatures are deterministic), for one-
/// and multi-block run tokens, with and without a model, whether the call's strings are new
/// symbols, the token's own, or biscuit's default ones.
#[test]
fn the_fast_call_block_is_byte_identical_to_biscuit_append() {
    let (roots, token, _) = setup(grants());
    let narrow = Grants { paths: vec!["/v1/chat/".into()], ..Grants::default() };
    let sub = attenuate(&token, &narrow, None, SystemTime::now()).unwrap();
    let next = KeyPair::new();
    let secret = next.private().to_bytes();
    let calls = [
        call("api.openai.com", "/v1/chat/completions", Some("gpt-4o-mini")),
        call("API.OpenAI.com", "/v1/chat/completions", None),
        // A host and path the token names (its symbols), a default symbol ("path") as the path,
        // a value repeated within the block, and a huge step.
        CallFacts {
            host: "*.tools.example",
            method: "get",
            path: "path",
            model: Some("GET"),
            step: u64::MAX,
            now: SystemTime::now(),
        },
        call("x.tools.example", "/", Some("x.tools.example")),
    ];
    for (label, text) in [("one block", &token), ("two blocks", &sub)] {
        let t = RunToken::verify(text, &roots).unwrap();
        assert!(t.minter.is_some(), "{label}: an ed25519 token gets the fast path");
        let minter = mint::CallMinter::with_next_key(&t.biscuit, &secret).unwrap();
        for c in &calls {
            let expires = unix(c.now) + 60;
            let (fast, id) = minter.mint(c, expires).unwrap();
            let slow = t.biscuit.append_with_keypair(&next, call_block(c, expires)).unwrap();
            assert_eq!(fast, slow.to_vec().unwrap(), "{label}: {c:?}");
            assert_eq!(Some(&id), slow.revocation_identifiers().last(), "{label}: {c:?}");
        }
    }
    // And the fast token is accepted by biscuit-auth as a whole, for that call only.
    let t = RunToken::verify(&token, &roots).unwrap();
    let c = call("api.openai.com", "/v1/chat/completions", Some("gpt-4o"));
    let b64 = t.mint_call(&c, Duration::from_secs(60)).unwrap().to_base64().unwrap();
    assert_eq!(verify_for_call(&b64, &roots, &c).unwrap(), "run-a");
    let other = call("api.openai.com", "/v1/chat/completions", Some("gpt-4o-mini"));
    assert!(matches!(verify_for_call(&b64, &roots, &other), Err(CapabilityError::Denied(_))));
}

#[test]
fn a_sealed_run_token_falls_back_to_biscuit_append_and_is_refused_there() {
    let (roots, token, _) = setup(grants());
    let sealed = Biscuit::from_base64(&token, &roots).unwrap().seal().unwrap().to_base64().unwrap();
    let t = RunToken::verify(&sealed, &roots).unwrap();
    assert!(t.minter.is_none());
    let c = call("api.openai.com", "/v1/chat/completions", Some("gpt-4o"));
    assert!(matches!(t.mint_call(&c, Duration::from_secs(60)), Err(CapabilityError::Invalid(_))));
}

/// Appends Datalog `code` to `token` offline (tests of Datalog the CLI does not write).
fn append_code(token: &str, code: &str) -> String {
    let block = BlockBuilder::new().code(code).unwrap();
    UnverifiedBiscuit::from_base64(token).unwrap().append(block).unwrap().to_base64().unwrap()
}

/// `decide::CompiledToken` must reach biscuit-auth's decision, with the same failed checks, for
/// every token shape the proxy sees (run tokens with and without grants, offline attenuations,
/// per-call tokens, blocks with rules, `check all` and `reject if`) and every kind of call (in and
/// out of scope on each dimension, another run, past a block's expiry).
#[test]
fn the_compiled_decision_is_biscuit_auths_decision() {
    let (roots, token, _) = setup(grants());
    let (open_roots, open, _) = setup(Grants::default());
    let now = SystemTime::now();
    let narrow = Grants { hosts: vec!["api.openai.com".into()], paths: vec!["/v1/chat/".into()], ..Grants::default() };
    let attenuated = attenuate(&token, &narrow, Some(Duration::from_secs(60)), now).unwrap();
    let run = RunToken::verify(&attenuated, &roots).unwrap();
    let minted = run
        .mint_call(&call("api.openai.com", "/v1/chat/completions", Some("gpt-4o")), Duration::from_secs(30))
        .unwrap()
        .to_base64()
        .unwrap();
    let with_rules = append_code(
        &token,
        r#"known("api.openai.com"); known("a.tools.example");
        ok($h) <- host($h), known($h);
        check if ok($h);
        reject if path($p), $p.starts_with("/v1/files");
        check all model($m), $m.starts_with("gpt-4o");"#,
    );
    let tokens = [
        ("run token", &roots, token.clone()),
        ("run token without grants", &open_roots, open),
        ("attenuated", &roots, attenuated),
        ("per-call", &roots, minted),
        ("rules", &roots, with_rules),
    ];
    let (mut allowed, mut denied) = (0, 0);
    for (name, roots, token) in &tokens {
        let t = RunToken::verify(token, roots).unwrap();
        let compiled = t.compiled.as_ref().unwrap_or_else(|| panic!("{name}: not compiled"));
        for host in ["api.openai.com", "API.OpenAI.com", "a.tools.example", "evil.example"] {
            for method in ["POST", "get", "DELETE"] {
                for path in ["/v1/chat/completions", "/v1/files", "/v2/x"] {
                    for model in [Some("gpt-4o-mini"), Some("claude-3"), None] {
                        for later in [0, 45, 120] {
                            for presented in ["run-a", "run-b"] {
                                let c = CallFacts {
                                    host,
                                    method,
                                    path,
                                    model,
                                    step: 9,
                                    now: now + Duration::from_secs(later),
                                };
                                let ours = compiled.authorize(presented, &c);
                                let reference = authorize(&t.biscuit, presented, &c);
                                assert_eq!(ours, reference, "{name}: {presented} {c:?}");
                                if ours.is_ok() { allowed += 1 } else { denied += 1 }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(allowed > 20 && denied > 1000, "allowed {allowed}, denied {denied}");
}

/// A token with a scoped check (`trusting`) is left to biscuit-auth, which still decides it.
#[test]
fn a_token_with_scoped_datalog_is_authorized_by_biscuit_auth() {
    let (roots, token, _) = setup(grants());
    let scoped = append_code(&token, r#"check if path($p), $p.starts_with("/v1/chat/") trusting authority;"#);
    let t = RunToken::verify(&scoped, &roots).unwrap();
    assert!(t.compiled.is_none());
    t.authorize("run-a", &call("api.openai.com", "/v1/chat/completions", None)).unwrap();
    assert!(matches!(
        t.authorize("run-a", &call("api.openai.com", "/v1/models", None)),
        Err(CapabilityError::Denied(_))
    ));
}
