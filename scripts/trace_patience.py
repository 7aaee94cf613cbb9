#!/usr/bin/env python3
"""Replays the stage patience on a `cram capacity --trace` file.

Usage: python3 scripts/trace_patience.py TRACE [PATIENCE] [MARGIN ...]

For every stage of the trace, counts the steps without progress from the
stage's first update (`--patience-from update`) under two rules: the
current one (a longer correct prefix or a higher accuracy is progress) and
one that also counts a loss below the stage's lowest so far by more than
MARGIN (relative; default margins 0, 0.01, 0.02, 0.05). Prints, per rule,
the longest run of steps without progress in any stage, the stage it came
in, and the stages that a PATIENCE (default 100) would have ended before
they ended in the trace. A last line cut short by a kill is skipped.
"""
import collections
import json
import sys


def longest_stall(rows, margin):
    """The longest run of steps without progress (None margin: no loss)."""
    prefix = acc = loss = None
    since = longest = 0
    for r in rows:
        if r["stage_step"] == 1:
            continue
        progressed = (
            prefix is None
            or r["correct_prefix"] > prefix
            or r["accuracy"] > acc
            or (margin is not None and r["loss"] < loss * (1 - margin))
        )
        prefix = r["correct_prefix"] if prefix is None else max(prefix, r["correct_prefix"])
        acc = r["accuracy"] if acc is None else max(acc, r["accuracy"])
        loss = r["loss"] if loss is None else min(loss, r["loss"])
        since = 0 if progressed else since + 1
        longest = max(longest, since)
    return longest


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    patience = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    margins = [float(m) for m in sys.argv[3:]] or [0.0, 0.01, 0.02, 0.05]
    stages = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            stages[(r["index"], r["stage"])].append(r)
    ok = sum(rs[-1]["correct_prefix"] >= rs[-1]["target"] for rs in stages.values())
    print(f"{len(stages)} stages ({ok} reached their target) in {sum(map(len, stages.values()))} steps; patience {patience}\n")
    print("| progress counts | longest run without progress | in (text, stage, steps) | stages it would end early |")
    print("|---|---:|---|---:|")
    for margin in [None] + margins:
        runs = [(longest_stall(rs, margin), k, len(rs)) for k, rs in stages.items()]
        worst = max(runs)
        early = sum(1 for s, _, n in runs if s >= patience and n > s)
        name = "prefix, accuracy" if margin is None else f"prefix, accuracy, loss by > {margin:.0%}"
        print(f"| {name} | {worst[0]} | {worst[1][0]}, {worst[1][1]}, {worst[2]} | {early} |")


if __name__ == "__main__":
    main()
