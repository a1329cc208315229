"""Where a process's resident memory is: the largest mappings by RSS (from /proc/PID/smaps).

usage: smaps.py PID [N]   prints the N (5) largest, with their size and path (or [anon]).
"""
import sys


def main() -> None:
    pid, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    maps, current = [], None
    for line in open(f"/proc/{pid}/smaps"):
        fields = line.split()
        if "-" in fields[0] and ":" not in fields[0]:
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            current = {"path": fields[5] if len(fields) > 5 else "[anon]", "size": hi - lo, "rss": 0}
            maps.append(current)
        elif fields[0] == "Rss:" and current is not None:
            current["rss"] = int(fields[1])
    total = sum(m["rss"] for m in maps)
    print(f"RSS {total / 1024:.1f} MiB in {len(maps)} mappings; largest:")
    for m in sorted(maps, key=lambda m: -m["rss"])[:top]:
        print(f"  {m['rss'] / 1024:7.1f} MiB resident of {m['size'] / 2**20:9.1f} MiB mapped  {m['path']}")


if __name__ == "__main__":
    main()
