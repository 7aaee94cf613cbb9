#!/usr/bin/env bash
# Exact texts per hour: cram's default protocol at B = 8 against the seed
# protocol (the paper's settings and layout, one text at a time, the model
# loaded again for every text, capped at 600 steps per text; a capped text
# counts as not exact), on the same 8 texts of ../shared/data/pg19_standin.csv
# (those of the convergence study) at 32 tokens, both run by this build of
# cram, one after the other. A text is exact when greedy decoding from its
# vectors (and the layout's fixed tokens) gives it back. Prints a Markdown
# table and the ratio.
#
# Usage: bash scripts/bench_exact.sh
# Environment: MODEL [smollm2-135m] TOKENS [32] TEXTS [8] SEED_STEPS [600]
#   DATA [../shared/data/pg19_standin.csv] THREADS [2]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2-135m}
TOKENS=${TOKENS:-32}
NTEXTS=${TEXTS:-8}
SEED_STEPS=${SEED_STEPS:-600}
DATA=${DATA:-../shared/data/pg19_standin.csv}
THREADS=${THREADS:-2}
export RAYON_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
cargo build --quiet
CRAM=target/debug/cram
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

python3 scripts/study_texts.py "$DATA" "$NTEXTS" >"$OUT/texts.jsonl"

now() { date +%s.%N; }
echo "[1/2] cram, default protocol, B = 8 ..." >&2
t0=$(now)
"$CRAM" compress --model "$MODEL" --input "$OUT/texts.jsonl" --tokens "$TOKENS" --batch 8 \
    --json -o "$OUT/cram" >"$OUT/cram.jsonl"
t1=$(now)
echo "[2/2] seed protocol: paper settings, one text per process, $SEED_STEPS steps at most ..." >&2
: >"$OUT/seed.jsonl"
python3 -c 'import json,sys; sys.stdout.write("".join(json.loads(l)["text"] + "\0" for l in open(sys.argv[1])))' \
    "$OUT/texts.jsonl" >"$OUT/texts.bin"
i=0
while IFS= read -r -d '' text; do
    "$CRAM" compress --model "$MODEL" --text "$text" --tokens "$TOKENS" --protocol paper \
        --max-steps "$SEED_STEPS" --json -o "$OUT/seed/$i.safetensors" >>"$OUT/seed.jsonl"
    i=$((i + 1))
done <"$OUT/texts.bin"
t2=$(now)

python3 - "$OUT/cram.jsonl" "$OUT/seed.jsonl" "$t0" "$t1" "$t2" "$TOKENS" "$SEED_STEPS" "$MODEL" <<'PY'
import json, statistics, sys
cram = [json.loads(l) for l in open(sys.argv[1])]
seed = [json.loads(l) for l in open(sys.argv[2])]
t0, t1, t2 = map(float, sys.argv[3:6])
L, cap, model = sys.argv[6], sys.argv[7], sys.argv[8]
def row(name, rs, secs):
    ex = sum(r["exact"] for r in rs)
    steps = [r["steps"] for r in rs]
    return name, ex, len(rs), secs, ex * 3600 / secs, statistics.median(steps), max(steps)
a = row("cram, default protocol (B = 8, one process)", cram, t1 - t0)
b = row(f"seed protocol (paper, B = 1, a process and model load per text, ≤ {cap} steps)", seed, t2 - t1)
print(f"Model `{model}`, {len(cram)} texts at {L} tokens, one vector each.\n")
print("| run | exact | seconds | exact texts/hour | median steps | max steps |")
print("|---|---:|---:|---:|---:|---:|")
for r in (a, b):
    print(f"| {r[0]} | {r[1]}/{r[2]} | {r[3]:.0f} | {r[4]:.1f} | {r[5]:.0f} | {r[6]} |")
if b[1] == 0:
    # Counting one exact text for the seed protocol gives a lower bound.
    ratio = f"∞: the seed protocol decoded none exactly (≥ {a[4] / (3600 / b[3]):.1f}× even if one of its texts had been exact)"
else:
    ratio = f"{a[4] / b[4]:.1f}×"
print(f"\nExact texts per hour, cram / seed protocol: {ratio}")
PY
