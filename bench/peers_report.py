"""The table of bench/peers.sh: medians over rounds, ratios, and the bars the proxy is held to.

usage: peers_report.py ROWS.tsv TTFB.tsv CLK_TCK COMMAND VERSIONS RSS_LINE SKIPPED [PROFILE_SVG]
ROWS.tsv lines: row, mode, round, oha JSON, row CPU ticks, control CPU ticks, Postgres CPU ticks,
ingest drain seconds ("-" for rows that record nothing). TTFB.tsv lines: row, oha JSON.
"""
import datetime
import json
import os
import platform
import re
import statistics
import sys
from collections import defaultdict

ROWS = ("direct", "sidecar", "forward-full", "nginx", "mitmproxy", "litellm")
MODES = {"nonstream": "JSON", "stream": "SSE"}


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def ok_count(d: dict) -> int:
    return sum(v for k, v in d.get("statusCodeDistribution", {}).items() if k.startswith("2"))


def errors(d: dict) -> int:
    bad = sum(v for k, v in d.get("statusCodeDistribution", {}).items() if not k.startswith("2"))
    # oha cancels the requests in flight when the window ends; those are not errors.
    return bad + sum(v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k)


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}"


def main() -> None:
    rows_path, ttfb_path, clk, command, versions, rss_line, skipped = sys.argv[1:8]
    svg = sys.argv[8] if len(sys.argv) > 8 else ""
    clk = int(clk)
    runs = defaultdict(list)
    for line in open(rows_path):
        row, mode, _rnd, path, ticks, control, pg, drain = line.rstrip("\n").split("\t")
        d = load(path)
        ok = max(ok_count(d), 1)
        runs[(row, mode)].append({
            "rps": ok_count(d) / d["summary"]["total"],
            "p50": d["latencyPercentiles"]["p50"] * 1000,
            "p99": d["latencyPercentiles"]["p99"] * 1000,
            "cpu": int(ticks) * 1e6 / clk / ok,
            "control": int(control) * 1e6 / clk / ok,
            "pg": int(pg) * 1e6 / clk / ok,
            "drain": None if drain == "-" else float(drain),
            "errors": errors(d),
        })
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("rps", "p50", "p99", "cpu", "control", "pg")}
           for k, v in runs.items()}
    for k, v in runs.items():
        med[k]["errors"] = sum(r["errors"] for r in v)
        med[k]["rounds"] = len(v)
        rps = [r["rps"] for r in v]
        med[k]["spread"] = (max(rps) - min(rps)) / 2 / statistics.mean(rps) * 100 if len(rps) > 1 else 0.0
        drains = [r["drain"] for r in v if r["drain"] is not None]
        med[k]["drain"] = max(drains) if drains else None

    def ratio(a: str, b: str, mode: str, field: str = "rps"):
        x, y = med.get((a, mode)), med.get((b, mode))
        return x[field] / y[field] if x and y and y[field] else None

    out = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out.append(f"# Peer benchmark, {now}\n")
    out.append(f"`{command}` on {machine()}; {versions}.\n")
    out.append("Medians over the rounds. CPU µs/req: the row's own processes (for direct, none), from "
               "/proc over the measured window. forward-full's control and Postgres columns are the "
               "ingest of its receipts, counted until control held all of them.\n")
    out.append("| row | mode | req/s | spread | × direct | × nginx | p50 ms | p99 ms | CPU µs/req "
               "| control µs/req | Postgres µs/req | drain s | errors |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in ROWS:
        for mode, label in MODES.items():
            m = med.get((row, mode))
            if not m:
                continue
            vd, vn = ratio(row, "direct", mode), ratio(row, "nginx", mode)
            full = row == "forward-full"
            out.append(
                f"| {row} | {label} | {m['rps']:,.0f} | ±{m['spread']:.0f}% | {vd:.3f} | "
                + (f"{vn:.2f}" if vn else "–")
                + f" | {m['p50']:.2f} | {m['p99']:.2f} | "
                + ("–" if row == "direct" else f"{m['cpu']:.1f}")
                + (f" | {m['control']:.1f} | {m['pg']:.1f} | {m['drain']:.2f}" if full and m["drain"] is not None else " | – | – | –")
                + f" | {m['errors']} |"
            )
    if skipped:
        out.append(f"\nSkipped: {skipped}")

    ttfb = {}
    if os.path.exists(ttfb_path):
        for line in open(ttfb_path):
            row, path = line.rstrip("\n").split("\t")
            d = load(path)
            fb = d.get("firstBytePercentiles") or {}
            if fb.get("p50") is not None:
                ttfb[row] = (fb["p50"] * 1000, d["latencyPercentiles"]["p50"] * 1000)
    if ttfb:
        delay = re.search(r"--ttfb-delay-ms (\d+)", command)
        out.append(f"\nSSE with the upstream pacing events {delay.group(1) if delay else '?'} ms apart, "
                   "one connection, 50 calls:\n")
        out.append("| row | first byte p50 ms | whole stream p50 ms |")
        out.append("|---|---:|---:|")
        for row in ROWS:
            if row in ttfb:
                out.append(f"| {row} | {ttfb[row][0]:.2f} | {ttfb[row][1]:.2f} |")

    rss_mib = None
    if rss_line:
        out.append("\n" + rss_line.replace("| |", "|\n|").strip())
        m = re.search(r"proxy RSS with them open \| ([\d.]+) MiB", rss_line)
        rss_mib = float(m.group(1)) if m else None

    # The bars (docs/reference/status-and-acceptance.md, issue "deploy + peer benchmark").
    bars = []

    def bar(text: str, value, limit, higher: bool, fmt: str = "{:.2f}") -> None:
        if value is None:
            bars.append(f"| {text} | not measured | |")
            return
        met = value >= limit if higher else value <= limit
        bars.append(f"| {text} | {fmt.format(value)} | {'met' if met else '**not met**'} |")

    for mode, label in MODES.items():
        bar(f"{label}: forward-full ≥ 10× mitmproxy's req/s", ratio("forward-full", "mitmproxy", mode), 10, True)
        bar(f"{label}: forward-full ≥ 30× LiteLLM's req/s", ratio("forward-full", "litellm", mode), 30, True)
        bar(f"{label}: forward-full ≥ 0.5× nginx's req/s", ratio("forward-full", "nginx", mode), 0.5, True)
        bar(f"{label}: forward-full p50 ≤ 1.5× nginx's", ratio("forward-full", "nginx", mode, "p50"), 1.5, False)
        bar(f"{label}: sidecar ≥ 0.9× nginx's req/s", ratio("sidecar", "nginx", mode), 0.9, True)
        bar(f"{label}: sidecar CPU/req ≤ 1.3× nginx's", ratio("sidecar", "nginx", mode, "cpu"), 1.3, False)
    full = med.get(("forward-full", "nonstream"))
    bar("JSON: forward-full proxy CPU ≤ 100 µs/req", full["cpu"] if full else None, 100, False, "{:.1f} µs")
    for row in ("forward-full", "sidecar"):
        gap = ttfb[row][0] - ttfb["nginx"][0] if row in ttfb and "nginx" in ttfb else None
        bar(f"SSE first byte: {row} within 1 ms of nginx's", gap, 1.0, False, "{:+.2f} ms")
    bar("forward-full RSS with the open connections ≤ 64 MiB", rss_mib, 64, False, "{:.1f} MiB")
    out.append("\n| bar | this run | |\n|---|---:|---|")
    out += bars
    if svg:
        out.append(f"\nWhere forward-full spends its CPU under the JSON load: [{svg}]({svg}) (perf, flame graph).")
    print("\n".join(out))


if __name__ == "__main__":
    main()
