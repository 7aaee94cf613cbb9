#!/usr/bin/env bash
# Forward + backward to the input embeddings at B=1, L=128 on the small
# fixture models of every architecture, cram beside PyTorch (transformers),
# one after the other in this script on this machine; prints a Markdown table
# with the ratio. Usage: bash scripts/bench_archs.sh [FIXTURE_DIR...]
# Environment: PY (Python with torch + transformers), THREADS (default 2),
# REPS (timed steps, default 5), LEN (default 128).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-~/.cache/cram/pyenv/bin/python}
THREADS=${THREADS:-2}
REPS=${REPS:-5}
LEN=${LEN:-128}
export RAYON_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
if [ $# -eq 0 ]; then
    set -- $(for c in tests/fixtures/*/config.json; do dirname "$c"; done)
fi
cargo build -q
CRAM=target/debug/cram
echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores, commit $(git rev-parse --short HEAD), load average $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| model | architecture | parameters | cram ms | PyTorch ms | time cram/PyTorch |"
echo "|---|---|---:|---:|---:|---:|"
for dir in "$@"; do
    arch=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['model_type'])" "$dir/config.json")
    c=$("$CRAM" --quiet bench fwd-bwd --model "$dir" --batch 1 --len "$LEN" --reps "$REPS" --warmup 2 --json | tail -1)
    p=$("$PY" scripts/bench_torch.py --model "$dir" --threads "$THREADS" --batches 1 --len "$LEN" --steps "$REPS" --json | tail -1)
    "$PY" - "$dir" "$arch" "$c" "$p" <<'PYEOF'
import json, sys
d, arch, c, p = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
print(f"| `{d.rstrip('/').split('/')[-1]}` | {arch} | {c.get('params', '')} | {c['ms_per_step']:.2f} | {p['ms_per_step']:.2f} | {c['ms_per_step'] / p['ms_per_step']:.2f}x |")
PYEOF
done
