"""An independent checker of FleetForge's SCITT artifacts, written from the specifications and
not from the product: RFC 9052 COSE_Sign1 (Sig_structure "Signature1") decoded with `cbor2`,
RFC 9597 CWT claims in the protected header, Ed25519 with `cryptography`, and COSE receipts of
draft-ietf-cose-merkle-tree-proofs (verifiable data structure RFC9162_SHA256: an inclusion proof
[size, index, path] in unprotected header 396 / -1, the signature over the tree head it leads to,
the payload detached), the head recomputed as RFC 9162 §2.1.3.2 walks an audit path.

Usage: scitt_verify.py STATEMENT.cose [RECEIPT.cose LOG_PUBLIC_KEY_B64URL]
       scitt_verify.py sign OUT.cose SUBJECT   (an external statement: a fresh Ed25519 key,
                                                its did:key as iss; prints the did)
Prints one JSON object:
  {"tag": int|null, "alg": int, "content_type": str|null, "kid": str|null,
   "iss": str, "sub": str, "iat": int|null, "payload": str|null (UTF-8 text),
   "statement_signature": bool|null (when iss is an ed25519 did:key),
   "receipt": null | {"vds": int, "iss": str, "sub": str, "size": int, "index": int,
                      "root": hex, "signature": bool}}
Exits 0 when every signature present verified, 1 otherwise.
"""

import base64
import hashlib
import json
import sys

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58decode(s: str) -> bytes:
    n = 0
    for c in s:
        n = n * 58 + B58.index(c)
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * (len(s) - len(s.lstrip("1"))) + raw


def b58encode(raw: bytes) -> str:
    n = int.from_bytes(raw, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\x00"))) + out


def sign(path: str, subject: str) -> int:
    """Writes a tagged COSE_Sign1 signed statement made here, from RFC 9052 and RFC 9597."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    did = "did:key:z" + b58encode(b"\xed\x01" + public)
    protected = cbor2.dumps({1: -8, 3: "application/json", 15: {1: did, 2: subject}})
    payload = json.dumps({"model": "gpt-4o", "evaluation": "passed"}).encode()
    signature = key.sign(sig_structure(protected, payload))
    with open(path, "wb") as f:
        f.write(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature])))
    print(did)
    return 0


def did_key_ed25519(did: str):
    """did:key:z… with multicodec 0xed 0x01 (ed25519-pub) → raw key, else None."""
    if not did.startswith("did:key:z"):
        return None
    raw = b58decode(did[len("did:key:z"):])
    if raw[:2] != b"\xed\x01" or len(raw) != 34:
        return None
    return raw[2:]


def decode_sign1(data: bytes):
    obj = cbor2.loads(data)
    tag = None
    if isinstance(obj, cbor2.CBORTag):
        tag = obj.tag
        obj = obj.value
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        raise ValueError("not a COSE_Sign1 array of four")
    protected_bstr, unprotected, payload, signature = obj
    protected = cbor2.loads(protected_bstr) if protected_bstr else {}
    return tag, protected_bstr, protected, unprotected, payload, signature


def sig_structure(protected_bstr: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected_bstr, b"", payload])


def ed25519_ok(key: bytes, sig: bytes, msg: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, msg)
        return True
    except InvalidSignature:
        return False


def main() -> int:
    if sys.argv[1] == "sign":
        return sign(sys.argv[2], sys.argv[3])
    statement = open(sys.argv[1], "rb").read()
    tag, pb, prot, _unprot, payload, sig = decode_sign1(statement)
    claims = prot.get(15) or {}
    kid = prot.get(4)
    out = {
        "tag": tag,
        "alg": prot.get(1),
        "content_type": prot.get(3),
        "kid": kid.decode("utf-8", "replace") if isinstance(kid, bytes) else kid,
        "iss": claims.get(1),
        "sub": claims.get(2),
        "iat": claims.get(6),
        "payload": payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None,
        "statement_signature": None,
        "receipt": None,
    }
    ok = True
    key = did_key_ed25519(claims.get(1) or "")
    if key is not None and prot.get(1) == -8 and payload is not None:
        out["statement_signature"] = ed25519_ok(key, sig, sig_structure(pb, payload))
        ok = ok and out["statement_signature"]
    if len(sys.argv) > 3:
        receipt = open(sys.argv[2], "rb").read()
        log_key = base64.urlsafe_b64decode(sys.argv[3] + "=" * (-len(sys.argv[3]) % 4))
        _tag, rpb, rprot, runprot, rpayload, rsig = decode_sign1(receipt)
        if rpayload is not None:
            raise ValueError("a COSE receipt's payload is detached (nil)")
        proofs = runprot.get(396) or {}
        size, index, path = cbor2.loads(proofs[-1][0])
        # The tree head the proof leads to from the statement's leaf (its data: SHA-256 of the
        # statement), recomputed by RFC 9162 §2.1.3.2; the signature must cover exactly it.
        leaf = hashlib.sha256(statement).digest()
        root = recompute_root(leaf, index, size, path)
        rclaims = rprot.get(15) or {}
        good = root is not None and ed25519_ok(log_key, rsig, sig_structure(rpb, root))
        out["receipt"] = {
            "vds": rprot.get(395),
            "iss": rclaims.get(1),
            "sub": rclaims.get(2),
            "size": size,
            "index": index,
            "root": root.hex() if root else None,
            "signature": good,
        }
        ok = ok and good and rprot.get(395) == 1
    print(json.dumps(out))
    return 0 if ok else 1


def recompute_root(leaf: bytes, index: int, size: int, path: list):
    """The head an audit path leads to from a leaf (RFC 9162 §2.1.3.2); None if it cannot."""
    if index >= size:
        return None
    fn, sn = index, size - 1
    r = hashlib.sha256(b"\x00" + leaf).digest()
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


if __name__ == "__main__":
    sys.exit(main())
