#!/usr/bin/env bash
# cram vs PyTorch on this machine, in one run: forward+backward to the input embeddings
# (B = 1, 8; L = 128), then cramming itself (B = 1, 8; L = 64, 128; PyTorch one text at a
# time, as the paper's code). Both sides use the same number of threads. Prints a Markdown
# table to stdout; with --write, also replaces the results section of docs/benchmarks.md.
#
# Usage: bash scripts/bench.sh [--write]
# Environment (defaults in brackets):
#   PY [~/.cache/cram/pyenv/bin/python]  MODEL [smollm2-135m]
#   GGUF [~/.cache/cram/models/SmolLM2-135M-Instruct.Q4_1.gguf]  THREADS [2]
#   REPS [3] WARMUP [1]    timed / untimed forward+backward steps per configuration
#   STEPS [5]              timed cramming steps per configuration (after 1 warm-up step)
#   STEPS_PER_TEXT [1000]  steps a text is assumed to need, for texts per hour
#   BATCHES ["1 8"] FB_LEN [128] CRAM_LENS ["64 128"]   sizes (smaller for a smoke test)
# See docs/benchmarks.md for what each number means.
set -euo pipefail

WRITE=0
for a in "$@"; do
    case "$a" in
        --write) WRITE=1 ;;
        -h | --help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "bench.sh: unknown argument $a" >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "$0")/.."
PY=${PY:-$HOME/.cache/cram/pyenv/bin/python}
MODEL=${MODEL:-smollm2-135m}
GGUF=${GGUF:-$HOME/.cache/cram/models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
WARMUP=${WARMUP:-1}
STEPS=${STEPS:-5}
STEPS_PER_TEXT=${STEPS_PER_TEXT:-1000}
BATCHES=${BATCHES:-1 8}
FB_LEN=${FB_LEN:-128}
CRAM_LENS=${CRAM_LENS:-64 128}
comma() { echo "$*" | tr ' ' ','; }

# The same thread count everywhere: candle's pool (rayon), OpenBLAS, and PyTorch
# (torch.set_num_threads(--threads); OMP for good measure).
export RAYON_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS

echo "building cram ..." >&2
cargo build --quiet
CRAM=target/debug/cram

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
RES=$OUT/results.jsonl
load() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD_BEFORE=$(load)
START=$(date +%s)
echo "load average before: $LOAD_BEFORE" >&2

echo "[1/4] cram fwd-bwd ..." >&2
"$CRAM" bench fwd-bwd --model "$MODEL" --batch "$(comma $BATCHES)" --len "$FB_LEN" --reps "$REPS" --warmup "$WARMUP" --json >>"$RES"
echo "[2/4] PyTorch fwd-bwd ..." >&2
"$PY" scripts/bench_torch.py --gguf "$GGUF" --threads "$THREADS" --batches $BATCHES --len "$FB_LEN" \
    --steps "$REPS" --warmup "$WARMUP" --json >>"$RES" 2>"$OUT/torch.log" || {
    cat "$OUT/torch.log" >&2
    exit 1
}
echo "[3/4] cram engine ..." >&2
"$CRAM" bench cram --model "$MODEL" --batch "$(comma $BATCHES)" --len "$(comma $CRAM_LENS)" --steps "$STEPS" \
    --steps-per-text "$STEPS_PER_TEXT" --dump-texts "$OUT/texts.jsonl" --json >>"$RES"
echo "[4/4] PyTorch seed protocol ..." >&2
"$PY" scripts/bench_cram_torch.py --gguf "$GGUF" --threads "$THREADS" --lens $CRAM_LENS --steps "$STEPS" \
    --steps-per-text "$STEPS_PER_TEXT" --texts "$OUT/texts.jsonl" --json >>"$RES" 2>"$OUT/torch.log" || {
    cat "$OUT/torch.log" >&2
    exit 1
}
ELAPSED=$(($(date +%s) - START))
LOAD_AFTER=$(load)
echo "load average after: $LOAD_AFTER ($ELAPSED s)" >&2

CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
export CPU NPROC=$(nproc) MEM=$(free -g | awk '/^Mem:/ {print $2 " GiB"}') \
    LOAD_BEFORE LOAD_AFTER ELAPSED THREADS STEPS REPS WARMUP STEPS_PER_TEXT MODEL \
    COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
    DIRTY=$([ -n "$(git status --porcelain 2>/dev/null)" ] && echo " (with uncommitted changes)" || true) \
    DATE=$(date -u '+%Y-%m-%d %H:%M UTC')

"$PY" - "$RES" >"$OUT/table.md" <<'EOF'
import json, os, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
e = os.environ
get = lambda impl, bench, b, l: next(
    (r for r in rows if r["impl"] == impl and r["bench"] == bench and r["batch"] == b and r["len"] == l), None
)
f1 = lambda x: f"{x:,.1f}"
fh = lambda x: f"{x:,.2f}" if x < 10 else f"{x:,.1f}"  # texts per hour
ratio = lambda a, b: f"{a / b:.2f}×"
backend = next((r["backend"] for r in rows if r["impl"] == "cram"), "?")
torch_v = next((r["backend"] for r in rows if r["impl"] == "pytorch"), "?")
out = []
p = out.append
p(f"Measured {e['DATE']} on {e['CPU']} ({e['NPROC']} cores, {e['MEM']}), commit {e['COMMIT']}{e['DIRTY']}; "
  f"model `{e['MODEL']}` (float32 compute); {e['THREADS']} threads on both sides; cram matmuls: {backend}; "
  f"PyTorch: {torch_v}. Load average (1, 5, 15 min) before: {e['LOAD_BEFORE']}, after: {e['LOAD_AFTER']}; "
  f"the whole run took {e['ELAPSED']} s.")
p("")
p(f"**Forward + backward to the input embeddings** (median of {e['REPS']} steps after {e['WARMUP']} warm-up)")
p("")
p("| B | L | cram ms/step | PyTorch ms/step | time cram/PyTorch | cram GFLOP/s | PyTorch GFLOP/s |")
p("|---:|---:|---:|---:|---:|---:|---:|")
for r in sorted((r for r in rows if r["impl"] == "cram" and r["bench"] == "fwd_bwd"), key=lambda r: (r["len"], r["batch"])):
    t = get("pytorch", "fwd_bwd", r["batch"], r["len"])
    if t:
        p(f"| {r['batch']} | {r['len']} | {f1(r['ms_per_step'])} | {f1(t['ms_per_step'])} | "
          f"{ratio(r['ms_per_step'], t['ms_per_step'])} | {f1(r['gflops'])} | {f1(t['gflops'])} |")
p("")
S = e["STEPS_PER_TEXT"]
p(f"**Cramming** (1 vector per text, paper optimiser; median of {e['STEPS']} steps after 1 warm-up; "
  f"texts per hour at S = {S} steps per text). PyTorch runs one text at a time (B = 1) as the paper's code; "
  "each cram row is compared with the PyTorch row of the same L, per text-step (ms/step ÷ B).")
p("")
p("| B | L | cram ms/step | cram ms/text-step | PyTorch ms/step | time cram/PyTorch per text-step | cram GFLOP/s | PyTorch GFLOP/s "
  "| cram texts/h | PyTorch texts/h, seed (reload per text) | cram/PyTorch seed | PyTorch texts/h, no reload | cram/PyTorch no reload |")
p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in sorted((r for r in rows if r["impl"] == "cram" and r["bench"] == "cram"), key=lambda r: (r["len"], r["batch"])):
    t = get("pytorch", "cram", 1, r["len"])
    if not t:
        continue
    per = r["ms_per_step"] / r["batch"]
    p(f"| {r['batch']} | {r['len']} | {f1(r['ms_per_step'])} | {f1(per)} | {f1(t['ms_per_step'])} | "
      f"{ratio(per, t['ms_per_step'])} | {f1(r['gflops'])} | {f1(t['gflops'])} | {fh(r['texts_per_hour'])} | "
      f"{fh(t['texts_per_hour'])} | {ratio(r['texts_per_hour'], t['texts_per_hour'])} | "
      f"{fh(t['texts_per_hour_no_reload'])} | {ratio(r['texts_per_hour'], t['texts_per_hour_no_reload'])} |")
loads = sorted({round(r["load_s"], 1) for r in rows if r["impl"] == "pytorch" and "load_s" in r})
fin = [f"B={r['batch']} L={r['len']}: {r['finish_s']:.1f} s ({r['finish_steps']:.1f} steps' worth, "
       f"{100 * r['finish_share']:.2f}% of the batch's cramming time at S = {S})"
       for r in rows if r["impl"] == "cram" and r["bench"] == "cram"]
p("")
p(f"PyTorch model load (the seed protocol pays it per text): {', '.join(f'{x} s' for x in loads)}. "
  f"cram's work after the last step of a batch (metrics without vectors, greedy decode-back of all "
  f"its texts at once with one KV cache), "
  f"not counted above: {'; '.join(fin)}.")
print("\n".join(out))
EOF

cat "$OUT/table.md"

if [ "$WRITE" = 1 ]; then
    DOC=docs/benchmarks.md
    "$PY" - "$DOC" "$OUT/table.md" <<'EOF'
import sys

doc, table = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
s = open(doc).read()
a, b = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
i, j = s.index(a) + len(a), s.index(b)
open(doc, "w").write(s[:i] + "\n" + table + "\n" + s[j:])
EOF
    echo "updated $DOC" >&2
fi
