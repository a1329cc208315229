"""An independent checker of FleetForge's transparency log, written from the specifications and
not from the product: RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) with Python's
hashlib, and the C2SP signed-note / tlog-checkpoint formats with `cryptography`'s Ed25519.

Reads one JSON document from the file named by its argument:
  {"public_key": base64url raw ed25519 key, "head": GET /v1/log/{tenant}/head,
   "inclusions": [{"leaf_data": hex receipt hash computed by the caller, "proof": GET …/inclusion/{id}}],
   "consistency": GET …/consistency or null, "old_root": hex or null}
Prints one JSON object: {"checkpoint": bool, "inclusions": [bool…], "consistency": bool|null}.
"""

import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def verify_inclusion(leaf_data: bytes, index: int, size: int, path: list, root: bytes) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn = index, size - 1
    r = h(b"\x00" + leaf_data)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = h(b"\x01" + p + r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = h(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_hash: bytes, second_hash: bytes, path: list) -> bool:
    """RFC 9162 §2.1.4.2."""
    if first == second:
        return not path and first_hash == second_hash
    if not path or first == 0 or first > second:
        return False
    if first & (first - 1) == 0:
        path = [first_hash] + path
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = h(b"\x01" + c + fr)
            sr = h(b"\x01" + c + sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = h(b"\x01" + sr + c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0


def verify_checkpoint(note: str, name: str, key: bytes, size: int, root: bytes) -> bool:
    """C2SP signed-note with an Ed25519 key, carrying a C2SP tlog-checkpoint body."""
    text, sep, sigs = note.partition("\n\n")
    if not sep:
        return False
    text += "\n"
    lines = text.split("\n")
    if lines[0] != name or lines[1] != str(size) or base64.b64decode(lines[2]) != root:
        return False
    key_hash = h(name.encode() + b"\n\x01" + key)[:4]
    public = Ed25519PublicKey.from_public_bytes(key)
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            continue
        signer, _, b64 = line[2:].partition(" ")
        sig = base64.b64decode(b64)
        if signer != name or sig[:4] != key_hash:
            continue
        try:
            public.verify(sig[4:], text.encode())
            return True
        except InvalidSignature:
            pass
    return False


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        doc = json.load(f)
    key = base64.urlsafe_b64decode(doc["public_key"] + "=" * (-len(doc["public_key"]) % 4))
    head = doc["head"]
    root = bytes.fromhex(head["root"])
    out = {
        "checkpoint": verify_checkpoint(head["checkpoint"], head["origin"], key, head["size"], root),
        "inclusions": [
            verify_inclusion(
                bytes.fromhex(i["leaf_data"]),
                i["proof"]["index"],
                i["proof"]["size"],
                [bytes.fromhex(p) for p in i["proof"]["path"]],
                root,
            )
            for i in doc["inclusions"]
        ],
        "consistency": None,
    }
    c = doc.get("consistency")
    if c is not None:
        out["consistency"] = verify_consistency(
            c["from"], c["to"], bytes.fromhex(doc["old_root"]), root, [bytes.fromhex(p) for p in c["proof"]]
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
