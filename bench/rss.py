"""Open many client connections through the proxy and report its resident memory.

usage: rss.py PROXY_PID FORWARD_ADDR SIDECAR_ADDR UPSTREAM_HOST UPSTREAM_PORT CA_FILE N

Opens N/2 intercepted HTTPS connections through the forward proxy (CONNECT, TLS with the proxy's
leaf, one request each, then kept open) and N/2 keep-alive connections to the sidecar (one request
each, kept open), then reads VmRSS of the proxy after the connections have settled. Every
connection completes a real request, so each holds live TLS and HTTP state in the proxy.
"""
import asyncio
import base64
import os
import ssl
import sys
import time


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# Proxy credentials (RUN:TOKEN) for CONNECT; FLEETFORGE_BENCH_PROXY_AUTH, "rss:x" by default.
AUTH = base64.b64encode(os.environ.get("FLEETFORGE_BENCH_PROXY_AUTH", "rss:x").encode()).decode()

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def request(host: str) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head[:80])
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
    await reader.readexactly(length)


async def forward_conn(fwd: tuple, host: str, port: int, ctx: ssl.SSLContext, keep: list) -> None:
    reader, writer = await asyncio.open_connection(*fwd)
    writer.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: Basic {AUTH}\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    await writer.start_tls(ctx, server_hostname=host)
    writer.write(request(host))
    await read_response(reader)
    keep.append(writer)


async def sidecar_conn(side: tuple, keep: list) -> None:
    reader, writer = await asyncio.open_connection(*side)
    writer.write(request(f"{side[0]}:{side[1]}"))
    await read_response(reader)
    keep.append(writer)


async def main() -> None:
    pid, fwd, side, host, port, ca, n = sys.argv[1:8]
    pid, port, n = int(pid), int(port), int(n)
    fwd = (fwd.rsplit(":", 1)[0], int(fwd.rsplit(":", 1)[1]))
    side = (side.rsplit(":", 1)[0], int(side.rsplit(":", 1)[1]))
    ctx = ssl.create_default_context(cafile=ca)
    before = rss_kib(pid)
    keep: list = []
    sem = asyncio.Semaphore(32)

    async def limited(coro):
        async with sem:
            await coro

    t0 = time.monotonic()
    await asyncio.gather(*(limited(forward_conn(fwd, host, port, ctx, keep)) for _ in range(n // 2)))
    await asyncio.gather(*(limited(sidecar_conn(side, keep)) for _ in range(n - n // 2)))
    opened = time.monotonic() - t0
    await asyncio.sleep(2)
    after = rss_kib(pid)
    print(
        f"| open client connections | {len(keep)} ({n // 2} intercepted TLS, {n - n // 2} sidecar), opened in {opened:.1f} s |\n"
        f"| proxy RSS before | {before / 1024:.1f} MiB |\n"
        f"| proxy RSS with them open | {after / 1024:.1f} MiB |"
    )
    for w in keep:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
