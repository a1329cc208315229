"""Reads a C2PA manifest store sidecar against its asset with the C2PA project's own reader
(c2pa-python, the official Python binding of the Content Authenticity Initiative's SDK), trusting
one CA for signers with the C2PA claim-signing EKU, and prints what it found — independently of FleetForge's code.

Usage: c2pa_read.py MANIFEST.c2pa ASSET CA.pem
Prints one JSON object: {"state": "Trusted"|"Valid"|"Invalid", "failures": [codes],
"assertion": the com.fleetforge.run assertion or null, "signer": issuer of the signing certificate}.
"""

import json
import sys

import c2pa


def main() -> int:
    manifest = open(sys.argv[1], "rb").read()
    ca = open(sys.argv[3], encoding="utf-8").read()
    # A trust policy as the C2PA trust list ships one: the anchors, and the extended key usages
    # a signer may carry (store.cfg) — here the C2PA claim-signing EKU.
    settings = c2pa.Settings.from_dict({"trust": {"trust_anchors": ca, "trust_config": "1.3.6.1.4.1.62558.2.1\n"}})
    context = c2pa.Context(settings)
    with open(sys.argv[2], "rb") as asset:
        reader = c2pa.Reader("application/octet-stream", asset, manifest_data=manifest, context=context)
        store = json.loads(reader.json())
        state = reader.get_validation_state()
        results = reader.get_validation_results() or {}
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    assertion = next((a.get("data") for a in active.get("assertions", []) if a.get("label") == "com.fleetforge.run"), None)
    failures = [f.get("code") for f in (results.get("activeManifest") or {}).get("failure", [])]
    print(json.dumps({
        "state": str(state),
        "failures": failures,
        "assertion": assertion,
        "signer": (active.get("signature_info") or {}).get("issuer"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
