#!/usr/bin/env bash
# The real-process fault tests, again and again for a while: three replica processes on
# loopback under load; kill -9 of the primary and of backups, restarts, a rotten WAL sector;
# afterwards every acknowledged event must be on every replica, exactly once. CI runs each
# test once (`cargo test --release --test crash`); this runs them until the time is up and
# reports the failover times the tests print.
# Usage: scripts/process-faults.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
logs="$(mktemp -d -t process-faults.XXXXXX)"
cargo test --release --test crash --no-run --quiet
deadline=$(( $(date +%s) + minutes * 60 ))
runs=0
failures=0
while [ "$(date +%s)" -lt "$deadline" ]; do
    runs=$((runs + 1))
    log="$logs/run-$runs.log"
    if cargo test --release --quiet --test crash -- --nocapture >"$log" 2>&1; then
        grep -h "^failover:" "$log" || true
        rm -f "$log"
    else
        failures=$((failures + 1))
        echo "run $runs FAILED: $log"
    fi
done
echo "runs=$runs failures=$failures (logs of failed runs in $logs)"
[ "$failures" -eq 0 ]
