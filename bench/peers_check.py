"""Check that bench/peers.sh's forward-full row does every piece of trust work it is named for.

usage: peers_check.py CONTROL_URL CONTROL_TOKEN RUN ADMIN_URL

Waits (at most 30 s) for the run's receipts of the check calls at control, then requires of every
one: allowed by three Wasm packs, a run token checked and a per-call token minted, a budget
reserved and settled, request and response sealed, a trace id, a signed chain link; and the
proxy's metrics to count spans exported over OTLP. Prints what is missing and exits 1.
"""
import json
import re
import sys
import time
import urllib.request


def get(url: str, token: str | None = None):
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def main() -> int:
    control, token, run, admin = sys.argv[1:5]
    receipts: list = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        receipts = json.loads(get(f"{control}/v1/runs/{run}/receipts?limit=100", token))["receipts"]
        if len(receipts) >= 2:
            break
        time.sleep(0.2)
    problems = []
    if len(receipts) < 2:
        problems.append(f"control holds {len(receipts)} receipts of run {run}, expected the 2 check calls'")
    for r in receipts:
        rid = r["id"]
        packs = r["decision"].get("policy_packs") or []
        checks = {
            "allowed": r["decision"].get("allow") is True,
            "three policy packs": len(packs) == 3,
            "run token checked": bool((r.get("capability") or {}).get("token_id")),
            "per-call token minted": bool((r.get("capability") or {}).get("call_token_id")),
            "budget reserved": (r.get("budget") or {}).get("reserved_tokens", 0) > 0,
            "budget settled": (r.get("budget") or {}).get("tokens_left") is not None,
            "request sealed": bool(r["seal"].get("request_blob")),
            "response sealed": bool(r["seal"].get("response_meta")),
            "traced": bool((r.get("trace") or {}).get("trace_id")),
            "signed": bool((r.get("signature") or {}).get("sig")),
        }
        problems += [f"receipt {rid}: not {what}" for what, ok in checks.items() if not ok]
    deadline = time.monotonic() + 10
    spans = 0.0
    while time.monotonic() < deadline:
        metrics = get(f"{admin}/metrics")
        spans = sum(float(v) for v in re.findall(r'^fleetforge_otel_spans_total\{result="exported"\} (\S+)$', metrics, re.M))
        if spans >= 2:
            break
        time.sleep(0.2)
    if spans < 2:
        problems.append(f"the proxy reports {spans:.0f} spans exported over OTLP, expected at least 2")
    for p in problems:
        print(f"peers_check: {p}", file=sys.stderr)
    if not problems:
        print(f"peers_check: forward-full did all the trust work on {len(receipts)} calls", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
