#!/usr/bin/env bash
# Failover time on real processes: three replicas on loopback under a steady write load; the
# primary (found from the view the replicas answer pings with) is killed with SIGKILL, the time
# to the next acknowledged write is measured, the replica is restarted, and again, KILLS times
# (default 20). Prints every sample and p50/p99/max. CI runs the same test with 2 kills.
# Usage: scripts/failover.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-20}"
log="$(mktemp -t failover.XXXXXX)"
if FAILOVER_KILLS="$kills" cargo test --release --quiet --test crash \
    failover_time_after_kill_9_of_the_primary -- --nocapture >"$log" 2>&1; then
    grep -h "^failover:" "$log"
    rm -f "$log"
else
    grep -h "^failover:" "$log" || true
    echo "failover measurement FAILED: $log"
    exit 1
fi
