"""Waits until a recording proxy's control service holds every receipt it recorded.

usage: drain_wait.py ADMIN_ADDR   prints the seconds waited (at most 120), read from the proxy's
/metrics: fleetforge_receipts_recorded_total against fleetforge_receipts_shipped_total.
"""
import re
import sys
import time
import urllib.request


def counts(admin: str) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    recorded = sum(float(v) for v in re.findall(r"^fleetforge_receipts_recorded_total (\S+)$", text, re.M))
    shipped = sum(float(v) for v in re.findall(r"^fleetforge_receipts_shipped_total\{[^}]*\} (\S+)$", text, re.M))
    return recorded, shipped


def main() -> None:
    start = time.monotonic()
    while True:
        recorded, shipped = counts(sys.argv[1])
        if shipped >= recorded or time.monotonic() - start > 120:
            break
        time.sleep(0.01)
    print(f"{time.monotonic() - start:.3f}")


if __name__ == "__main__":
    main()
