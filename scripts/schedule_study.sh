#!/usr/bin/env bash
# The learning-rate schedule of a warm-started gallop search, on texts the
# capacity benchmark (scripts/bench_capacity.sh) did not tune on: the
# convergence study's rows for TEXTS texts (scripts/study_texts.py) less the
# benchmark's first 8. Two sides of full vectors (`--low-dim 0`), every
# setting explicit so that the study does not move with the defaults:
#   text       `--schedule text --stage-warmup 0` (the protocol's cosine over
#              the text's budget, carried from stage to stage)
#   stage-w10  `--schedule stage --stage-warmup 10` (the cosine restarted at
#              every stage, with a 10-step ramp after a warm start)
#   lowdim     (LOWDIM=1, the default) stage-w10 with `--low-dim 32 --basis
#              learned --fit-tokens 64 --z-start fitted --start 64` (the
#              low-dimensional defaults of 2026-12-07, spelled out), printed
#              after the two with its basis's fitting steps
#   lowdim-own (LOWDIM=1) stage-w10 with `--low-dim 32 --basis own` (every
#              text its own W and b, trained with its z through the search),
#              printed after them against stage-w10
# both `cram capacity --search gallop --tolerance 12`, one vector, 128 tokens
# at most, batch 8. Prints per text each side's horizon and steps, the means
# and the wins, then the same with the benchmark's 8 texts added from KEEP
# (its `gallop-text` and `gallop` sides, run with the same two settings)
# when they are there. Runs resume (OUT is kept); a side that finished is
# copied into KEEP and taken from there next time.
#
# Usage: bash scripts/schedule_study.sh
# Environment: MODEL [smollm2-135m] DATA [../shared/data/pg19_standin.csv]
#   TEXTS [16] OUT [target/schedule_study] KEEP [docs/study/capacity/MODEL]
#   CRAM [the cram binary; built with cargo if unset]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2-135m}
DATA=${DATA:-../shared/data/pg19_standin.csv}
NTEXTS=${TEXTS:-16}
OUT=${OUT:-target/schedule_study}
KEEP=${KEEP-docs/study/capacity/$MODEL}
if [ -z "${CRAM:-}" ]; then
    cargo build --quiet
    CRAM=target/debug/cram
fi
mkdir -p "$OUT"
python3 scripts/study_texts.py "$DATA" 8 >"$OUT/bench-texts.jsonl"
python3 scripts/study_texts.py "$DATA" "$NTEXTS" | python3 -c '
import json, sys
bench = {json.loads(l)["id"] for l in open(sys.argv[1])}
for l in sys.stdin:
    if json.loads(l)["id"] not in bench:
        print(l, end="")' "$OUT/bench-texts.jsonl" >"$OUT/texts.jsonl"
N=$(wc -l <"$OUT/texts.jsonl")

side() { # NAME FLAGS...
    local name=$1
    shift
    if [ -n "$KEEP" ] && [ -f "$KEEP/schedule/$name.jsonl" ] &&
        [ "$(wc -l <"$KEEP/schedule/$name.jsonl")" -eq "$N" ]; then
        cp "$KEEP/schedule/$name".* "$OUT/"
        echo "$name: kept in $KEEP/schedule" >&2
        return 0
    fi
    echo "capacity $name ..." >&2
    "$CRAM" --quiet capacity --model "$MODEL" --input "$OUT/texts.jsonl" --max-tokens 128 \
        --batch 8 --out "$OUT/$name" --json --search gallop --tolerance 12 "$@" >"$OUT/$name.jsonl"
    if [ -f "$OUT/$name/basis.safetensors" ]; then
        python3 scripts/basis_fit_steps.py "$OUT/$name/basis.safetensors" >"$OUT/$name.fit-steps"
    fi
    if [ -n "$KEEP" ] && [ "$(wc -l <"$OUT/$name.jsonl")" -eq "$N" ]; then
        mkdir -p "$KEEP/schedule"
        cp "$OUT/$name".* "$KEEP/schedule/"
    fi
}
side text --schedule text --stage-warmup 0 --low-dim 0
side stage-w10 --schedule stage --stage-warmup 10 --low-dim 0
if [ "${LOWDIM:-1}" = 1 ]; then
    side lowdim --schedule stage --stage-warmup 10 --low-dim 32 --basis learned --fit-tokens 64 \
        --z-start fitted --start 64
    side lowdim-own --schedule stage --stage-warmup 10 --low-dim 32 --basis own
fi

python3 - "$OUT" "$KEEP" "$N" <<'PY'
import json, os, sys
out, keep, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

def rows(path):
    rs = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    return {r["id"]: r for r in sorted(rs, key=lambda r: r["index"])}

def table(title, a, b, la="text", lb="stage-w10"):
    ids = [i for i in a if i in b]
    print(f"\n{title}\n")
    print(f"| text | {la}: horizon | steps | {lb}: horizon | steps |")
    print("|---|---:|---:|---:|---:|")
    for i in ids:
        print(f"| {i} | {a[i]['horizon']} | {a[i]['steps']} | {b[i]['horizon']} | {b[i]['steps']} |")
    n = len(ids)
    ha = sum(a[i]["horizon"] for i in ids) / n
    hb = sum(b[i]["horizon"] for i in ids) / n
    sa = sum(a[i]["steps"] for i in ids)
    sb = sum(b[i]["steps"] for i in ids)
    print(f"| **mean / total** | {ha:.1f} | {sa} | {hb:.1f} | {sb} |")
    up = sum(b[i]["horizon"] > a[i]["horizon"] for i in ids)
    down = sum(b[i]["horizon"] < a[i]["horizon"] for i in ids)
    print(f"\n{n} texts: {lb} {hb - ha:+.1f} tokens of mean horizon "
          f"({100 * (hb - ha) / ha:+.1f}%), steps ×{sb / sa:.2f}; "
          f"longer on {up}, shorter on {down}, equal on {n - up - down}")
    return sb

a, b = rows(f"{out}/text.jsonl"), rows(f"{out}/stage-w10.jsonl")
if len(a) != n or len(b) != n:
    sys.exit("a side has not finished all texts yet")
table("New texts (not the benchmark's)", a, b)
if keep:
    ka = rows(f"{keep}/gallop-text.jsonl")
    kb = rows(f"{keep}/gallop.jsonl")
    if ka and kb:
        table("With the benchmark's 8 texts", {**ka, **a}, {**kb, **b})
c = rows(f"{out}/lowdim.jsonl")
if len(c) == n:
    fit = int(open(f"{out}/lowdim.fit-steps").read())
    fitted = min(8, n)  # the basis fits on the run's first --batch (8) texts
    sc = table("Low-dimensional vectors (`lowdim`: stage-w10 with a learned basis of "
               "k 32 fitted at 64 tokens, fitted z start, from 64), new texts", b, c, "stage-w10", "lowdim")
    print(f"\nbasis fitting: {fit} joint steps of {fitted} texts = {fit * fitted} text steps; "
          f"lowdim with them: {sc + fit * fitted} steps")
d = rows(f"{out}/lowdim-own.jsonl")
if len(d) == n:
    table("Low-dimensional vectors, every text its own basis (`lowdim-own`: stage-w10 with "
          "`--low-dim 32 --basis own`), new texts", b, d, "stage-w10", "lowdim-own")
PY
