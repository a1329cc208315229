#!/usr/bin/env python3
"""One HTTP request with the real `httpx` 0.28 (`trust_env=True`), configured only by the env.

Env: HTTPS_PROXY/HTTP_PROXY/ALL_PROXY/NO_PROXY (any case), SSL_CERT_FILE or SSL_CERT_DIR
(without them httpx 0.28 trusts certifi's roots only).
Prints the body as received after de-chunking, *not* content-decoded.
"""

from __future__ import annotations

import httpx

from _common import emit, headers_dict, request_args, response_doc, run


def main() -> None:
    args = request_args(__doc__)
    data = args.data.encode() if args.data is not None else None
    with httpx.Client(trust_env=True, timeout=60.0) as client:
        with client.stream(args.method, args.url, content=data, headers=headers_dict(args.header)) as r:
            body = b"".join(r.iter_raw())
            emit(response_doc(r.status_code, r.headers.multi_items(), body, r.http_version))


if __name__ == "__main__":
    run(main)
