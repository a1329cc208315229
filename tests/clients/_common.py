"""Small helpers shared by the Python test clients (argument parsing and output only)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any, Callable


def header_arg(value: str) -> tuple[str, str]:
    """Parses `--header K=V`."""
    name, sep, val = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--header wants K=V, got {value!r}")
    return name, val


def headers_dict(pairs: list[tuple[str, str]] | None) -> dict[str, str]:
    return dict(pairs or [])


def emit(doc: Any) -> None:
    """Prints one JSON document on its own line and flushes it."""
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def run(main: Callable[[], None]) -> None:
    """Runs `main`; any exception goes to stderr and exits 1."""
    try:
        main()
    except SystemExit as exc:  # argparse: --help exits 0, a usage error 2 (made 1 here)
        sys.exit(0 if exc.code in (0, None) else 1)
    except BaseException as exc:  # noqa: BLE001 - report everything, swallow nothing
        traceback.print_exc(file=sys.stderr)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


def request_args(description: str) -> argparse.Namespace:
    """`METHOD URL [--data STRING] [--header K=V ...]`, shared by py_httpx and py_requests."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("method")
    p.add_argument("url")
    p.add_argument("--data", help="request body (sent as UTF-8)")
    p.add_argument("--header", type=header_arg, action="append", metavar="K=V")
    return p.parse_args()


def response_doc(status: int, headers: list[tuple[str, str]], body: bytes, http_version: str) -> dict:
    """The JSON document py_httpx, py_requests and node_fetch print. Repeated headers are joined
    with ", " (the HTTP list form)."""
    import base64

    merged: dict[str, str] = {}
    for name, value in headers:
        name = name.lower()
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return {
        "status": status,
        "headers": merged,
        "body_b64": base64.b64encode(body).decode("ascii"),
        "http_version": http_version,
    }
