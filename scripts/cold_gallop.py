#!/usr/bin/env python3
"""A gallop search whose every probe is a cold start, replayed on the grid's cells.

Usage: python3 scripts/cold_gallop.py DIR [DIR ...]

Each DIR may hold `grid-L.jsonl` files (`cram compress --tokens L --json`
rows of the same texts, as scripts/bench_capacity.sh writes and keeps); the
first DIR holding a length is used (and the first `texts.jsonl`, for the
texts' ids). A cold probe at L is the grid's cell at
L: its steps are the cell's, it succeeds when the cell decoded exactly, and
a failed cell still verifies the prefix before its first wrong token. The
search doubles from the shortest length while probes succeed, then bisects
between the verified prefix and the shortest failed length over the lengths
there are cells for. Prints per text the probes, horizon and steps, and the
totals, so that the cost of cold probes can be set against the grid's and
the warm searches' (docs/capacity.md).
"""
import glob
import json
import os
import re
import sys


def cells(dirs):
    """{(text index, length): (steps, exact, verified prefix)} and the ids."""
    out, ids, seen = {}, {}, set()
    for d in dirs:
        for p in sorted(glob.glob(os.path.join(d, "grid-*.jsonl"))):
            m = re.fullmatch(r"grid-(\d+)\.jsonl", os.path.basename(p))
            if not m or int(m.group(1)) in seen:
                continue
            L = int(m.group(1))
            seen.add(L)
            for line in open(p):
                r = json.loads(line)
                exact = bool(r["exact"])
                prefix = L if exact else (r.get("first_mismatch") or 0)
                out[(r["index"], L)] = (r["steps"], exact, prefix)
                ids.setdefault(r["index"], str(r["index"]))
    for d in dirs:
        # The texts' ids, where a DIR holds the benchmark's texts.jsonl.
        p = os.path.join(d, "texts.jsonl")
        if os.path.exists(p):
            for k, line in enumerate(open(p)):
                if k in ids:
                    ids[k] = json.loads(line).get("id", ids[k])
            break
    return out, ids, sorted(seen)


def search(c, i, lengths):
    """The probes (length, exact), the horizon and the steps of text i."""
    lo, hi, t, probes, steps = 0, None, lengths[0], [], 0
    while True:
        s, exact, prefix = c[(i, t)]
        steps += s
        probes.append((t, exact))
        lo = max(lo, prefix)
        if not exact:
            hi = t if hi is None else min(hi, t)
        elif hi is None and 2 * t in lengths:
            t = 2 * t
            continue
        elif hi is None:
            hi = max(lengths) + 1
        tried = {p for p, _ in probes}
        inside = [L for L in lengths if lo < L < hi and L not in tried]
        if not inside:
            return probes, lo, steps
        t = inside[len(inside) // 2]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    c, ids, lengths = cells(sys.argv[1:])
    texts = sorted(ids)
    lengths = [L for L in lengths if all((i, L) in c for i in texts)]
    if not lengths:
        sys.exit("no length has cells for every text")
    print(f"cold probes over the lengths {', '.join(map(str, lengths))}\n")
    print("| text | probes (✓ exact) | horizon | steps |")
    print("|---|---|---:|---:|")
    total, horizons = 0, []
    for i in texts:
        probes, h, s = search(c, i, lengths)
        total += s
        horizons.append(h)
        seq = ", ".join(f"{L}{'✓' if e else '✗'}" for L, e in probes)
        print(f"| {ids[i]} | {seq} | {h} | {s} |")
    print(f"| **all** | | mean {sum(horizons) / len(horizons):.1f} | {total} |")


if __name__ == "__main__":
    main()
