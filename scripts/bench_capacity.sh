#!/usr/bin/env bash
# Capacity search against a fixed grid of lengths, on the convergence
# study's texts (scripts/study_texts.py) with one vector:
#   grid     `cram compress` at every length of GRID, from scratch, default
#            protocol; a text's result is its longest exact length; its cost
#            the steps of all lengths;
#   gallop   `cram capacity --search gallop --tolerance TOLERANCE` (default
#            protocol and schedule: the cosine restarted per stage with a
#            10-step ramp);
#   gallop-text  the same with `--schedule text --stage-warmup 0` (the
#            protocol's cosine over the text's budget, the default before
#            2026-12-07), the baseline of the paper and low-dim sides;
#   climb    `cram capacity --search climb --tolerance TOLERANCE`;
#   step:1   `cram capacity --search step:1 --start 1 STEP1_FLAGS`
#            (progressive cramming's growth; by default with the stage
#            patience equal to the stage's step limit, so that a stage runs
#            until it succeeds or has taken its 300 steps, as the peer's
#            stages run to their step limit, and the text schedule: the
#            peer's, and the one its kept side ran with);
#   paper    `cram capacity --search gallop --protocol paper` (PAPER=1);
#            it and the low-dim sides with gallop's --tolerance and the
#            text schedule (as their kept sides ran), against gallop-text;
#   low-dim  (LOWDIM=1) `cram capacity --search gallop --low-dim K` with a
#            learned basis (fitted on the texts' first 32 tokens, the search
#            from 8 tokens, every z from 0: the defaults before 2026-12-07) and with a
#            PCA basis of the vectors of PCA_TEXTS other texts of DATA
#            (`cram compress --tokens 16`, rows between the study's);
#            printed as a second table beside the full vectors' gallop;
#   lowdim-fitF  (LOWDIM=1) `cram capacity --search gallop --low-dim K
#            --basis learned --fit-tokens F --start F --z-start zero` (F =
#            LOWDIM_FIT, default schedule): the basis fitted on the texts'
#            first F tokens, the search starting at F with every z from 0;
#   lowdim   (LOWDIM=1) `cram capacity --search gallop --low-dim K --basis
#            learned`: the learned-basis defaults (a learned basis fitted at 64 tokens, the
#            fitted texts from their fitted z, the search from 64);
#            these two against the grid with the basis's fitting steps
#            counted once per fitted text (a joint step is a
#            forward/backward of every fitted text);
#   lowdim-own  (LOWDIM=1) `cram capacity --search gallop --low-dim K
#            --basis own`: every text its own W and b, trained with its z
#            through the search (nothing fitted before it; with K = 32 the
#            default of `cram capacity` since 2026-12-07), against the grid;
#   step1-own  (LOWDIM=1) step:1 as the step:1 side (STEP1_FLAGS) with
#            `--low-dim K --basis own`, against lowdim-own.
# The sides before the low-dim ones are full vectors (`--low-dim 0`).
# Every side runs on the same texts; the script prints a Markdown table and
# the ratios issue 14 asks for. Step counts do not depend on the machine's
# load; seconds do. A side that finishes all texts is kept in KEEP (its
# JSONL rows, committed), and a later run of the script takes it from there
# instead of running it again, so the benchmark can be completed over
# several sittings; KEEP= runs every side with this build.
#
# Usage: bash scripts/bench_capacity.sh
# Environment: MODEL [smollm2-135m] TEXTS [8] DATA [../shared/data/pg19_standin.csv]
#   GRID ["8 16 24 32 48 64 96 128"] PAPER [1] OUT [target/bench_capacity]
#   (kept: running again resumes every side) CAPACITY_FLAGS [extra flags of
#   both capacity searches] GRID_FROM [unset; a convergence-study JSONL
#   (docs/study/convergence.jsonl): its `cram` cells at the grid's lengths
#   are used instead of running those lengths again; the table says which]
#   LOWDIM [1] LOWDIM_K [32] LOWDIM_FIT [64] PCA_TEXTS [40] TOLERANCE [12: gallop and climb
#   stop when the failed target is within 12% of the verified prefix, finer
#   than the grid's steps; 0: the exact horizon]
#   STEP1_FLAGS [--stage-patience 300 --schedule text --stage-warmup 0: no
#   stage of step:1 ends by patience]
#   TABLE_ONLY [0; 1: run nothing, print the table of what OUT, KEEP and
#   GRID_FROM hold (a side that has not finished all texts is left out)]
#   KEEP [docs/study/capacity/MODEL; empty: keep nothing]
#   CRAM [the cram binary; built with cargo if unset]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2-135m}
NTEXTS=${TEXTS:-8}
DATA=${DATA:-../shared/data/pg19_standin.csv}
GRID=${GRID:-8 16 24 32 48 64 96 128}
PAPER=${PAPER:-1}
OUT=${OUT:-target/bench_capacity}
GRID_FROM=${GRID_FROM:-}
LOWDIM=${LOWDIM:-1}
LOWDIM_K=${LOWDIM_K:-32}
LOWDIM_FIT=${LOWDIM_FIT:-64}
PCA_TEXTS=${PCA_TEXTS:-40}
TOLERANCE=${TOLERANCE:-12}
read -r -a STEP1_FLAGS <<<"${STEP1_FLAGS---stage-patience 300 --schedule text --stage-warmup 0}"
# The schedule the kept paper and low-dim sides ran with.
TEXT_SCHEDULE=(--schedule text --stage-warmup 0)
# Full vectors (`cram capacity`'s default since 2026-12-07 is --low-dim 32
# --basis own; the full-vector sides were kept before and pin it).
FULL=(--low-dim 0)
TABLE_ONLY=${TABLE_ONLY:-0}
KEEP=${KEEP-docs/study/capacity/$MODEL}
read -r -a EXTRA <<<"${CAPACITY_FLAGS:-}"
if [ -z "${CRAM:-}" ]; then
    cargo build --quiet
    CRAM=target/debug/cram
fi
mkdir -p "$OUT"
python3 scripts/study_texts.py "$DATA" "$NTEXTS" >"$OUT/texts.jsonl"
MAXL=$(printf '%s\n' $GRID | sort -n | tail -1)

# A length the study file already holds for all these texts (default
# protocol): its rows become OUT/grid-L.jsonl (marked as from the study).
from_study() { # L
    [ -n "$GRID_FROM" ] && python3 - "$GRID_FROM" "$MODEL" "$1" "$NTEXTS" "$OUT/grid-$1.jsonl" <<'PY'
import json, sys
path, model, L, n, dst = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
# The study's `text_index` is the text's row in DATA; its k-th text (in row
# order) is text k of texts.jsonl (scripts/study_texts.py picks the same).
rows = sorted((r for r in map(json.loads, open(path))
               if r["model"] == model and r["tokens"] == L and r["variant"] == "cram"),
              key=lambda r: r["text_index"])
if len(rows) != n:
    sys.exit(1)
with open(dst, "w") as f:
    for i, r in enumerate(rows):
        f.write(json.dumps(dict(r, index=i)) + "\n")
open(dst + ".from-study", "w").close()
PY
}
# A side KEEP holds for all texts (the same ids as OUT/texts.jsonl): copied
# into OUT (true), or false.
kept() { # NAME
    [ -n "$KEEP" ] && [ -f "$KEEP/$1.jsonl" ] || return 1
    python3 - "$KEEP/$1.jsonl" "$OUT/texts.jsonl" <<'PY' || return 1
import json, sys
rows = sorted(map(json.loads, open(sys.argv[1])), key=lambda r: r["index"])
texts = [json.loads(l) for l in open(sys.argv[2])]
ids = [r.get("id") for r in rows]
if "id" in rows[0] and ids != [t["id"] for t in texts] or len(rows) != len(texts):
    sys.exit(1)
PY
    cp "$KEEP/$1".* "$OUT/"
    echo "$1: kept in $KEEP" >&2
}
# A side that finished all texts: its files OUT/NAME.* copied into KEEP.
keep() { # NAME
    [ -n "$KEEP" ] && [ "$(wc -l <"$OUT/$1.jsonl")" -eq "$NTEXTS" ] || return 0
    mkdir -p "$KEEP"
    cp "$OUT/$1".* "$KEEP/"
}
search() { # NAME FLAGS...
    local name=$1
    shift
    kept "$name" && return 0
    echo "capacity $name ..." >&2
    "$CRAM" --quiet capacity --model "$MODEL" --input "$OUT/texts.jsonl" --max-tokens "$MAXL" \
        --batch 8 --out "$OUT/$name" --json "${EXTRA[@]}" "$@" >"$OUT/$name.jsonl"
    if [ -f "$OUT/$name/basis.safetensors" ]; then
        python3 scripts/basis_fit_steps.py "$OUT/$name/basis.safetensors" >"$OUT/$name.fit-steps"
    fi
    keep "$name"
}
if [ "$TABLE_ONLY" = 1 ]; then
    # Nothing runs; the grid lengths GRID_FROM holds are still read from it.
    for L in $GRID; do
        from_study "$L" || true
    done
else
    search gallop --search gallop --tolerance "$TOLERANCE" "${FULL[@]}"
    search gallop-text --search gallop --tolerance "$TOLERANCE" "${TEXT_SCHEDULE[@]}" "${FULL[@]}"
    search climb --search climb --tolerance "$TOLERANCE" "${FULL[@]}"
    for L in $GRID; do
        if from_study "$L"; then
            echo "grid $L: from $GRID_FROM" >&2
            continue
        fi
        rm -f "$OUT/grid-$L.jsonl.from-study"
        kept "grid-$L" && continue
        echo "grid $L: cram compress --tokens $L --batch 8 ..." >&2
        "$CRAM" --quiet compress --model "$MODEL" --input "$OUT/texts.jsonl" --tokens "$L" --batch 8 \
            --json -o "$OUT/grid-$L" >"$OUT/grid-$L.jsonl"
        keep "grid-$L"
    done
    search step1 --search step:1 --start 1 "${STEP1_FLAGS[@]}" "${FULL[@]}"
    [ "$PAPER" = 1 ] && search paper --search gallop --tolerance "$TOLERANCE" --protocol paper \
        "${TEXT_SCHEDULE[@]}" "${FULL[@]}"
    if [ "$LOWDIM" = 1 ]; then
        search lowdim-learned --search gallop --tolerance "$TOLERANCE" --low-dim "$LOWDIM_K" --basis learned \
            --fit-tokens 32 --start 8 --z-start zero "${TEXT_SCHEDULE[@]}"
    fi
    if [ "$LOWDIM" = 1 ] && ! kept lowdim-pca; then
        python3 - "$DATA" "$PCA_TEXTS" >"$OUT/pca-texts.jsonl" <<'PY'
import csv, json, sys
csv.field_size_limit(1 << 30)
rows = list(csv.DictReader(open(sys.argv[1], encoding="utf-8")))
n = int(sys.argv[2])
for k in range(n):
    i = k * len(rows) // n + len(rows) // (2 * n)
    print(json.dumps({"id": rows[i].get("id") or str(i), "text": rows[i]["text"]}))
PY
        echo "pca source: cram compress --tokens 16 of $PCA_TEXTS other texts ..." >&2
        "$CRAM" --quiet compress --model "$MODEL" --input "$OUT/pca-texts.jsonl" --tokens 16 --batch 8 \
            --json -o "$OUT/pca-source" >"$OUT/pca-source.jsonl"
        search lowdim-pca --search gallop --tolerance "$TOLERANCE" --low-dim "$LOWDIM_K" \
            --basis "pca:$OUT/pca-source" "${TEXT_SCHEDULE[@]}"
    fi
    if [ "$LOWDIM" = 1 ]; then
        search "lowdim-fit$LOWDIM_FIT" --search gallop --tolerance "$TOLERANCE" --low-dim "$LOWDIM_K" \
            --basis learned --fit-tokens "$LOWDIM_FIT" --start "$LOWDIM_FIT" --z-start zero
        search lowdim --search gallop --tolerance "$TOLERANCE" --low-dim "$LOWDIM_K" --basis learned
        search lowdim-own --search gallop --tolerance "$TOLERANCE" --low-dim "$LOWDIM_K" --basis own
        search step1-own --search step:1 --start 1 "${STEP1_FLAGS[@]}" --low-dim "$LOWDIM_K" --basis own
    fi
fi

python3 - "$OUT" "$GRID" "$MODEL" "$NTEXTS" "$LOWDIM_K" "$KEEP" "$LOWDIM_FIT" <<'PY'
import json, os, statistics, sys
out, grid, model, n, K, keep, F = sys.argv[1], list(map(int, sys.argv[2].split())), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
def side_file(p):
    # A side's file from OUT, else from KEEP.
    if not os.path.exists(p) and keep:
        p = os.path.join(keep, os.path.basename(p))
    return p
def fit_steps(name):
    # A low-dim side's basis fitting steps, or None.
    p = side_file(f"{out}/{name}.fit-steps")
    return int(open(p).read()) if os.path.exists(p) else None
def lines(p):
    # A side's rows by text (from OUT, else from KEEP), or None while the
    # side has not finished all texts (its table leaves the side out).
    p = side_file(p)
    rows = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
    return sorted(rows, key=lambda r: r["index"]) if len(rows) == n else None
best, gsteps, sources, missing = [0] * n, [0] * n, [], []
for L in grid:
    rows = lines(f"{out}/grid-{L}.jsonl")
    if rows is None:
        missing.append(L)
        continue
    study_made = os.path.exists(f"{out}/grid-{L}.jsonl.from-study")
    sources.append(f"{L} (study)" if study_made else str(L))
    for r in rows:
        i = r["index"]
        gsteps[i] += r["steps"]
        if r["exact"]:
            best[i] = max(best[i], L)
grid_done = not missing
names = {"gallop": "gallop", "gallop-text": "gallop (text schedule)", "climb": "climb", "step1": "step:1", "paper": "paper gallop"}
runs = {k: v for k in names if (v := lines(f"{out}/{k}.jsonl"))}
print(f"Model `{model}`, {n} texts, one vector; grid lengths {', '.join(sources) or 'none'} "
      "(500 steps each at most, default protocol)"
      + (f"; not run yet: {', '.join(map(str, missing))}" if missing else "") + ".\n")
if not runs:
    sys.exit("no capacity search has finished all texts yet")
ids = next(iter(runs.values()))
head = "| text | grid: longest exact | grid steps |" + "".join(f" {names[k]} horizon | {names[k]} steps |" for k in runs)
print(head)
print("|" + "---|" + "---:|" * (head.count("|") - 2))
for i in range(n):
    print(f"| {ids[i]['id']} | {best[i]} | {gsteps[i]} |" + "".join(f" {rs[i]['horizon']} | {rs[i]['steps']} |" for rs in runs.values()))
mean = lambda rs: statistics.mean(r["horizon"] for r in rs)
tot = lambda rs: sum(r["steps"] for r in rs)
secs = lambda rs: sum(r["seconds"] for r in rs)
print(f"| **all** | mean {statistics.mean(best):.1f} | {sum(gsteps)} |" + "".join(f" mean {mean(rs):.1f} | {tot(rs)} |" for rs in runs.values()))
print()
gt, s1, pa = runs.get("gallop-text"), runs.get("step1"), runs.get("paper")
def against_grid(k, rs, cost, counted=""):
    # Issue 14's grid line for side k (rows rs, cost steps in all).
    ge = sum(rs[i]["horizon"] >= best[i] for i in range(n))
    print(f"- {k} horizon ≥ the grid's longest exact length: {ge}/{n} texts (target ≥ {n - n // 8})")
    print(f"- optimisation steps, grid / {k}{counted}: {sum(gsteps) / cost:.2f}× (target ≥ 3×)")
# Issue 14's ratios, for each search that doubles (gallop, climb).
for k in ("gallop", "gallop-text", "climb"):
    rs = runs.get(k)
    if rs and grid_done:
        against_grid(k, rs, tot(rs))
    if rs and s1:
        print(f"- mean horizon, {k} vs step:1: {mean(rs):.1f} vs {mean(s1):.1f} ({100 * (mean(rs) - mean(s1)) / mean(s1):+.1f}%, target within ±10%)")
        print(f"- optimisation steps, step:1 / {k}: {tot(s1) / tot(rs):.2f}× (target ≥ 1.5×)")
print("- seconds in a batch (sum over texts): " + ", ".join(f"{names[k]} {secs(rs):.0f}" for k, rs in runs.items()))
# The paper and low-dim sides ran with the text schedule: against gallop-text.
if gt and pa:
    print(f"- mean horizon, default protocol / paper protocol (gallop, text schedule): {mean(gt):.1f} / {mean(pa):.1f} = {mean(gt) / max(mean(pa), 1e-9):.2f}×")
low = {k: v for k in ("learned", "pca") if (v := lines(f"{out}/lowdim-{k}.jsonl"))}
if gt and low:
    print(f"\nLow-dimensional vectors (gallop, text schedule, z of size {K}), same texts:\n")
    print("| vectors | mean horizon | median horizon | steps (all texts) | basis fitting steps |")
    print("|---|---:|---:|---:|---:|")
    med = lambda rs: statistics.median(r["horizon"] for r in rs)
    print(f"| full | {mean(gt):.1f} | {med(gt)} | {tot(gt)} | – |")
    for k, name in (("learned", "learned basis"), ("pca", "PCA basis")):
        if k in low:
            print(f"| {name} | {mean(low[k]):.1f} | {med(low[k])} | {tot(low[k])} | {'–' if (f := fit_steps(f'lowdim-{k}')) is None else f} |")
# Low-dim sides against the grid, the basis's fitting steps counted once
# per fitted text: the basis fitted at F tokens with every z from 0, and the
# low-dim defaults (fitted at 64 tokens, fitted texts from their fitted z,
# the search from 64); and the own basis, which fits nothing before the
# search.
for name, how in ((f"lowdim-fit{F}", f"--basis learned --fit-tokens {F} --start {F} --z-start zero"),
                  ("lowdim", "the low-dim defaults: learned basis fitted at 64 tokens, fitted z start, search from 64"),
                  ("lowdim-own", "--basis own: every text its own W and b, trained with its z through the search")):
    lf, fit = lines(f"{out}/{name}.jsonl"), (0 if name == "lowdim-own" else fit_steps(name))
    if not lf or fit is None:
        continue
    fitted = min(8, n)  # the basis fits on the run's first --batch (8) texts
    cost = tot(lf) + fit * fitted
    print(f"\nLow-dimensional vectors, `{name}` (gallop --low-dim {K}, {how}; default schedule), same texts:\n")
    print(f"| text | grid: longest exact | {name} horizon | {name} steps |")
    print("|---|---:|---:|---:|")
    for i in range(n):
        print(f"| {lf[i]['id']} | {best[i]} | {lf[i]['horizon']} | {lf[i]['steps']} |")
    print(f"| **all** | mean {statistics.mean(best):.1f} | mean {mean(lf):.1f} | {tot(lf)} |\n")
    if fit:
        print(f"- basis fitting: {fit} joint steps of {fitted} texts = {fit * fitted} text steps; with the search's {tot(lf)}: {cost}")
    if grid_done:
        against_grid(name, lf, cost, " (fitting counted)" if fit else "")
    if "gallop" in runs:
        print(f"- mean horizon, {name} vs gallop (full vectors): {mean(lf):.1f} vs {mean(runs['gallop']):.1f}")
# Issue 14's step:1 line for the default vectors (every text its own basis).
own, s1own = lines(f"{out}/lowdim-own.jsonl"), lines(f"{out}/step1-own.jsonl")
if own and s1own:
    print(f"\n`step1-own` (step:1 from 1 token as the step:1 side, --low-dim {K} --basis own) against `lowdim-own`, same texts:\n")
    print("| text | lowdim-own horizon | lowdim-own steps | step1-own horizon | step1-own steps |")
    print("|---|---:|---:|---:|---:|")
    for i in range(n):
        print(f"| {own[i]['id']} | {own[i]['horizon']} | {own[i]['steps']} | {s1own[i]['horizon']} | {s1own[i]['steps']} |")
    print(f"| **all** | mean {mean(own):.1f} | {tot(own)} | mean {mean(s1own):.1f} | {tot(s1own)} |\n")
    print(f"- mean horizon, lowdim-own vs step1-own: {mean(own):.1f} vs {mean(s1own):.1f} ({100 * (mean(own) - mean(s1own)) / mean(s1own):+.1f}%, target within ±10%)")
    print(f"- optimisation steps, step1-own / lowdim-own: {tot(s1own) / tot(own):.2f}× (target ≥ 1.5×)")
PY
