#!/usr/bin/env bash
# Two cram binaries on this machine, in one run: the cram side of scripts/bench.sh
# (forward+backward to the input embeddings at B = 1, 8 and L = 128; cramming steps at
# B = 1, 8 and L = 64, 128), A then B for each size, with the same thread count. Prints
# both timings and the ratio B/A per row as a Markdown table (ratios near 1: same speed).
#
# Usage: bash scripts/bench_ab.sh A_BINARY B_BINARY
# Environment: MODEL [smollm2-135m] THREADS [2] REPS [3] WARMUP [1] STEPS [5]
#   BATCHES ["1 8"] FB_LEN [128] CRAM_LENS ["64 128"]
set -euo pipefail
if [ $# -ne 2 ]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
A=$1
B=$2
MODEL=${MODEL:-smollm2-135m}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
WARMUP=${WARMUP:-1}
STEPS=${STEPS:-5}
BATCHES=${BATCHES:-1 8}
FB_LEN=${FB_LEN:-128}
CRAM_LENS=${CRAM_LENS:-64 128}
export RAYON_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for b in $BATCHES; do
    for side in A B; do
        bin=$A
        [ $side = B ] && bin=$B
        echo "fwd-bwd B=$b L=$FB_LEN ($side) ..." >&2
        "$bin" --quiet bench fwd-bwd --model "$MODEL" --batch "$b" --len "$FB_LEN" --reps "$REPS" \
            --warmup "$WARMUP" --json | sed "s/^{/{\"side\":\"$side\",/" >>"$OUT/res.jsonl"
    done
    for l in $CRAM_LENS; do
        for side in A B; do
            bin=$A
            [ $side = B ] && bin=$B
            echo "cram B=$b L=$l ($side) ..." >&2
            "$bin" --quiet bench cram --model "$MODEL" --batch "$b" --len "$l" --steps "$STEPS" --json |
                sed "s/^{/{\"side\":\"$side\",/" >>"$OUT/res.jsonl"
        done
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$OUT/res.jsonl" "$A" "$B" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"A = `{sys.argv[2]}`, B = `{sys.argv[3]}`; milliseconds per step (median)")
print()
print("| bench | B | L | A ms/step | B ms/step | B/A |")
print("|---|---:|---:|---:|---:|---:|")
keys = []
for r in rows:
    k = (r["bench"], r["batch"], r["len"])
    if k not in keys:
        keys.append(k)
for k in keys:
    a = next(r for r in rows if r["side"] == "A" and (r["bench"], r["batch"], r["len"]) == k)
    b = next(r for r in rows if r["side"] == "B" and (r["bench"], r["batch"], r["len"]) == k)
    print(f"| {k[0]} | {k[1]} | {k[2]} | {a['ms_per_step']:.1f} | {b['ms_per_step']:.1f} | {b['ms_per_step'] / a['ms_per_step']:.2f}× |")
PY
