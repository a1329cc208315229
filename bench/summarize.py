"""Summarize bench/run.sh results: one row per scenario and mode, ratios against direct.

usage: summarize.py ROWS.tsv CLK_TCK NOTE
ROWS.tsv lines: scenario, mode, round, oha JSON path, proxy CPU ticks, upstream CPU ticks,
control CPU ticks, drain seconds ("-" where nothing is recorded).
"""
import json
import statistics
import sys
from collections import defaultdict


def main() -> None:
    rows_path, clk_tck, note = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    runs = defaultdict(list)
    for line in open(rows_path):
        scenario, mode, rnd, path, proxy_ticks, up_ticks, control_ticks, drain = line.rstrip("\n").split("\t")
        with open(path) as f:
            d = json.load(f)
        ok = sum(v for k, v in d.get("statusCodeDistribution", {}).items() if k.startswith("2"))
        bad = sum(v for k, v in d.get("statusCodeDistribution", {}).items() if not k.startswith("2"))
        secs = d["summary"]["total"]
        runs[(scenario, mode)].append(
            {
                "rps": ok / secs if secs else 0.0,
                "p50": d["latencyPercentiles"]["p50"] * 1000,
                "p99": d["latencyPercentiles"]["p99"] * 1000,
                "ttfb": (d.get("firstBytePercentiles") or {}).get("p50"),
                "proxy_us": int(proxy_ticks) * 1e6 / clk_tck / max(ok, 1),
                "up_us": int(up_ticks) * 1e6 / clk_tck / max(ok, 1),
                "control_us": int(control_ticks) * 1e6 / clk_tck / max(ok, 1),
                "drain": None if drain == "-" else float(drain),
                # oha cancels requests in flight at the deadline; those are not errors.
                "errors": bad
                + sum(v for k, v in d.get("errorDistribution", {}).items() if "aborted due to deadline" not in k),
            }
        )
    # Without a direct row (BENCH_ONLY), "vs direct" is left out.
    direct = {
        mode: statistics.mean(r["rps"] for r in runs[("direct", mode)]) if runs.get(("direct", mode)) else None
        for mode in ("nonstream", "stream")
    }
    print(f"FleetForge bench ({note})\n")
    print(
        "| scenario | mode | req/s | spread | vs direct | p50 ms | p99 ms | TTFB p50 ms | proxy CPU µs/req "
        "| control CPU µs/req | upstream CPU µs/req | proxy/upstream CPU | ingest drain s (max) | errors |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    order = ("direct", "sidecar", "sidecar-base", "sidecar-otel", "sidecar-noseal", "sidecar-replay", "sidecar-norec", "sidecar-cap", "sidecar-bud", "sidecar-tool", "sidecar-pol",
             "forward", "forward-base")
    for scenario in order:
        for mode in ("nonstream", "stream"):
            rs = runs.get((scenario, mode))
            if not rs:
                continue
            rps = [r["rps"] for r in rs]
            mean = statistics.mean(rps)
            spread = (max(rps) - min(rps)) / 2 / mean * 100 if mean else 0
            ttfb = [r["ttfb"] for r in rs if r["ttfb"] is not None]
            ttfb_s = f"{statistics.mean(ttfb) * 1000:.2f}" if ttfb else "-"
            proxy = "-" if scenario == "direct" else f"{statistics.mean(r['proxy_us'] for r in rs):.1f}"
            recorded = scenario not in ("direct", "sidecar-norec", "sidecar-cap", "sidecar-bud", "sidecar-tool", "sidecar-pol")
            control = f"{statistics.mean(r['control_us'] for r in rs):.1f}" if recorded else "-"
            # The upstream is the same binary under the same load in every row, so its CPU per
            # request tracks the machine's speed in that window (see bench/README.md).
            up_us = statistics.mean(r["up_us"] for r in rs)
            relative = "-" if scenario == "direct" or not up_us else f"{statistics.mean(r['proxy_us'] for r in rs) / up_us:.3f}"
            drains = [r["drain"] for r in rs if r["drain"] is not None]
            drain = f"{max(drains):.2f}" if drains else "-"
            print(
                f"| {scenario} | {mode} | {mean:,.0f} | ±{spread:.0f}% | {f'{mean / direct[mode]:.3f}' if direct[mode] else '-'} | "
                f"{statistics.mean(r['p50'] for r in rs):.2f} | {statistics.mean(r['p99'] for r in rs):.2f} | {ttfb_s} | "
                f"{proxy} | {control} | {up_us:.1f} | {relative} | {drain} | "
                f"{sum(r['errors'] for r in rs)} |"
            )


if __name__ == "__main__":
    main()
