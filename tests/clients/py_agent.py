#!/usr/bin/env python3
"""A small agent for record/replay tests: a fixed sequence of calls through the real `openai` and
`anthropic` SDKs, configured only by the environment, printing one JSON line per answer.

Calls, in order: a chat completion; the same prompt twice more to a sampling model (identical
requests answered differently); a streamed chat completion; a chat completion whose prompt
`--change` replaces; an Anthropic streamed message. `--concurrent N` instead sends N chat
completions with different prompts at once and prints their answers sorted by prompt.

Env: OPENAI_BASE_URL/OPENAI_API_KEY, ANTHROPIC_BASE_URL/ANTHROPIC_API_KEY, HTTPS_PROXY,
SSL_CERT_FILE.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai

from _common import emit, run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--change", help="prompt of the fifth call (default: the recorded one)")
    p.add_argument("--concurrent", type=int, default=0)
    args = p.parse_args()
    oa = openai.OpenAI(max_retries=0)

    def chat(prompt: str, sample: bool = False) -> str:
        extra = {"x-test-sample": "1"} if sample else {}
        r = oa.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=64,
            messages=[{"role": "user", "content": prompt}],
            extra_headers=extra,
        )
        return r.choices[0].message.content

    if args.concurrent:
        prompts = [f"Question {i}: what is {i} squared?" for i in range(args.concurrent)]
        with ThreadPoolExecutor(max_workers=args.concurrent) as pool:
            answers = list(pool.map(chat, prompts))
        for prompt, answer in sorted(zip(prompts, answers)):
            emit({"prompt": prompt, "answer": answer})
        return

    emit({"call": 1, "answer": chat("What is the capital of France?")})
    emit({"call": 2, "answer": chat("Pick a random number.", sample=True)})
    emit({"call": 3, "answer": chat("Pick a random number.", sample=True)})
    parts = []
    with oa.chat.completions.create(
        model="gpt-4o-mini",
        max_tokens=64,
        messages=[{"role": "user", "content": "Stream a short poem."}],
        stream=True,
    ) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
    emit({"call": 4, "answer": "".join(parts), "pieces": len(parts)})
    try:
        emit({"call": 5, "answer": chat(args.change or "Summarise the plan in one line.")})
    except openai.APIStatusError as e:
        emit({"call": 5, "status": e.status_code, "error": e.body})
    text = []
    with anthropic.Anthropic(max_retries=0).messages.stream(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "Say hello in French."}],
    ) as stream:
        for t in stream.text_stream:
            text.append(t)
    emit({"call": 6, "answer": "".join(text), "pieces": len(text)})


if __name__ == "__main__":
    run(main)
