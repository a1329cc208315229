#!/usr/bin/env python3
"""One HTTP request with the real `requests`, configured only by the environment.

Env: HTTPS_PROXY/HTTP_PROXY/ALL_PROXY/NO_PROXY (any case), REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE;
without either, certifi's roots).
Prints the body as received after de-chunking, *not* content-decoded.
"""

from __future__ import annotations

import requests

from _common import emit, headers_dict, request_args, response_doc, run

HTTP_VERSIONS = {9: "HTTP/0.9", 10: "HTTP/1.0", 11: "HTTP/1.1", 20: "HTTP/2"}


def main() -> None:
    args = request_args(__doc__)
    data = args.data.encode() if args.data is not None else None
    with requests.Session() as session:
        r = session.request(args.method, args.url, data=data, headers=headers_dict(args.header),
                            stream=True, timeout=60)
        with r:
            body = r.raw.read(decode_content=False)
            headers = list(r.raw.headers.items())  # urllib3 HTTPHeaderDict: one pair per line
            version = HTTP_VERSIONS.get(r.raw.version, str(r.raw.version))
            emit(response_doc(r.status_code, headers, body, version))


if __name__ == "__main__":
    run(main)
