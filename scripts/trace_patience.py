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
they ended in the trace; then, for the stages that ended short of their
target, the step at which each rule would end them. A last line cut short by a kill is skipped.
"""
import sys

from trace_stage import read_stages


def stalls(rows, margin):
    """Steps without progress after each step (None margin: no loss)."""
    prefix = acc = loss = None
    since = 0
    out = []
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
        out.append((r["stage_step"], since))
    return out


def longest_stall(rows, margin):
    """The longest run of steps without progress (None margin: no loss)."""
    return max((s for _, s in stalls(rows, margin)), default=0)


def end_step(rows, margin, patience):
    """The step at which the patience ends the stage, or None."""
    return next((step for step, s in stalls(rows, margin) if s >= patience), None)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    patience = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    margins = [float(m) for m in sys.argv[3:]] or [0.0, 0.01, 0.02, 0.05]
    stages = read_stages(path)
    ok = sum(rs[-1]["correct_prefix"] >= rs[-1]["target"] for rs in stages.values())
    print(f"{len(stages)} stages ({ok} reached their target) in {sum(map(len, stages.values()))} steps; patience {patience}\n")
    print("| progress counts | longest run without progress | in (text, stage, steps) | stages it would end early |")
    print("|---|---:|---|---:|")
    for margin in [None] + margins:
        runs = [(longest_stall(rs, margin), k, len(rs)) for k, rs in stages.items()]
        worst = max(runs)
        ends = [end_step(rs, margin, patience) for rs in stages.values()]
        early = sum(1 for e, rs in zip(ends, stages.values()) if e is not None and e < len(rs))
        name = "prefix, accuracy" if margin is None else f"prefix, accuracy, loss by > {margin:.0%}"
        print(f"| {name} | {worst[0]} | {worst[1][0]}, {worst[1][1]}, {worst[2]} | {early} |")
    failed = {k: rs for k, rs in stages.items()
              if rs[-1]["lr"] is None and rs[-1]["correct_prefix"] < rs[-1]["target"]}
    if not failed:
        return
    print(f"\nStages that ended short of their target: the step at which each rule's patience ends them"
          " (– : not within the steps traced, where the stage ran on or ended by its step limit)\n")
    rules = [None] + margins
    print("| text, stage | target | steps traced | best prefix | "
          + " | ".join("prefix, accuracy" if m is None else f"+ loss > {m:.0%}" for m in rules) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(rules))
    for k, rs in sorted(failed.items()):
        ends = [end_step(rs, m, patience) for m in rules]
        print(f"| {k[0]}, {k[1]} | {rs[0]['target']} | {len(rs)} | {max(r['correct_prefix'] for r in rs)} | "
              + " | ".join("–" if e is None else str(e) for e in ends) + " |")


if __name__ == "__main__":
    main()
