#!/usr/bin/env python3
"""Load through the proxy with the real `httpx` 0.28, for the chaos tests and `scripts/soak`.

CONCURRENCY clients POST to URLS in turn (or the calls of a --calls file: a JSON list of
{"url", "body", "headers"}, e.g. JSON, SSE, tool and denied calls) through HTTP_PROXY /
HTTPS_PROXY from the environment (`trust_env`) until COUNT calls were made or DURATION seconds
passed, each client on its own keep-alive connection. One line per call on
stdout as it ends, flushed:

    <status> <x-fleetforge-receipt or -> <milliseconds> <url index>
    error <exception class> <milliseconds> <url index>

A call "completed" when its whole body was read. Errors do not stop the load (a killed proxy is
the point of the chaos tests): the client waits 50 ms and goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx


async def client(args: argparse.Namespace, calls: list[dict], state: dict, k: int) -> None:
    if args.runs:
        # Client k charges its calls to run <x-fleetforge-run>-<k mod RUNS>: a fleet of agents.
        calls = [{**c, "headers": {**c["headers"], "x-fleetforge-run": f"{c['headers']['x-fleetforge-run']}-{k % args.runs}"}}
                 for c in calls]
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(trust_env=True, timeout=args.timeout, limits=limits) as c:
        while state["made"] < args.count and time.monotonic() < state["end"]:
            i = state["made"] % len(calls)
            state["made"] += 1
            call = calls[i]
            started = time.monotonic()
            try:
                async with c.stream("POST", call["url"], content=call["body"], headers=call["headers"]) as r:
                    async for _ in r.aiter_raw():
                        pass
                ms = (time.monotonic() - started) * 1e3
                print(f"{r.status_code} {r.headers.get('x-fleetforge-receipt', '-')} {ms:.1f} {i}", flush=True)
            except (httpx.HTTPError, OSError) as e:
                ms = (time.monotonic() - started) * 1e3
                print(f"error {type(e).__name__} {ms:.1f} {i}", flush=True)
                await asyncio.sleep(0.05)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("urls", nargs="*", help="URLs to POST --body to, in turn")
    p.add_argument("--calls", help="a JSON file: a list of {url, body, headers} to make in turn")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--count", type=int, default=sys.maxsize, help="calls in all (default: no limit)")
    p.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600)")
    p.add_argument("--timeout", type=float, default=30.0, help="per call, seconds")
    p.add_argument("--body", default='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}')
    p.add_argument("--header", action="append", default=[], help="NAME=VALUE, repeatable")
    p.add_argument("--runs", type=int, default=0,
                   help="spread the clients over N runs: x-fleetforge-run gets -0 .. -(N-1) appended")
    args = p.parse_args()
    headers = {"content-type": "application/json"}
    for h in args.header:
        k, _, v = h.partition("=")
        headers[k] = v
    calls = [{"url": u, "body": args.body.encode(), "headers": headers} for u in args.urls]
    if args.calls:
        with open(args.calls, encoding="utf-8") as f:
            for c in json.load(f):
                body = c.get("body", "")
                body = body if isinstance(body, str) else json.dumps(body)
                calls.append({"url": c["url"], "body": body.encode(), "headers": {**headers, **c.get("headers", {})}})
    if not calls:
        p.error("give URLs or --calls")
    if args.runs and not all("x-fleetforge-run" in c["headers"] for c in calls):
        p.error("--runs needs --header x-fleetforge-run=PREFIX")
    state = {"made": 0, "end": time.monotonic() + args.duration}
    await asyncio.gather(*(client(args, calls, state, k) for k in range(args.concurrency)))


if __name__ == "__main__":
    asyncio.run(main())
