#!/usr/bin/env python3
"""One stage of a `cram capacity --trace` file as a Markdown table.

Usage: python3 scripts/trace_stage.py TRACE INDEX STAGE [EVERY]

TRACE is the JSONL trace, INDEX the text's position in the run's input,
STAGE the stage's number (0-based). Prints the stage's first 12 steps, then
every EVERY-th (default 10) and its last, and the stage's lowest loss and
the step it came at. A last line cut short by a kill is skipped.
"""
import collections
import json
import sys


def read_stages(path):
    """The trace's steps by (text index, stage), in order; a last line cut
    short by a kill is skipped."""
    stages = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            stages[(r["index"], r["stage"])].append(r)
    return stages


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    path, index, stage = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    every = int(sys.argv[4]) if len(sys.argv) == 5 else 10
    rows = read_stages(path).get((index, stage), [])
    if not rows:
        sys.exit(f"{path}: no steps of text {index}, stage {stage}")
    print(f"text {index}, stage {stage}, target {rows[0]['target']} tokens, {len(rows)} steps\n")
    print("| step | loss | accuracy | correct prefix | steps without progress | lr |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s = r["stage_step"]
        if s <= 12 or s % every == 0 or r is rows[-1]:
            lr = "–" if r["lr"] is None else f"{r['lr']:.3f}"
            print(f"| {s} | {r['loss']:.3f} | {r['accuracy']:.3f} | {r['correct_prefix']} | {r['stalled']} | {lr} |")
    best = min(rows, key=lambda r: r["loss"])
    print(f"\nlowest loss {best['loss']:.3f} at step {best['stage_step']}; "
          f"highest accuracy {max(r['accuracy'] for r in rows):.3f}")


if __name__ == "__main__":
    main()
