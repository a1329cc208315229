#!/usr/bin/env python3
"""Chat completion through the real `openai` SDK, configured only by the environment.

Env: OPENAI_BASE_URL, OPENAI_API_KEY, HTTPS_PROXY/HTTP_PROXY/NO_PROXY, SSL_CERT_FILE.
"""

from __future__ import annotations

import argparse
import time

import openai

from _common import emit, header_arg, headers_dict, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt", default="Say hello.")
    p.add_argument("--header", type=header_arg, action="append", metavar="K=V")
    # 0 by default so a proxy's refusal (429, 5xx) is reported at once, not retried and hidden.
    p.add_argument("--max-retries", type=int, default=0)
    args = p.parse_args()

    client = openai.OpenAI(max_retries=args.max_retries)
    kwargs = dict(
        model=args.model,
        max_tokens=args.max_tokens,
        messages=[{"role": "user", "content": args.prompt}],
        extra_headers=headers_dict(args.header),
    )
    if not args.stream:
        r = client.chat.completions.create(**kwargs)
        emit({
            "id": r.id,
            "model": r.model,
            "content": r.choices[0].message.content if r.choices else None,
            "usage": r.usage.model_dump() if r.usage else None,
        })
        return

    start = time.perf_counter()
    parts: list[str] = []
    chunks = 0
    finish_reason = None
    with client.chat.completions.create(stream=True, **kwargs) as stream:
        for chunk in stream:
            chunks += 1
            delta = (chunk.choices[0].delta.content or "") if chunk.choices else ""
            if chunk.choices and chunk.choices[0].finish_reason:
                finish_reason = chunk.choices[0].finish_reason
            parts.append(delta)
            emit({"t_ms": (time.perf_counter() - start) * 1000.0, "content": delta})
    emit({"done": True, "content": "".join(parts), "chunks": chunks, "finish_reason": finish_reason})


if __name__ == "__main__":
    run(main)
