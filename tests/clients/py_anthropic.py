#!/usr/bin/env python3
"""Message through the real `anthropic` SDK, configured only by the environment.

Env: ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY, HTTPS_PROXY/HTTP_PROXY/NO_PROXY, SSL_CERT_FILE.
"""

from __future__ import annotations

import argparse
import time

import anthropic

from _common import emit, header_arg, headers_dict, run

# The SSE event types Anthropic sends. `messages.stream()` also yields events it synthesises
# (`text`, `citation`, ...); those are skipped so `chunks` counts what came over the wire.
RAW_EVENTS = {
    "message_start",
    "message_delta",
    "message_stop",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--model", default="claude-haiku-4-5")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default="Say hello.")
    p.add_argument("--header", type=header_arg, action="append", metavar="K=V")
    # 0 by default so a proxy's refusal (429, 5xx) is reported at once, not retried and hidden.
    p.add_argument("--max-retries", type=int, default=0)
    args = p.parse_args()

    client = anthropic.Anthropic(max_retries=args.max_retries)
    kwargs = dict(
        model=args.model,
        max_tokens=args.max_tokens,
        messages=[{"role": "user", "content": args.prompt}],
        extra_headers=headers_dict(args.header),
    )
    if not args.stream:
        r = client.messages.create(**kwargs)
        emit({
            "id": r.id,
            "model": r.model,
            "content": "".join(b.text for b in r.content if b.type == "text"),
            "usage": r.usage.model_dump(),
        })
        return

    start = time.perf_counter()
    parts: list[str] = []
    chunks = 0
    with client.messages.stream(**kwargs) as stream:
        for event in stream:
            if event.type not in RAW_EVENTS:
                continue
            chunks += 1
            text = ""
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text = event.delta.text
            parts.append(text)
            emit({"t_ms": (time.perf_counter() - start) * 1000.0, "content": text, "type": event.type})
        final = stream.get_final_message()
    emit({
        "done": True,
        "content": "".join(parts),
        "chunks": chunks,
        "usage": final.usage.model_dump(),
        "stop_reason": final.stop_reason,
    })


if __name__ == "__main__":
    run(main)
