#!/usr/bin/env python3
"""An unmodified LangGraph graph (two nodes, each an OpenAI chat call through the `openai` SDK),
configured only by the environment: FleetForge sees it through HTTPS_PROXY and SSL_CERT_FILE.

Env: OPENAI_BASE_URL, OPENAI_API_KEY, HTTPS_PROXY/HTTP_PROXY, SSL_CERT_FILE.
Prints the graph's final state as JSON, with the receipt id of each node's call.
"""

from __future__ import annotations

from typing import TypedDict

import openai
from langgraph.graph import END, START, StateGraph

from _common import emit, run


class State(TypedDict, total=False):
    topic: str
    plan: str
    review: str
    receipts: list[str]


def chat(prompt: str) -> tuple[str, str]:
    client = openai.OpenAI(max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=32, messages=[{"role": "user", "content": prompt}]
    )
    return raw.parse().choices[0].message.content, raw.headers.get("x-fleetforge-receipt", "")


def plan(state: State) -> State:
    text, receipt = chat(f"Plan a short trip about {state['topic']}.")
    return {"plan": text, "receipts": state.get("receipts", []) + [receipt]}


def review(state: State) -> State:
    text, receipt = chat(f"Review this plan: {state['plan']}")
    return {"review": text, "receipts": state["receipts"] + [receipt]}


def main() -> None:
    graph = StateGraph(State)
    graph.add_node("plan", plan)
    graph.add_node("review", review)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "review")
    graph.add_edge("review", END)
    emit(graph.compile().invoke({"topic": "Oslo", "receipts": []}))


if __name__ == "__main__":
    run(main)
