use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::{Config, ConfigError, Flags, Origin, PortSet};

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |k| map.get(k).cloned()
}

fn load_text(text: &str, env: &[(&str, &str)], flags: &Flags) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), &env_of(env), flags)
}

#[test]
fn defaults_are_secure_and_documented() {
    let c = Config::load(None, &env_of(&[]), &Flags::default()).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9901");
    assert_eq!(c.home, Path::new(".fleetforge"));
    assert!(!c.allow_private);
    assert!(!c.require_credentials);
    assert_eq!(c.allowed_ports, PortSet::Only(vec![80, 443]));
    assert!(c.allowed_hosts.is_any());
    assert!(c.intercept.matches("api.openai.com"));
    assert!(c.intercept.matches("api.anthropic.com"));
    assert!(!c.intercept.matches("example.com"));
    assert_eq!(c.max_body, 16 * 1024 * 1024);
}

#[test]
fn flags_beat_env_beat_file() {
    let text = "[proxy]\nlisten = \"127.0.0.1:1001\"\nadmin_listen = \"127.0.0.1:1002\"\n";
    let c = load_text(text, &[], &Flags::default()).unwrap();
    assert_eq!(c.listen.port(), 1001);
    let c = load_text(text, &[("FLEETFORGE_PROXY_LISTEN", "127.0.0.1:2001")], &Flags::default()).unwrap();
    assert_eq!(c.listen.port(), 2001);
    let flags = Flags { listen: Some("127.0.0.1:3001".into()), ..Flags::default() };
    let c = load_text(text, &[("FLEETFORGE_PROXY_LISTEN", "127.0.0.1:2001")], &flags).unwrap();
    assert_eq!(c.listen.port(), 3001);
    assert_eq!(c.admin_listen.port(), 1002);
}

#[test]
fn env_lists_and_values_parse() {
    let env = [
        ("FLEETFORGE_ALLOWED_HOSTS", "api.openai.com, *.example.com"),
        ("FLEETFORGE_ALLOWED_PORTS", "443,8443"),
        ("FLEETFORGE_RESOLVE", "api.llm.test=127.0.0.1:8443,other.test=[::1]:9"),
        ("FLEETFORGE_MAX_BODY", "1MiB"),
        ("FLEETFORGE_ALLOW_PRIVATE", "true"),
        ("FLEETFORGE_INTERCEPT", "*"),
        ("FLEETFORGE_DEFAULT_RUN", "r-1"),
    ];
    let c = Config::load(None, &env_of(&env), &Flags::default()).unwrap();
    assert!(c.allowed_hosts.matches("a.example.com"));
    assert!(!c.allowed_hosts.matches("example.org"));
    assert_eq!(c.allowed_ports, PortSet::Only(vec![443, 8443]));
    assert_eq!(c.resolve["api.llm.test"].to_string(), "127.0.0.1:8443");
    assert_eq!(c.resolve["other.test"].to_string(), "[::1]:9");
    assert_eq!(c.max_body, 1 << 20);
    assert!(c.allow_private);
    assert!(c.intercept.is_any());
    assert_eq!(c.default_run.unwrap().as_str(), "r-1");
}

#[test]
fn errors_name_the_key_the_value_and_the_origin() {
    let err = Config::load(None, &env_of(&[("FLEETFORGE_PROXY_LISTEN", "localhost")]), &Flags::default()).unwrap_err();
    match &err {
        ConfigError::Value { key, value, origin, .. } => {
            assert_eq!(key, "proxy.listen");
            assert_eq!(value, "localhost");
            assert_eq!(*origin, Origin::Env("FLEETFORGE_PROXY_LISTEN"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("proxy.listen") && text.contains("localhost") && text.contains("FLEETFORGE_PROXY_LISTEN"),
        "{text}"
    );

    let err = load_text("[proxy.limits]\nmax_body = \"lots\"\n", &[], &Flags::default()).unwrap_err();
    assert!(err.to_string().contains("proxy.limits.max_body"), "{err}");
    let err = load_text("[proxy.egress]\nresolve = { \"h\" = \"nope\" }\n", &[], &Flags::default()).unwrap_err();
    assert!(err.to_string().contains("proxy.egress.resolve"), "{err}");
    let err =
        load_text("[[proxy.sidecar]]\nlisten = \"127.0.0.1:1\"\nupstream = \"ftp://x\"\n", &[], &Flags::default())
            .unwrap_err();
    assert!(err.to_string().contains("proxy.sidecar[0].upstream"), "{err}");
    let err = load_text("[proxy.limits]\nconnect_timeout = \"10\"\n", &[], &Flags::default()).unwrap_err();
    assert!(err.to_string().contains("duration"), "{err}");
    let err = load_text("[proxy.egress]\nallowed_hosts = [\"https://x.com\"]\n", &[], &Flags::default()).unwrap_err();
    assert!(err.to_string().contains("proxy.egress.allowed_hosts"), "{err}");
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let err = load_text("[proxy]\nlisen = \"127.0.0.1:1\"\n", &[], &Flags::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }));
    assert!(err.to_string().contains("lisen"), "{err}");
    let err = load_text("bogus = 1\n", &[], &Flags::default()).unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[test]
fn listeners_must_not_collide() {
    let text = "[proxy]\nlisten = \"127.0.0.1:7000\"\n[[proxy.sidecar]]\nlisten = \"127.0.0.1:7000\"\nupstream = \"https://api.openai.com\"\n";
    let err = load_text(text, &[], &Flags::default()).unwrap_err();
    assert!(err.to_string().contains("proxy.sidecar[0].listen"), "{err}");
}

#[test]
fn sidecar_upstreams_parse_with_path_prefix() {
    let flags = Flags { sidecar: vec!["127.0.0.1:0=https://gw.example.com:8443/openai/".into()], ..Flags::default() };
    let c = Config::load(None, &env_of(&[]), &flags).unwrap();
    let up = &c.sidecars[0].upstream;
    assert_eq!((up.host.as_str(), up.port, up.base_path.as_str()), ("gw.example.com", 8443, "/openai"));
    let flags = Flags { sidecar: vec!["127.0.0.1:0=https://user:pw@x.com".into()], ..Flags::default() };
    assert!(Config::load(None, &env_of(&[]), &flags).is_err(), "credentials in URLs are refused");
}

#[test]
fn timeouts_parse() {
    let c =
        load_text("[proxy.limits]\nresponse_timeout = \"5m\"\nheader_timeout = \"500ms\"\n", &[], &Flags::default())
            .unwrap();
    assert_eq!(c.response_timeout, Duration::from_secs(300));
    assert_eq!(c.header_timeout, Duration::from_millis(500));
}

/// Every example in `configs/` must load (agentgateway's validate_examples).
#[test]
fn every_example_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // prices.toml is the price list, not a config.
        if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("prices.toml") {
            let c = Config::load(Some(&path), &env_of(&[]), &Flags::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // The packs it names (relative to the file) load.
            crate::policy::Policy::load(&c.policy.packs, c.policy.limits)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected the example configs in {}", dir.display());
}

#[test]
fn policy_settings_come_from_file_env_and_flags() {
    let file = "[proxy.policy]\npacks = [\"a\", \"b\"]\nreload_interval = \"0s\"\nfuel = 1000\ntimeout = \"20ms\"\nmemory = \"1MiB\"\n";
    let c = load_text(file, &[], &Flags::default()).unwrap();
    // Relative to the config file's folder.
    assert!(c.policy.packs[0].is_absolute() && c.policy.packs[0].ends_with("a"), "{:?}", c.policy.packs);
    assert_eq!(c.policy.packs[0].parent(), c.policy.packs[1].parent());
    let absolute = load_text("[proxy.policy]\npacks = [\"/opt/packs/x\"]\n", &[], &Flags::default()).unwrap();
    assert_eq!(absolute.policy.packs, vec![std::path::PathBuf::from("/opt/packs/x")]);
    assert_eq!(c.policy.reload_interval, Duration::ZERO);
    assert_eq!(
        (c.policy.limits.fuel, c.policy.limits.timeout, c.policy.limits.memory),
        (1000, Duration::from_millis(20), 1 << 20)
    );
    let c = load_text(file, &[("FLEETFORGE_POLICY", "x, y")], &Flags::default()).unwrap();
    assert_eq!(c.policy.packs, vec![std::path::PathBuf::from("x"), "y".into()]);
    let flags = Flags { policy: vec!["z".into()], ..Flags::default() };
    assert_eq!(
        load_text(file, &[("FLEETFORGE_POLICY", "x")], &flags).unwrap().policy.packs,
        vec![std::path::PathBuf::from("z")]
    );
    let defaults = load_text("", &[], &Flags::default()).unwrap().policy;
    assert!(defaults.packs.is_empty());
    assert_eq!(defaults.reload_interval, Duration::from_secs(1));
    for (bad, key) in [
        ("fuel = 0", "proxy.policy.fuel"),
        ("memory = \"1GiB\"", "proxy.policy.memory"),
        ("timeout = \"soon\"", "proxy.policy.timeout"),
        ("colour = 1", "colour"),
    ] {
        let err = load_text(&format!("[proxy.policy]\n{bad}\n"), &[], &Flags::default()).unwrap_err().to_string();
        assert!(err.contains(key), "{bad}: {err}");
    }
}

#[test]
fn sidecars_load_from_the_contract_s_top_level_table_and_from_the_proxy_table() {
    let top = "[[sidecar]]\nlisten = \"127.0.0.1:15001\"\nupstream = \"https://api.openai.com/v1\"\ndefault_run = \"r-top\"\n";
    let c = load_text(top, &[], &Flags::default()).unwrap();
    assert_eq!(c.sidecars.len(), 1);
    assert_eq!(c.sidecars[0].listen.to_string(), "127.0.0.1:15001");
    assert_eq!(c.sidecars[0].upstream.host, "api.openai.com");
    assert_eq!(c.sidecars[0].upstream.base_path, "/v1");
    assert_eq!(c.sidecars[0].default_run.as_ref().map(|r| r.as_str()), Some("r-top"));

    let nested = "[[proxy.sidecar]]\nlisten = \"127.0.0.1:15002\"\nupstream = \"https://api.anthropic.com\"\n";
    let c = load_text(nested, &[], &Flags::default()).unwrap();
    assert_eq!(c.sidecars.len(), 1);
    assert_eq!(c.sidecars[0].upstream.host, "api.anthropic.com");

    // Both spellings in one file: the top-level entries first, every one kept.
    let c = load_text(&format!("{top}{nested}"), &[], &Flags::default()).unwrap();
    let ports: Vec<u16> = c.sidecars.iter().map(|s| s.listen.port()).collect();
    assert_eq!(ports, [15001, 15002]);

    // An error in a top-level entry names the table it was written in.
    let err = load_text("[[sidecar]]\nlisten = \"127.0.0.1:1\"\nupstream = \"ftp://x\"\n", &[], &Flags::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("sidecar[0].upstream") && !err.contains("proxy.sidecar"), "{err}");
}

#[test]
fn run_tokens_are_verified_whenever_control_is_known() {
    let load = |env: &[(&str, &str)]| Config::load(None, &env_of(env), &Flags::default()).unwrap().capabilities;
    let alone = load(&[]);
    assert!(!alone.required && !alone.explicit, "no control token: nothing to verify with");
    let known = load(&[("FLEETFORGE_CONTROL_TOKEN", "fft_x")]);
    assert!(known.required && !known.explicit, "a proxy that knows control verifies by default");
    let off = load(&[("FLEETFORGE_CONTROL_TOKEN", "fft_x"), ("FLEETFORGE_CAPABILITIES", "false")]);
    assert!(!off.required && off.explicit, "turning it off is an explicit choice");
    let c = load_text(
        "[proxy.capabilities]\nrequired = false\n",
        &[("FLEETFORGE_CONTROL_TOKEN", "fft_x")],
        &Flags::default(),
    )
    .unwrap()
    .capabilities;
    assert!(!c.required && c.explicit, "the file can opt out too");
}

#[test]
fn seal_replay_and_datasets_are_read_and_checked() {
    let c = load_text("", &[], &Flags::default()).unwrap();
    assert!(c.seal.enabled && c.seal.forward && c.replay.is_none() && c.datasets.is_empty());
    assert!(!load_text("", &[("FLEETFORGE_SEAL", "false")], &Flags::default()).unwrap().seal.enabled);
    // Sealing needs receipts.
    assert!(!load_text("", &[("FLEETFORGE_RECEIPTS", "false")], &Flags::default()).unwrap().seal.enabled);
    let c = load_text(
        "[proxy.seal]\nredact = [\"/user\"]\nkey_exclude = [\"/metadata/id\"]\nkey_headers = [\"X-Tenant\"]\nmax_body = \"1MiB\"\n",
        &[("FLEETFORGE_REPLAY", "rec-1:strict"), ("FLEETFORGE_REPLAY_TIMING", "recorded")],
        &Flags::default(),
    )
    .unwrap();
    assert_eq!(c.seal.redact, ["/user"]);
    assert_eq!(c.seal.key.exclude, ["/metadata/id"]);
    assert!(c.seal.key.headers.contains(&"x-tenant".to_owned()));
    assert_eq!(c.seal.max_body, 1 << 20);
    let replay = c.replay.unwrap();
    assert_eq!((replay.run.as_str(), replay.strict, replay.recorded_timing), ("rec-1", true, true));
    for (file, env, key) in [
        ("[proxy.seal]\nredact = [\"user\"]\n", vec![], "proxy.seal.redact"),
        ("[proxy.seal]\nkey_exclude = [\"/a~2\"]\n", vec![], "proxy.seal.key_exclude"),
        ("[proxy.seal]\nkey_headers = [\"Authorization\"]\n", vec![], "proxy.seal.key_headers"),
        ("", vec![("FLEETFORGE_REPLAY", "rec-1:loose")], "proxy.replay.run"),
        ("", vec![("FLEETFORGE_REPLAY", "rec-1"), ("FLEETFORGE_REPLAY_TIMING", "slow")], "proxy.replay.timing"),
        ("[[dataset]]\nname = \"d\"\npath = \"/no/such/file.jsonl\"\n", vec![], "dataset[0].path"),
    ] {
        let err = load_text(file, &env, &Flags::default()).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}
