#![allow(clippy::unwrap_used, clippy::expect_used)]

use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::Value;

use super::{
    VcError, base58_decode, base58_encode, did_key, did_key_verification_method, hash_data, is_xsd_datetime,
    public_key_multibase, resolve_did_key, sign_credential, verify_credential,
};
use crate::canonical::{hex, sha256, to_canonical};

// The test vector of "Data Integrity EdDSA Cryptosuites v1.0", W3C Recommendation 15 May 2025,
// Appendix B.3 "Representation: eddsa-jcs-2022" (Examples 29 to 39):
// https://www.w3.org/TR/2025/REC-vc-di-eddsa-20250515/#representation-eddsa-jcs-2022
// (source: github.com/w3c/vc-di-eddsa, transitions/2025/REC/index.html).

/// Example 29: the key pair, as Multikey multibase values.
const PUBLIC_KEY_MULTIBASE: &str = "z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2";
const SECRET_KEY_MULTIBASE: &str = "z3u2en7t5LR2WtQH5PfFqMqwVHBeXouLzo6haApm8XHqvjxq";

/// Example 30: Credential without Proof.
const UNSIGNED: &str = r#"{
    "@context": [
        "https://www.w3.org/ns/credentials/v2",
        "https://www.w3.org/ns/credentials/examples/v2"
    ],
    "id": "urn:uuid:58172aac-d8ba-11ed-83dd-0b3aef56cc33",
    "type": ["VerifiableCredential", "AlumniCredential"],
    "name": "Alumni Credential",
    "description": "A minimum viable example of an Alumni Credential.",
    "issuer": "https://vc.example/issuers/5678",
    "validFrom": "2023-01-01T00:00:00Z",
    "credentialSubject": {
        "id": "did:example:abcdefgh",
        "alumniOf": "The School of Examples"
    }
}"#;

/// Example 31: Canonical Credential without Proof.
const CANONICAL_UNSIGNED: &str = r#"{"@context":["https://www.w3.org/ns/credentials/v2","https://www.w3.org/ns/credentials/examples/v2"],"credentialSubject":{"alumniOf":"The School of Examples","id":"did:example:abcdefgh"},"description":"A minimum viable example of an Alumni Credential.","id":"urn:uuid:58172aac-d8ba-11ed-83dd-0b3aef56cc33","issuer":"https://vc.example/issuers/5678","name":"Alumni Credential","type":["VerifiableCredential","AlumniCredential"],"validFrom":"2023-01-01T00:00:00Z"}"#;

/// Example 32: Hash of Canonical Credential without Proof.
const UNSIGNED_HASH: &str = "59b7cb6251b8991add1ce0bc83107e3db9dbbab5bd2c28f687db1a03abc92f19";

/// Example 33: Proof Options Document.
const PROOF_OPTIONS: &str = r#"{
  "type": "DataIntegrityProof",
  "cryptosuite": "eddsa-jcs-2022",
  "created": "2023-02-24T23:36:38Z",
  "verificationMethod": "did:key:z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2#z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2",
  "proofPurpose": "assertionMethod",
  "@context": [
    "https://www.w3.org/ns/credentials/v2",
    "https://www.w3.org/ns/credentials/examples/v2"
  ]
}"#;

/// Example 34: Canonical Proof Options Document.
const CANONICAL_PROOF_OPTIONS: &str = r#"{"@context":["https://www.w3.org/ns/credentials/v2","https://www.w3.org/ns/credentials/examples/v2"],"created":"2023-02-24T23:36:38Z","cryptosuite":"eddsa-jcs-2022","proofPurpose":"assertionMethod","type":"DataIntegrityProof","verificationMethod":"did:key:z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2#z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2"}"#;

/// Example 35: Hash of Canonical Proof Options Document.
const PROOF_OPTIONS_HASH: &str = "66ab154f5c2890a140cb8388a22a160454f80575f6eae09e5a097cabe539a1db";

/// Example 37: Signature of Combined Hashes (hex).
const SIGNATURE_HEX: &str = "407cd12654b33d718ecbb99179a1506daaa849450bf3fc523cce3e1c96f8b80351da3f253d725c6f00b07c9e5448d50b3ef78012b9ab54255116d069c6dd2808";

/// Example 38: Signature of Combined Hashes base58-btc (the expected proofValue).
const PROOF_VALUE: &str = "z2HnFSSPPBzR36zdDgK8PbEHeXbR56YF24jwMpt3R1eHXQzJDMWS93FCzpvJpwTWd3GAVFuUfjoJdcnTMuVor51aX";

/// Example 39: Signed Credential.
const SIGNED: &str = r#"{
  "@context": [
    "https://www.w3.org/ns/credentials/v2",
    "https://www.w3.org/ns/credentials/examples/v2"
  ],
  "id": "urn:uuid:58172aac-d8ba-11ed-83dd-0b3aef56cc33",
  "type": [
    "VerifiableCredential",
    "AlumniCredential"
  ],
  "name": "Alumni Credential",
  "description": "A minimum viable example of an Alumni Credential.",
  "issuer": "https://vc.example/issuers/5678",
  "validFrom": "2023-01-01T00:00:00Z",
  "credentialSubject": {
    "id": "did:example:abcdefgh",
    "alumniOf": "The School of Examples"
  },
  "proof": {
    "type": "DataIntegrityProof",
    "cryptosuite": "eddsa-jcs-2022",
    "created": "2023-02-24T23:36:38Z",
    "verificationMethod": "did:key:z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2#z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2",
    "proofPurpose": "assertionMethod",
    "@context": [
      "https://www.w3.org/ns/credentials/v2",
      "https://www.w3.org/ns/credentials/examples/v2"
    ],
    "proofValue": "z2HnFSSPPBzR36zdDgK8PbEHeXbR56YF24jwMpt3R1eHXQzJDMWS93FCzpvJpwTWd3GAVFuUfjoJdcnTMuVor51aX"
  }
}"#;

const CREATED: &str = "2023-02-24T23:36:38Z";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// The spec's key pair, from its `secretKeyMultibase`: multicodec `ed25519-priv` (0x1300, varint
/// `0x80 0x26`) followed by the 32-byte seed.
fn spec_key() -> Ed25519KeyPair {
    let bytes = base58_decode(SECRET_KEY_MULTIBASE.strip_prefix('z').unwrap()).unwrap();
    let seed = bytes.strip_prefix(&[0x80, 0x26][..]).expect("an ed25519-priv multikey");
    Ed25519KeyPair::from_seed_unchecked(seed).unwrap()
}

fn spec_public_key() -> [u8; 32] {
    spec_key().public_key().as_ref().try_into().unwrap()
}

#[test]
fn base58_matches_known_encodings_and_round_trips() {
    // draft-msporny-base58-03 §5 test vectors.
    assert_eq!(base58_encode(b"Hello World!"), "2NEpo7TZRRrLZSi2U");
    assert_eq!(
        base58_encode(b"The quick brown fox jumps over the lazy dog."),
        "USm3fpXnKG5EUBx2ndxBDMPVciP5hGey2Jh4NDv6gmeo1LkMeiKrLJUUBk6Z"
    );
    assert_eq!(base58_encode(&[0x00, 0x00, 0x28, 0x7f, 0xb4, 0xcd]), "11233QC4");
    assert_eq!(base58_decode("11233QC4").unwrap(), [0x00, 0x00, 0x28, 0x7f, 0xb4, 0xcd]);
    assert_eq!(base58_decode("2NEpo7TZRRrLZSi2U").unwrap(), b"Hello World!");

    // Leading zero bytes are '1's, and only they are.
    assert_eq!(base58_encode(&[]), "");
    assert_eq!(base58_decode("").unwrap(), Vec::<u8>::new());
    assert_eq!(base58_encode(&[0]), "1");
    assert_eq!(base58_encode(&[0, 0, 0]), "111");
    assert_eq!(base58_decode("111").unwrap(), [0, 0, 0]);
    assert_eq!(base58_encode(&[0, 0, 57]), "11z");
    assert_eq!(base58_encode(&[58]), "21");
    for bytes in [&[0u8, 0, 0, 1, 255][..], &[255; 40], &[0, 255, 0, 1], &sha256(b"x")] {
        assert_eq!(base58_decode(&base58_encode(bytes)).unwrap(), bytes);
    }

    // 0, O, I and l are not in the alphabet.
    assert_eq!(base58_decode("12O4"), Err(VcError::Base58 { found: 'O', index: 2 }));
    assert_eq!(base58_decode("0"), Err(VcError::Base58 { found: '0', index: 0 }));
    assert_eq!(base58_decode("1é"), Err(VcError::Base58 { found: 'é', index: 1 }));
}

#[test]
fn did_key_round_trips_through_the_verification_method() {
    let public_key = spec_public_key();
    assert_eq!(public_key_multibase(&public_key), PUBLIC_KEY_MULTIBASE);
    assert_eq!(did_key(&public_key), format!("did:key:{PUBLIC_KEY_MULTIBASE}"));
    let method = did_key_verification_method(&public_key);
    assert_eq!(method, format!("did:key:{PUBLIC_KEY_MULTIBASE}#{PUBLIC_KEY_MULTIBASE}"));
    assert_eq!(resolve_did_key(&method).unwrap(), public_key);
    assert_eq!(resolve_did_key(&did_key(&public_key)).unwrap(), public_key);

    let other = [7u8; 32];
    assert!(did_key(&other).starts_with("did:key:z6Mk"));
    assert_eq!(resolve_did_key(&did_key_verification_method(&other)).unwrap(), other);
}

#[test]
fn resolving_refuses_other_codecs_methods_and_shapes() {
    // A P-256 did:key from the same spec (Example 19): multicodec p256-pub, 0x1200.
    let p256 = "did:key:zDnaegE6RR3atJtHKwTRTWHsJ3kNHqFwv7n9YjTgmU7TyfU76";
    let err = resolve_did_key(p256).unwrap_err();
    assert_eq!(err, VcError::UnsupportedMulticodec { codec: 0x1200, value: p256.into() });
    assert!(err.to_string().contains("0x1200"), "{err}");

    let web = format!("https://vc.example/issuers/5678#{PUBLIC_KEY_MULTIBASE}");
    assert_eq!(resolve_did_key(&web), Err(VcError::NotDidKey { value: web.clone() }));
    let mixed = format!("did:key:{PUBLIC_KEY_MULTIBASE}#key-1");
    assert_eq!(resolve_did_key(&mixed), Err(VcError::FragmentMismatch { value: mixed.clone() }));
    assert_eq!(resolve_did_key("did:key:m7QEB"), Err(VcError::NotBase58Btc { value: "m7QEB".into() }));
    let short = format!("did:key:z{}", base58_encode(&[0xed, 0x01, 1, 2, 3]));
    assert_eq!(resolve_did_key(&short), Err(VcError::KeyLength { len: 3, value: short.clone() }));
}

#[test]
fn w3c_eddsa_jcs_2022_vector_signs_byte_for_byte() {
    let unsigned = json(UNSIGNED);
    let options = json(PROOF_OPTIONS);
    let options = options.as_object().unwrap();

    // Each intermediate value of the spec's walk-through.
    assert_eq!(String::from_utf8(to_canonical(&unsigned).unwrap()).unwrap(), CANONICAL_UNSIGNED);
    assert_eq!(hex(&sha256(CANONICAL_UNSIGNED.as_bytes())), UNSIGNED_HASH);
    assert_eq!(String::from_utf8(to_canonical(&json(PROOF_OPTIONS)).unwrap()).unwrap(), CANONICAL_PROOF_OPTIONS);
    assert_eq!(hex(&sha256(CANONICAL_PROOF_OPTIONS.as_bytes())), PROOF_OPTIONS_HASH);
    let hash = hash_data(unsigned.as_object().unwrap(), options).unwrap();
    assert_eq!(hex(&hash), format!("{PROOF_OPTIONS_HASH}{UNSIGNED_HASH}"));
    assert_eq!(hex(spec_key().sign(&hash).as_ref()), SIGNATURE_HEX);

    let method = options["verificationMethod"].as_str().unwrap();
    let signed = sign_credential(&unsigned, &spec_key(), method, CREATED).unwrap();
    assert_eq!(signed["proof"]["proofValue"], PROOF_VALUE);
    assert_eq!(signed, json(SIGNED));
    verify_credential(&signed).unwrap();
}

#[test]
fn w3c_signed_credential_verifies_and_any_changed_byte_fails() {
    verify_credential(&json(SIGNED)).unwrap();

    // One byte of the credential subject's id.
    let changed = SIGNED.replacen("did:example:abcdefgh", "did:example:abcdefgi", 1);
    assert_eq!(changed.len(), SIGNED.len());
    assert!(matches!(verify_credential(&json(&changed)), Err(VcError::BadSignature { .. })));
    // One byte of the proof's created time: the proof configuration is signed too.
    let changed = SIGNED.replacen("23:36:38Z", "23:36:39Z", 1);
    assert!(matches!(verify_credential(&json(&changed)), Err(VcError::BadSignature { .. })));
    // One base58 digit of the signature.
    let changed = SIGNED.replacen("z2HnFSSP", "z2HnFSSQ", 1);
    assert!(matches!(verify_credential(&json(&changed)), Err(VcError::BadSignature { .. })));

    // A member added to the credential.
    let mut added = json(SIGNED);
    added["evidence"] = "forged".into();
    assert!(matches!(verify_credential(&added), Err(VcError::BadSignature { .. })));
}

#[test]
fn verification_refuses_malformed_proofs_with_named_errors() {
    let signed = json(SIGNED);
    let with_proof = |edit: &dyn Fn(&mut Value)| {
        let mut doc = signed.clone();
        edit(&mut doc["proof"]);
        verify_credential(&doc).unwrap_err()
    };

    assert_eq!(
        with_proof(&|p| p["cryptosuite"] = "eddsa-rdfc-2022".into()),
        VcError::WrongValue { field: "cryptosuite", expected: "eddsa-jcs-2022", found: "eddsa-rdfc-2022".into() }
    );
    assert_eq!(
        with_proof(&|p| p["proofPurpose"] = "authentication".into()),
        VcError::WrongValue { field: "proofPurpose", expected: "assertionMethod", found: "authentication".into() }
    );
    assert_eq!(
        with_proof(&|p| p["created"] = "24 Feb 2023".into()),
        VcError::BadCreated { value: "\"24 Feb 2023\"".into() }
    );
    assert_eq!(
        with_proof(&|p| {
            p.as_object_mut().unwrap().remove("proofValue");
        }),
        VcError::MissingField { field: "proofValue" }
    );
    assert_eq!(with_proof(&|p| p["proofValue"] = "uAAAA".into()), VcError::NotBase58Btc { value: "uAAAA".into() });
    assert_eq!(with_proof(&|p| p["proofValue"] = "z2HnF".into()), VcError::SignatureLength { len: 3 });
    let huge = format!("z{}", "2".repeat(100_000));
    assert_eq!(
        with_proof(&|p| p["proofValue"] = huge.clone().into()),
        VcError::TooLong { what: "proofValue", len: 100_000 }
    );
    let huge_key = format!("did:key:z{}", "6".repeat(100_000));
    assert_eq!(resolve_did_key(&huge_key), Err(VcError::TooLong { what: "the did:key", len: 100_000 }));
    assert!(matches!(
        with_proof(&|p| p["verificationMethod"] = "https://vc.example/issuers/5678#key".into()),
        VcError::NotDidKey { .. }
    ));
    // The proof's @context must be a prefix of the document's.
    let err = with_proof(&|p| p["@context"] = serde_json::json!(["https://www.w3.org/ns/credentials/v2", "x"]));
    assert!(matches!(err, VcError::ContextMismatch { .. }), "{err}");

    let mut no_proof = signed.clone();
    no_proof.as_object_mut().unwrap().remove("proof");
    assert_eq!(verify_credential(&no_proof), Err(VcError::NoProof));
    let mut set = signed.clone();
    set["proof"] = serde_json::json!([signed["proof"].clone()]);
    assert_eq!(verify_credential(&set), Err(VcError::ProofSet));
    assert_eq!(verify_credential(&Value::Null), Err(VcError::NotAnObject { what: "the credential" }));
}

#[test]
fn a_document_context_extending_the_proofs_is_accepted() {
    // Verify Proof §3.3.2 step 4: a context appended after signing does not break the proof.
    let mut signed = json(SIGNED);
    signed["@context"].as_array_mut().unwrap().push("https://example.org/extra/v1".into());
    verify_credential(&signed).unwrap();
}

#[test]
fn signing_refuses_what_could_not_verify() {
    let unsigned = json(UNSIGNED);
    let key = spec_key();
    let method = did_key_verification_method(&spec_public_key());

    let other = did_key_verification_method(&[7u8; 32]);
    assert!(matches!(sign_credential(&unsigned, &key, &other, CREATED), Err(VcError::KeyMismatch { .. })));
    assert_eq!(
        sign_credential(&unsigned, &key, &method, "2023-02-30T00:00:00Z"),
        Err(VcError::BadCreated { value: "2023-02-30T00:00:00Z".into() })
    );
    assert_eq!(sign_credential(&json(SIGNED), &key, &method, CREATED), Err(VcError::AlreadySigned));
    assert_eq!(
        sign_credential(&Value::Null, &key, &method, CREATED),
        Err(VcError::NotAnObject { what: "the credential" })
    );
    let float = serde_json::json!({"credentialSubject": {"score": 0.5}});
    assert!(matches!(sign_credential(&float, &key, &method, CREATED), Err(VcError::Canonical(_))));
}

#[test]
fn fresh_keys_sign_and_verify_deterministically() {
    let key = Ed25519KeyPair::from_seed_unchecked(&[42u8; 32]).unwrap();
    let public_key: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
    let method = did_key_verification_method(&public_key);
    let unsigned = serde_json::json!({
        "@context": ["https://www.w3.org/ns/credentials/v2"],
        "type": ["VerifiableCredential"],
        "issuer": did_key(&public_key),
        "credentialSubject": {"id": "run:run-1", "calls": 3, "note": "é\u{1f600}"}
    });
    let signed = sign_credential(&unsigned, &key, &method, "2026-01-02T03:04:05.678+01:00").unwrap();
    verify_credential(&signed).unwrap();
    assert_eq!(signed, sign_credential(&unsigned, &key, &method, "2026-01-02T03:04:05.678+01:00").unwrap());

    // Without an @context, the proof carries none either, and still verifies.
    let bare = serde_json::json!({"claim": 1});
    let signed = sign_credential(&bare, &key, &method, CREATED).unwrap();
    assert!(signed["proof"].get("@context").is_none());
    verify_credential(&signed).unwrap();
}

#[test]
fn created_must_be_an_xml_schema_datetime() {
    for ok in [
        "2023-02-24T23:36:38Z",
        "2023-02-24T23:36:38",
        "2023-02-24T23:36:38.123456Z",
        "2024-02-29T00:00:00-05:30",
        "2023-12-31T24:00:00Z",
        "2023-01-01T00:00:00+14:00",
    ] {
        assert!(is_xsd_datetime(ok), "{ok}");
    }
    for bad in [
        "",
        "2023-02-24",
        "2023-02-24 23:36:38Z",
        "2023-02-29T00:00:00Z",
        "2023-13-01T00:00:00Z",
        "2023-04-31T00:00:00Z",
        "2023-02-24T24:00:01Z",
        "2023-02-24T23:60:00Z",
        "2023-02-24T23:36:38.Z",
        "2023-02-24T23:36:38+14:30",
        "2023-02-24T23:36:38z",
        "2023-02-24T23:36:38+0100",
        "+023-02-24T23:36:38Z",
        "2023-02-24T23:36:38Zjunk",
    ] {
        assert!(!is_xsd_datetime(bad), "{bad}");
    }
}
