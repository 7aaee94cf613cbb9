#!/usr/bin/env bash
# The convergence study of docs/convergence.md: which layout, learning rate,
# schedule, initialisation and betas decode the most texts exactly (one
# vector) in the fewest steps, on SmolLM2-135M and Gemma 3 270M, 8 texts of
# ../shared/data/pg19_standin.csv per cell. Every variant is the default
# protocol (`cram`) with the flags shown, or the paper protocol capped at
# 500 steps. Variants are one change at a time from the default (rows
# marked `init randn` or `lr 0.1` come from earlier candidate defaults). Results: docs/study/convergence.jsonl (appended; cells already
# there are skipped, so an interrupted study resumes); tables:
#   cargo run --example convergence_study -- --table docs/study/convergence.jsonl
#
# Usage: bash scripts/convergence_study.sh [STAGE ...]   (default: all stages, in order)
# Environment: STUDY [the example binary; built with cargo if unset], DATA [../shared/data/pg19_standin.csv]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/pg19_standin.csv}
OUT=docs/study/convergence.jsonl
if [ -z "${STUDY:-}" ]; then
    cargo build --quiet --example convergence_study
    STUDY=target/debug/examples/convergence_study
fi
run() { # MODEL LENGTHS VARIANT...
    local model=$1 lens=$2
    shift 2
    local args=()
    for v in "$@"; do args+=(--variant "$v"); done
    "$STUDY" --model "$model" --input "$DATA" --texts 8 --tokens "$lens" --out "$OUT" "${args[@]}"
}
PAPER='paper=--protocol paper --max-steps 500'
R='--init randn'
LR1="$R --lr 0.1 --min-lr 0.01"
stage() {
    case $1 in
        smol16) run smollm2-135m 16 'cram=' "$PAPER" "init randn=$R" "lr 0.1, init randn=$LR1" \
            "sink none, lr 0.1, init randn=$LR1 --sink none" \
            "sink <|im_start|>, lr 0.1, init randn=$LR1 --sink <|im_start|>" ;;
        smol32) run smollm2-135m 32 'cram=' "$PAPER" "init randn=$R" "lr 0.1, init randn=$LR1" ;;
        gemma16) run gemma3-270m 16 'cram=' "init randn=$R" "sink none ([mem, BOS, text]), init randn=$R --sink none" ;;
        smol16b) run smollm2-135m 16 'lr 0.03=--lr 0.03 --min-lr 0.003' 'lr 0.01=--lr 0.01 --min-lr 0.001' \
            'init token=--init token:0' 'betas 0.9/0.99=--beta2 0.99' ;;
        gemma16b) run gemma3-270m 16 'lr 0.03=--lr 0.03 --min-lr 0.003' 'lr 0.01=--lr 0.01 --min-lr 0.001' \
            'init token=--init token:0' 'betas 0.9/0.99=--beta2 0.99' 'lr 0.1=--lr 0.1 --min-lr 0.01' "$PAPER" ;;
        smol32b) run smollm2-135m 32 'sink none=--sink none' 'betas 0.9/0.99=--beta2 0.99' 'lr 0.03=--lr 0.03 --min-lr 0.003' ;;
        gemma32) run gemma3-270m 32 'cram=' "$PAPER" ;;
        paper32) run smollm2-135m 32 'paper, 1400 steps=--protocol paper --max-steps 1400' ;;
        long) run smollm2-135m 64 'cram=' && run gemma3-270m 64 'cram=' && run smollm2-135m 128 'cram=' && run gemma3-270m 128 'cram=' ;;
        *) echo "unknown stage $1" >&2; exit 2 ;;
    esac
}
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(smol16 smol32 gemma16 gemma32 smol16b gemma16b smol32b paper32 long)
for s in "${STAGES[@]}"; do stage "$s"; done
