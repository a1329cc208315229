//! The per-call block, signed without biscuit-auth's general append path.
//!
//! `Biscuit::append` pays three ed25519 base-point multiplications per block: it generates a fresh
//! next key pair, re-derives the previous block's key pair from the secret the token carries, and
//! signs. Two of those do not depend on the call. A [`CallMinter`] is built once per verified run
//! token and keeps
//! - the run token's proof key pair, derived once from the secret the token carries;
//! - one next key pair, shared by every per-call token minted from this run token in this
//!   process (see below);
//! - the run token encoded once (without its proof) and its symbol table, so a call's block is
//!   encoded and appended without decoding, cloning or re-encoding the token.
//!
//! Per call there is one signature (one multiplication), the block's protobuf and the token's.
//! The bytes are exactly what `Biscuit::append_with_keypair` produces for the same block and next
//! key pair (the signature is deterministic, RFC 8032), which `tests.rs` checks byte for byte.
//!
//! Why sharing the next key pair is safe: a per-call token carries the next secret so its holder
//! can attenuate it further, and appending a block only adds checks. A tool that learns the
//! shared secret from its own token can therefore append blocks to another call's token, which
//! only narrows that token; it cannot remove or re-sign the call block, which is signed by the
//! run token's proof key the tool never sees. Tokens of the same run still differ per call (the
//! step, the facts and the signature differ), so their revocation ids stay unique.

use std::collections::HashMap;
use std::fmt;

use biscuit_auth::KeyPair;
use biscuit_auth::datalog::SymbolTable;
use biscuit_auth::format::schema;
use prost::Message;

use super::{CallFacts, CapabilityError, invalid};

/// Block schema version of the call block (Datalog 3.1 features only: plain checks, a `<=`).
const BLOCK_VERSION: u32 = 3;
/// First index of a token's own symbols; below it, biscuit's default table.
const SYMBOL_OFFSET: u64 = 1024;
/// Biscuit's signature payload versions.
const SIGNATURE_V0: u32 = 0;
const SIGNATURE_V1: u32 = 1;

/// Mints per-call tokens from one run token: see the module documentation.
pub(super) struct CallMinter {
    /// Signs the call block: the key pair whose public half the run token's last block names.
    proof: KeyPair,
    /// Secret of the next key pair (the per-call token's proof), and its public half.
    next_secret: [u8; 32],
    next_public: Vec<u8>,
    /// The run token's protobuf without its proof: fields 1–3 (root key id, authority, blocks),
    /// encoded once. A per-call token is this, its block (one more field 3) and its proof (4).
    prefix: Vec<u8>,
    /// Signature of the run token's last block (chained into v1 signature payloads).
    previous_signature: Vec<u8>,
    signature_version: u32,
    /// The run token's own symbols by index (default symbols are looked up in biscuit's table).
    symbols: HashMap<String, u64>,
    defaults: SymbolTable,
}

impl fmt::Debug for CallMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_struct("CallMinter").field("signature_version", &self.signature_version).finish_non_exhaustive()
    }
}

impl CallMinter {
    /// The minter for `token`, or `None` when the token cannot take a first-party block signed
    /// this way (a sealed token, or a proof key that is not ed25519): the caller then falls back
    /// to biscuit-auth's append, which reports what is wrong.
    pub(super) fn new(token: &biscuit_auth::Biscuit) -> Option<Self> {
        let next = KeyPair::new();
        Self::with_next_key(token, &next.private().to_bytes())
    }

    /// [`CallMinter::new`] with a chosen next secret (tests compare against biscuit-auth's output).
    pub(super) fn with_next_key(token: &biscuit_auth::Biscuit, next_secret: &[u8]) -> Option<Self> {
        let mut token = token.container().to_proto();
        let Some(schema::proof::Content::NextSecret(proof_secret)) = token.proof.content.take() else {
            return None;
        };
        let last = token.blocks.last().unwrap_or(&token.authority);
        if last.next_key.algorithm != schema::public_key::Algorithm::Ed25519 as i32 {
            return None;
        }
        let proof = KeyPair::from_bytes(&proof_secret, schema::public_key::Algorithm::Ed25519).ok()?;
        // The secret the token carries must be the one its last block names.
        if proof.public().to_bytes() != last.next_key.key {
            return None;
        }
        let previous_signature = last.signature.clone();
        let signature_version = std::iter::once(&token.authority)
            .chain(&token.blocks)
            .map(|b| b.version.unwrap_or(SIGNATURE_V0))
            .max()
            .unwrap_or(SIGNATURE_V0);
        if signature_version > SIGNATURE_V1 {
            return None;
        }
        let mut symbols = HashMap::new();
        for signed in std::iter::once(&token.authority).chain(&token.blocks) {
            // Third-party blocks have their own symbol tables; first-party ones extend the token's.
            if signed.external_signature.is_some() {
                continue;
            }
            let block = schema::Block::decode(signed.block.as_slice()).ok()?;
            for s in block.symbols {
                let index = SYMBOL_OFFSET + symbols.len() as u64;
                symbols.entry(s).or_insert(index);
            }
        }
        let next = KeyPair::from_bytes(next_secret, schema::public_key::Algorithm::Ed25519).ok()?;
        let next_public = next.public().to_bytes();
        let mut prefix = Vec::new();
        if let Some(id) = token.root_key_id {
            prost::encoding::uint32::encode(1, &id, &mut prefix);
        }
        prost::encoding::message::encode(2, &token.authority, &mut prefix);
        for block in &token.blocks {
            prost::encoding::message::encode(3, block, &mut prefix);
        }
        Some(Self {
            proof,
            next_secret: next_secret.try_into().ok()?,
            next_public,
            prefix,
            previous_signature,
            signature_version,
            symbols,
            defaults: SymbolTable::new(),
        })
    }

    /// The per-call token (protobuf bytes) and its block's revocation id (the signature).
    pub(super) fn mint(&self, call: &CallFacts<'_>, expires: u64) -> Result<(Vec<u8>, Vec<u8>), CapabilityError> {
        let data = self.block(call, expires).encode_to_vec();
        let payload = self.signature_payload(&data);
        let signature = self.proof.sign(&payload).map_err(invalid)?.to_bytes().to_vec();
        let block = schema::SignedBlock {
            block: data,
            next_key: schema::PublicKey {
                algorithm: schema::public_key::Algorithm::Ed25519 as i32,
                key: self.next_public.clone(),
            },
            signature: signature.clone(),
            external_signature: None,
            version: (self.signature_version > SIGNATURE_V0).then_some(self.signature_version),
        };
        let proof = schema::Proof { content: Some(schema::proof::Content::NextSecret(self.next_secret.to_vec())) };
        let mut bytes = Vec::with_capacity(self.prefix.len() + block.encoded_len() + 48);
        bytes.extend_from_slice(&self.prefix);
        prost::encoding::message::encode(3, &block, &mut bytes);
        prost::encoding::message::encode(4, &proof, &mut bytes);
        Ok((bytes, signature))
    }

    /// What biscuit signs for a first-party block (`crypto::sign_block`, versions 0 and 1).
    fn signature_payload(&self, data: &[u8]) -> Vec<u8> {
        let algorithm = (schema::public_key::Algorithm::Ed25519 as i32).to_le_bytes();
        let mut out = Vec::with_capacity(data.len() + 200);
        if self.signature_version == SIGNATURE_V0 {
            out.extend_from_slice(data);
            out.extend_from_slice(&algorithm);
            out.extend_from_slice(&self.next_public);
            return out;
        }
        out.extend_from_slice(b"\0BLOCK\0\0VERSION\0");
        out.extend_from_slice(&self.signature_version.to_le_bytes());
        out.extend_from_slice(b"\0PAYLOAD\0");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\0ALGORITHM\0");
        out.extend_from_slice(&algorithm);
        out.extend_from_slice(b"\0NEXTKEY\0");
        out.extend_from_slice(&self.next_public);
        out.extend_from_slice(b"\0PREVSIG\0");
        out.extend_from_slice(&self.previous_signature);
        out
    }

    /// The call block of `super::call_block`, encoded as biscuit-auth's `BlockBuilder::build`
    /// would: symbols interned in the order the builder meets them (each fact, then each check's
    /// head, body predicates and expressions), new ones listed in the block.
    fn block(&self, call: &CallFacts<'_>, expires: u64) -> schema::Block {
        let host = call.host.to_ascii_lowercase();
        let method = call.method.to_ascii_uppercase();
        let step = i64::try_from(call.step).unwrap_or(i64::MAX);
        let mut new = Symbols { minter: self, new: Vec::new() };
        let call_step = predicate(new.index("call_step"), vec![integer(step)]);
        let query = new.index("query");
        let call_check = rule(
            query,
            vec![
                predicate(new.index("host"), vec![string(new.index(&host))]),
                predicate(new.index("method"), vec![string(new.index(&method))]),
                predicate(new.index("path"), vec![string(new.index(call.path))]),
            ],
            Vec::new(),
        );
        let t = new.index("t");
        let variable = || term(schema::term::Content::Variable(u32::try_from(t).unwrap_or(u32::MAX)));
        let date = term(schema::term::Content::Date(expires));
        let expiry_check = rule(
            query,
            vec![predicate(new.index("time"), vec![variable()])],
            vec![schema::Expression {
                ops: vec![
                    value(variable()),
                    value(date),
                    schema::Op {
                        content: Some(schema::op::Content::Binary(schema::OpBinary {
                            kind: schema::op_binary::Kind::LessOrEqual as i32,
                            ffi_name: None,
                        })),
                    },
                ],
            }],
        );
        let model_check = match call.model {
            Some(model) => rule(query, vec![predicate(new.index("model"), vec![string(new.index(model))])], Vec::new()),
            None => rule(
                query,
                vec![predicate(new.index("no_model"), vec![term(schema::term::Content::Bool(true))])],
                Vec::new(),
            ),
        };
        let check = |q: schema::Rule| schema::Check { queries: vec![q], kind: None };
        schema::Block {
            symbols: new.new,
            context: None,
            version: Some(BLOCK_VERSION),
            facts: vec![schema::Fact { predicate: call_step }],
            rules: Vec::new(),
            checks: vec![check(call_check), check(expiry_check), check(model_check)],
            scope: Vec::new(),
            public_keys: Vec::new(),
        }
    }
}

/// The symbols a call block adds to its token.
struct Symbols<'a> {
    minter: &'a CallMinter,
    new: Vec<String>,
}

impl Symbols<'_> {
    /// The index of `s`: biscuit's default table, then the token's symbols, then this block's.
    fn index(&mut self, s: &str) -> u64 {
        if let Some(i) = self.minter.defaults.get(s) {
            return i;
        }
        if let Some(&i) = self.minter.symbols.get(s) {
            return i;
        }
        let base = SYMBOL_OFFSET + self.minter.symbols.len() as u64;
        if let Some(pos) = self.new.iter().position(|n| n == s) {
            return base + pos as u64;
        }
        self.new.push(s.to_owned());
        base + (self.new.len() - 1) as u64
    }
}

fn term(content: schema::term::Content) -> schema::Term {
    schema::Term { content: Some(content) }
}

fn string(index: u64) -> schema::Term {
    term(schema::term::Content::String(index))
}

fn integer(i: i64) -> schema::Term {
    term(schema::term::Content::Integer(i))
}

fn value(t: schema::Term) -> schema::Op {
    schema::Op { content: Some(schema::op::Content::Value(t)) }
}

fn predicate(name: u64, terms: Vec<schema::Term>) -> schema::Predicate {
    schema::Predicate { name, terms }
}

fn rule(head: u64, body: Vec<schema::Predicate>, expressions: Vec<schema::Expression>) -> schema::Rule {
    schema::Rule { head: predicate(head, Vec::new()), body, expressions, scope: Vec::new() }
}
