#!/usr/bin/env bash
# Runs the VOPR on random seeds for a while, one loop per core, and reports seeds per minute,
# every failure with the command that replays it, and how often each counted path ran. Each
# seed's output goes to a log; the logs of failed seeds are kept.
# Usage: scripts/vopr.sh [MINUTES] [VOPR OPTION...]     e.g. scripts/vopr.sh 10 --replicas=3
# Environment: JOBS (default: the number of cores), SEEDS (stop once this many seeds ran, even
# before the deadline), CARGO_TARGET_DIR, VOPR_LOGS (default: a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-5}"
shift || true
options=("$@")
jobs="${JOBS:-$(nproc)}"
seeds_max="${SEEDS:-0}"
target="${CARGO_TARGET_DIR:-target}"
logs="${VOPR_LOGS:-$(mktemp -d -t vopr.XXXXXX)}"
mkdir -p "$logs"

cargo build --release --quiet
binary="$target/release/kimberlite"
deadline=$(( $(date +%s) + minutes * 60 ))
start=$(date +%s)

# One worker: runs seeds until the deadline; records "seed exit-code" per run.
worker() {
    local worker_index="$1" seed log
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if [ "$seeds_max" -gt 0 ] \
            && [ "$(cat "$logs"/results-* 2>/dev/null | wc -l)" -ge "$seeds_max" ]; then
            break
        fi
        seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
        log="$logs/seed-$seed.log"
        if "$binary" vopr --seed="$seed" "${options[@]}" >"$log" 2>&1; then
            echo "$seed 0" >>"$logs/results-$worker_index"
            grep '^coverage:' "$log" >>"$logs/coverage-$worker_index" || true
            rm -f "$log"
        else
            echo "$seed $?" >>"$logs/results-$worker_index"
            grep '^coverage:' "$log" >>"$logs/coverage-$worker_index" || true
        fi
    done
}

echo "vopr: $jobs job(s) for $minutes minute(s)${SEEDS:+ or $SEEDS seeds}, options: ${options[*]:-(none)}, logs: $logs"
for worker_index in $(seq 1 "$jobs"); do
    worker "$worker_index" &
done
wait

elapsed=$(( $(date +%s) - start ))
seeds=$(cat "$logs"/results-* 2>/dev/null | wc -l)
failures=$(cat "$logs"/results-* 2>/dev/null | awk '$2 != 0' | wc -l)
per_minute=$(awk -v seeds="$seeds" -v elapsed="$elapsed" \
    'BEGIN { printf "%.1f", (elapsed > 0 ? seeds * 60 / elapsed : 0) }')
echo "vopr: $seeds seeds in ${elapsed}s ($per_minute seeds/minute), $failures failed"
# How often each counted path ran over the campaign (summed over seeds): a 0 is a path never
# reached.
echo "coverage (summed over all seeds; seeds with the path > 0):"
cat "$logs"/coverage-* 2>/dev/null | awk '
    { sum[$2] += $3; if ($3 > 0) seen[$2] += 1; if (!($2 in order)) { order[$2] = n++; names[n - 1] = $2 } }
    END { for (i = 0; i < n; i++) printf "  %-48s %14d %8d\n", names[i], sum[names[i]], seen[names[i]] }'
if [ "$failures" -gt 0 ]; then
    cat "$logs"/results-* | awk '$2 != 0 { print $1 }' | while read -r seed; do
        reason=$(grep -m1 -E '^FAILED|panicked at' "$logs/seed-$seed.log" || echo "(no reason)")
        echo "  $reason"
        echo "    reproduce: $(grep -m1 '^reproduce:' "$logs/seed-$seed.log" \
            | sed 's/^reproduce: //' || echo "kimberlite vopr --seed=$seed ${options[*]}")"
        echo "    log: $logs/seed-$seed.log"
    done
    exit 1
fi
