#!/usr/bin/env bash
# One command that checks cram on a GPU machine, with a binary built
# elsewhere (`cargo build --release --features cuda`, carried over: nothing
# is built there):
#   1. logits and input gradients on the device against the CPU, in f32
#      (logits within 1e-3 absolute, gradients 1e-3 relative) and bf16
#      (both within 2e-2 relative): `cram bench compare`;
#   2. a cramming round trip on the device: `cram compress` with the
#      defaults, then `cram decompress`, which must give the text back;
#   3. `cram bench fwd-bwd` and `cram bench cram` at B in {1, 8, 32} and L in
#      {128, 512, 1024}, bf16 and f32, with the model FLOP utilisation
#      against the device's peak, and `cram bench memory`'s estimate of each
#      step's peak; beside PyTorch (`scripts/bench_torch.py`) when `torch`
#      and `transformers` are importable there.
# Prints one JSON line per result (also written to OUT/gpu_check.jsonl) and
# a Markdown table (OUT/gpu_check.md). Exits with 1 if a check fails.
#
# `--device cpu` is the dry run, for CI: the same steps and JSON lines on
# the CPU, on a fixture model at tiny sizes (well under two minutes), so
# that the script is known to work before a GPU ever sees it. There, step 1
# checks the composed path (the GPU's) against the fused CPU kernels.
#
# Usage: bash scripts/gpu_check.sh [--device cuda|cuda:N|cpu] [--bin PATH] [--model M] [--out DIR]
# Environment: PEAK_TFLOPS_BF16, PEAK_TFLOPS_F32 (the device's peak, for the
#   utilisation; known defaults for H100/H200/A100), PYTHON [python3].
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
BIN=""
MODEL=""
OUT=""
while [ $# -gt 0 ]; do
    case $1 in
        --device) DEVICE=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
PYTHON=${PYTHON:-python3}
if [ -z "$BIN" ]; then
    for b in target/release/cram target/debug/cram; do
        if [ -x "$b" ]; then BIN=$b; break; fi
    done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "gpu_check.sh: no cram binary (give --bin PATH)" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
JSONL=$OUT/gpu_check.jsonl
: > "$JSONL"

TEXT="The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was at Norland Park, in the centre of their property."
if [ "$DEVICE" = cpu ]; then
    # The dry run: a fixture model, tiny sizes.
    MODEL=${MODEL:-tests/fixtures/llama_gqa_tied}
    BATCHES=1,2
    LENS=16,32
    CMP_LEN=32
    REPS=2
    CRAM_STEPS=2
    # The random fixture needs two vectors and a smaller lr (as the CLI
    # tests' settings).
    ROUND_TRIP=(--tokens 6 --mem 2 --lr 0.1 --beta2 0.99 --max-steps 400)
    TEXT="The keeper of the light."
else
    MODEL=${MODEL:-smollm2-135m}
    BATCHES=1,8,32
    LENS=128,512,1024
    CMP_LEN=128
    REPS=3
    CRAM_STEPS=3
    ROUND_TRIP=(--tokens 32)
fi
# The device's peak in TFLOP/s, for the utilisation (dense, no sparsity).
peak_defaults() {
    local name
    name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
    case $name in
        *H200*|*H100*SXM*|*H100*HBM3*) echo "989 67" ;;
        *H100*) echo "756 51" ;;
        *A100*) echo "312 19.5" ;;
        *) echo "" ;;
    esac
}
if [ "$DEVICE" != cpu ]; then
    read -r D_BF16 D_F32 <<< "$(peak_defaults) "
    PEAK_TFLOPS_BF16=${PEAK_TFLOPS_BF16:-${D_BF16:-}}
    PEAK_TFLOPS_F32=${PEAK_TFLOPS_F32:-${D_F32:-}}
fi
export PEAK_TFLOPS_BF16=${PEAK_TFLOPS_BF16:-} PEAK_TFLOPS_F32=${PEAK_TFLOPS_F32:-}

FAILED=0
# Runs a cram command, appending its JSON lines (with the check's name) to
# the results; a failing command is recorded as a failed result.
record() { # NAME CMD...
    local name=$1 out rc
    shift
    set +e
    out=$("$@" 2> "$OUT/stderr.txt")
    rc=$?
    set -e
    if [ -n "$out" ]; then
        printf '%s\n' "$out" | CHECK=$name "$PYTHON" -c '
import json, os, sys
peaks = {"bf16": os.environ.get("PEAK_TFLOPS_BF16"), "f32": os.environ.get("PEAK_TFLOPS_F32")}
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    r["check"] = os.environ["CHECK"]
    peak = peaks.get(r.get("dtype"))
    if "gflops" in r:
        r["mfu"] = round(r["gflops"] / (float(peak) * 1e3), 4) if peak else None
    print(json.dumps(r, sort_keys=True))
' | tee -a "$JSONL"
    fi
    if [ $rc -ne 0 ]; then
        FAILED=1
        printf '{"check": "%s", "error": %s, "pass": false}\n' "$name" \
            "$("$PYTHON" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()[-500:]))' < "$OUT/stderr.txt")" \
            | tee -a "$JSONL"
    fi
}

echo "gpu_check: $BIN on $DEVICE, model $MODEL, results in $OUT" >&2
"$BIN" --version >&2

# 1. The device against the CPU.
for dt in f32 bf16; do
    record compare "$BIN" --quiet bench compare --model "$MODEL" --device "$DEVICE" --dtype "$dt" \
        --batch 2 --len "$CMP_LEN" --json
done

# 2. A round trip on the device.
set +e
"$BIN" --quiet compress --model "$MODEL" --device "$DEVICE" "${ROUND_TRIP[@]}" --text "$TEXT" \
    -o "$OUT/round_trip.safetensors" --overwrite --json > "$OUT/compress.json" 2> "$OUT/stderr.txt"
rc1=$?
"$BIN" --quiet decompress --model "$MODEL" --device "$DEVICE" "$OUT/round_trip.safetensors" --json \
    > "$OUT/decompress.json" 2>> "$OUT/stderr.txt"
rc2=$?
set -e
"$PYTHON" - "$OUT" "$DEVICE" $rc1 $rc2 <<'EOF' | tee -a "$JSONL"
import json, sys
out, device, rc1, rc2 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def load(name):
    try:
        return json.loads(open(f"{out}/{name}").read().strip().splitlines()[-1])
    except Exception:
        return {}
c, d = load("compress.json"), load("decompress.json")
ok = rc1 == 0 and rc2 == 0 and bool(c.get("exact")) and bool(d.get("matches_original"))
print(json.dumps({"check": "round_trip", "device": device, "n_tokens": c.get("n_tokens"),
                  "n_mem": c.get("n_mem"), "steps": c.get("steps"), "seconds": c.get("wall_time_s"),
                  "exact": c.get("exact"), "matches_original": d.get("matches_original"), "pass": ok},
                 sort_keys=True))
EOF
tail -1 "$JSONL" | grep -q '"pass": true' || FAILED=1

# 3. Timings, utilisation and the memory estimate.
for dt in bf16 f32; do
    record fwd_bwd "$BIN" --quiet bench fwd-bwd --model "$MODEL" --device "$DEVICE" --dtype "$dt" \
        --batch "$BATCHES" --len "$LENS" --reps "$REPS" --warmup 1 --json
    record cram "$BIN" --quiet bench cram --model "$MODEL" --device "$DEVICE" --dtype "$dt" \
        --batch "$BATCHES" --len "$LENS" --steps "$CRAM_STEPS" --json
    record memory "$BIN" --quiet bench memory --model "$MODEL" --device "$DEVICE" --dtype "$dt" \
        --batch "$BATCHES" --len "$LENS" --json
done
if [ "$DEVICE" != cpu ] && "$PYTHON" -c 'import torch, transformers; assert torch.cuda.is_available()' 2> /dev/null; then
    GGUF=$("$BIN" --quiet fetch "$MODEL" 2> /dev/null || echo "$MODEL")
    for dt in bfloat16 float32; do
        for l in ${LENS//,/ }; do
            record torch_fwd_bwd "$PYTHON" scripts/bench_torch.py --gguf "$GGUF" --device "$DEVICE" \
                --dtype "$dt" --batches ${BATCHES//,/ } --len "$l" --steps "$REPS" --warmup 1 --json
        done
    done
fi

# The table.
"$PYTHON" - "$JSONL" <<'EOF' | tee "$OUT/gpu_check.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def f(x, spec):
    return "" if x is None else format(x, spec)
print("| check | device | dtype | B | L | result | ms/step | GFLOP/s | MFU | memory estimate (MiB) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    dtype = {"float32": "f32", "bfloat16": "bf16"}.get(r.get("dtype"), r.get("dtype", ""))
    if "error" in r:
        res = "FAILED: " + r["error"][-120:].replace("|", "/").replace("\n", " ")
    elif r["check"] == "compare":
        res = ("pass" if r["pass"] else "FAIL") + f": logits abs {r['logits_max_abs']:.1e} rel {r['logits_rel']:.1e}, grad rel {r['grad_rel']:.1e}"
    elif r["check"] == "round_trip":
        res = ("exact" if r["pass"] else "FAIL") + f": {r.get('n_tokens')} tokens, {r.get('n_mem')} vector(s), {r.get('steps')} steps, {f(r.get('seconds'), '.1f')} s"
    elif r["check"] == "memory":
        res = "estimate"
    else:
        res = r.get("impl", "")
    mem = f(r["estimate_peak_bytes"] / 2**20, ".1f") if "estimate_peak_bytes" in r else ""
    print(f"| {r['check']} | {r.get('device', '')} | {dtype} | {r.get('batch', '')} | {r.get('len', '')} | {res} "
          f"| {f(r.get('ms_per_step'), '.1f')} | {f(r.get('gflops'), '.1f')} | {f(r.get('mfu'), '.1%')} | {mem} |")
EOF
if [ $FAILED -ne 0 ]; then
    echo "gpu_check: a check FAILED (see $JSONL)" >&2
    exit 1
fi
echo "gpu_check: all checks passed" >&2
