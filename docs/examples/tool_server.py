"""A tool server that refuses every call without a valid FleetForge capability.

FleetForge's proxy sends each call to a tool upstream with `x-fleetforge-capability`: a Biscuit
attenuated to exactly that call (host, method, path, model, a short expiry). This server checks
it offline with control's capability root public key — no call to control per request — and
answers 401 when the header is missing, forged, expired, revoked-by-expiry, or for another call.

    pip install biscuit-python==0.4.0
    ROOT_KEYS='1=<base64url public key from GET /v1/keys, kind capability-root>' \
    TOOL_HOST=tools.internal.example python tool_server.py 127.0.0.1:9300

It prints one JSON line {"listen": "127.0.0.1:PORT"} when it is ready.
"""

import base64
import datetime
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import biscuit_auth as biscuit


def root_keys():
    """Control's root public keys by id, from ROOT_KEYS="ID=BASE64URL[,ID=BASE64URL]"."""
    keys = {}
    for entry in os.environ["ROOT_KEYS"].split(","):
        key_id, b64 = entry.split("=", 1)
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        keys[int(key_id)] = biscuit.PublicKey.from_bytes(raw, biscuit.Algorithm.Ed25519)
    return keys


KEYS = root_keys()
TOOL_HOST = os.environ.get("TOOL_HOST", "localhost")


def check(token, method, path):
    """The run id if `token` allows `method path` on this tool now; raises otherwise."""
    def root(key_id):
        if key_id not in KEYS:
            raise ValueError(f"unknown root key id {key_id}")
        return KEYS[key_id]

    token = biscuit.Biscuit.from_base64(token, root)
    authorizer = biscuit.AuthorizerBuilder(
        """
        host({host}); method({method}); path({path}); no_model(true);
        allow if run($run);
        """,
        {"host": TOOL_HOST, "method": method.upper(), "path": path},
    )
    authorizer.set_time()
    authorizer = authorizer.build(token)
    authorizer.authorize()
    facts = authorizer.query(biscuit.Rule("data($r) <- run($r)"))
    return facts[0].terms[0] if facts else "?"


class Tool(BaseHTTPRequestHandler):
    def handle_call(self):
        token = self.headers.get("x-fleetforge-capability")
        path = self.path.split("?", 1)[0]
        if not token:
            return self.answer(401, {"error": "no x-fleetforge-capability: calls must come through FleetForge"})
        try:
            run = check(token, self.command, path)
        except Exception as e:  # noqa: BLE001 — every failure is a refusal
            return self.answer(401, {"error": f"capability refused: {e}"})
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        return self.answer(200, {"tool": "search", "run": run, "path": path, "bytes": len(body)})

    do_GET = do_POST = handle_call

    def answer(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    host, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:0").rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Tool)
    print(json.dumps({"listen": f"{server.server_address[0]}:{server.server_address[1]}"}), flush=True)
    server.serve_forever()
