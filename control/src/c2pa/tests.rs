use super::*;

fn assertion() -> Value {
    json!({ "run": "run-1", "tenant": "default", "receipts": 2, "log_head": { "size": 2, "root": "ab" } })
}

#[test]
fn a_signed_bundle_reads_as_trusted_and_one_changed_byte_invalidates_it() {
    let home = tempfile::tempdir().unwrap();
    let ca = SigningCa::load_or_create(home.path()).unwrap();
    let asset = b"{\"id\":\"r1\"}\n{\"id\":\"r2\"}\n".to_vec();
    let manifest = sign(&ca, &asset, "run run-1: receipts", &assertion()).unwrap();

    let ok = check(&manifest, &asset, &ca.ca_pem).unwrap();
    assert_eq!(ok.state, ValidationState::Trusted, "{:?}", ok.failures);
    assert!(ok.failures.is_empty(), "{:?}", ok.failures);
    assert_eq!(ok.assertion, Some(assertion()));

    for at in [0, asset.len() / 2, asset.len() - 1] {
        let mut changed = asset.clone();
        changed[at] ^= 0x01;
        let bad = check(&manifest, &changed, &ca.ca_pem).unwrap();
        assert_eq!(bad.state, ValidationState::Invalid, "byte {at}");
        assert!(bad.failures.iter().any(|f| f == "assertion.dataHash.mismatch"), "byte {at}: {:?}", bad.failures);
    }

    // Another CA does not vouch for it: intact, but not trusted.
    let other = SigningCa::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
    let untrusted = check(&manifest, &asset, &other.ca_pem).unwrap();
    assert_ne!(untrusted.state, ValidationState::Trusted, "{:?}", untrusted.failures);
}

#[test]
fn the_ca_is_kept_and_its_key_files_are_private() {
    let home = tempfile::tempdir().unwrap();
    let first = SigningCa::load_or_create(home.path()).unwrap();
    let again = SigningCa::load_or_create(home.path()).unwrap();
    assert_eq!(first.ca_pem, again.ca_pem, "loaded, not regenerated");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(home.path().join("c2pa/signer.key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(!home.path().join("c2pa/ca.key").exists(), "the CA key is not kept");
    let listing = first.listing();
    assert_eq!(listing["kind"], "c2pa-ca");
    // Every GET /v1/keys entry carries a public key, which proxies read from each entry.
    let public = listing["public_key"].as_str().unwrap();
    assert_eq!(base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, public).unwrap().len(), 65);
}
