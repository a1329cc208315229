//! The docs against the binaries: `docs/reference/cli.md` is exactly what `--help` prints,
//! `docs/reference/openapi.json` exactly what control serves at `/openapi.json`, and
//! every `fleetforge-ctl`, `fleetforge-proxy` or `fleetforge-control` command the README and the
//! docs show exists. (`fleetforge-ctl demo`, the README's first command, runs in `demo.rs`.)
//!
//! `FLEETFORGE_WRITE_DOCS=1 cargo test -p fleetforge-e2e --test docs` rewrites both.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use fleetforge_e2e::harness::{binary, workspace};

/// `bin args… --help`, as printed.
fn help(bin: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(binary(bin))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() { Ok(text) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// The subcommands a `--help` lists (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.split("Commands:")
        .nth(1)
        .map(|rest| rest.split("\n\n").next().unwrap_or_default())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

fn cli_reference() -> String {
    let mut doc = String::from(
        "# CLI reference\n\nWhat each binary prints for `--help`, command by command. Generated from the binaries \
         (`FLEETFORGE_WRITE_DOCS=1 cargo test -p fleetforge-e2e --test docs`); a test fails when it is out of date.\n",
    );
    for bin in ["fleetforge-ctl", "fleetforge-proxy", "fleetforge-control"] {
        let top = help(bin, &[]).unwrap();
        doc.push_str(&format!("\n## `{bin}`\n\n```text\n{}\n```\n", top.trim_end()));
        for sub in subcommands(&top) {
            let text = help(bin, &[&sub]).unwrap();
            doc.push_str(&format!("\n### `{bin} {sub}`\n\n```text\n{}\n```\n", text.trim_end()));
            for subsub in subcommands(&text) {
                let text = help(bin, &[&sub, &subsub]).unwrap();
                doc.push_str(&format!("\n#### `{bin} {sub} {subsub}`\n\n```text\n{}\n```\n", text.trim_end()));
            }
        }
    }
    doc
}

/// Asserts the generated file `rel` holds `want` (writes it first under `FLEETFORGE_WRITE_DOCS`).
fn assert_current(rel: &str, want: &str) {
    let path = workspace().join(rel);
    if std::env::var_os("FLEETFORGE_WRITE_DOCS").is_some() {
        std::fs::write(&path, want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date: FLEETFORGE_WRITE_DOCS=1 cargo test -p fleetforge-e2e --test docs rewrites it",
        path.display()
    );
}

#[test]
fn the_cli_reference_is_what_help_prints() {
    assert_current("docs/reference/cli.md", &cli_reference());
}

fn markdown_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

#[test]
fn every_command_the_docs_show_exists() {
    let root = workspace();
    let mut files = vec![root.join("README.md")];
    markdown_files(&root.join("docs"), &mut files);
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if !in_code {
                continue;
            }
            for bin in ["fleetforge-ctl", "fleetforge-proxy", "fleetforge-control"] {
                // `fleetforge-ctl SUB …` or `cargo run … --bin fleetforge-ctl -- SUB …`
                let Some(rest) = line.split(bin).nth(1) else { continue };
                let rest = rest.trim_start().strip_prefix("-- ").unwrap_or(rest.trim_start());
                let words: Vec<&str> = rest.split_whitespace().take_while(|w| !w.starts_with('-')).take(2).collect();
                let Some(sub) = words.first().filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-')) else {
                    continue;
                };
                if !help(bin, &[]).unwrap().contains(&format!("  {sub} ")) {
                    panic!("{}: `{bin} {sub}` is not a command of {bin} (line: {line})", file.display());
                }
                // A second word that is a subcommand of it (e.g. `runs create`) must exist too.
                let nested = subcommands(&help(bin, &[sub]).unwrap());
                if let Some(second) = words.get(1)
                    && !nested.is_empty()
                    && second.chars().all(|c| c.is_ascii_lowercase())
                {
                    assert!(
                        nested.iter().any(|n| n == second),
                        "{}: `{bin} {sub} {second}` is not a command (line: {line})",
                        file.display()
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} commands found in the docs");
}

#[test]
fn the_openapi_reference_is_what_control_serves() {
    let home = tempfile::tempdir().unwrap();
    let control =
        fleetforge_e2e::harness::ControlProcess::start(&fleetforge_e2e::harness::Database::Sqlite, home.path(), None)
            .unwrap();
    let (status, served) = control.api("GET", "/openapi.json", "none", None).unwrap();
    assert_eq!(status, 200);
    assert!(served["paths"]["/v1/runs"].is_object() && served["paths"]["/v1/ui/login-links"].is_object(), "{served}");
    // Keys sorted: serde_json keeps insertion order when another crate of the build enables its
    // `preserve_order`, so the file must not depend on the build's features.
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                serde_json::Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&map[k]))).collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let want = serde_json::to_string_pretty(&sorted(&served)).unwrap() + "\n";
    assert_current("docs/reference/openapi.json", &want);
}
