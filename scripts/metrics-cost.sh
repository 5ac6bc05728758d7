#!/usr/bin/env bash
# The cost of the metrics endpoint on throughput: `kimberlite benchmark` against one replica
# started without --metrics, then with --metrics and a scraper fetching /metrics every
# SCRAPE_MS (default 100: 150 times Prometheus's default rate), alternated ROUNDS times
# (default 3), batched and with one event per request. Prints every run's throughput line and
# the disk's durable write speed (dd, O_DIRECT|O_DSYNC) before and after.
# Usage: scripts/metrics-cost.sh [ROUNDS]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
scrape_ms="${SCRAPE_MS:-100}"
cargo build --release --quiet
binary="$PWD/target/release/kimberlite"
work="$(mktemp -d -p "$PWD/target" metrics-cost.XXXXXX)"
replica_pid=""
scraper_pid=""
cleanup() {
    [ -n "$scraper_pid" ] && kill "$scraper_pid" 2>/dev/null || true
    [ -n "$replica_pid" ] && kill "$replica_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

disk() {
    echo "dd 4KiB: $(dd if=/dev/zero of="$work/dd" bs=4k count=2000 oflag=direct,dsync 2>&1 | tail -1)"
    echo "dd 1MiB: $(dd if=/dev/zero of="$work/dd" bs=1M count=300 oflag=direct,dsync 2>&1 | tail -1)"
    rm -f "$work/dd"
}

# scrape PORT: GET /metrics every SCRAPE_MS until killed, over bash's /dev/tcp (no curl needed).
scrape() {
    local port=$1
    while true; do
        if exec 3<>"/dev/tcp/127.0.0.1/$port"; then
            printf 'GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n' >&3
            cat <&3 >/dev/null
            exec 3<&-
        fi
        sleep "$(awk "BEGIN { print $scrape_ms / 1000 }")"
    done
}

# run MODE ARGS...: a fresh replica (with metrics and a scraper if MODE is "metrics"), the
# benchmark against it, then the replica stopped and its file removed.
run() {
    local mode=$1
    shift
    local port=$((20000 + RANDOM % 20000))
    local metrics_port=$((port + 1))
    "$binary" format --cluster=9 --replica=0 --replica-count=1 "$work/0_0.kimberlite" >/dev/null
    local flags=()
    if [ "$mode" = metrics ]; then flags=(--metrics="127.0.0.1:$metrics_port"); fi
    "$binary" start --addresses="127.0.0.1:$port" "${flags[@]}" "$work/0_0.kimberlite" \
        2>"$work/replica.log" &
    replica_pid=$!
    until grep -q "event=replica_listening" "$work/replica.log"; do sleep 0.05; done
    if [ "$mode" = metrics ]; then
        scrape "$metrics_port" &
        scraper_pid=$!
    fi
    local out
    out="$("$binary" benchmark --addresses="127.0.0.1:$port" --cluster=9 "$@" 2>/dev/null)"
    if [ -n "$scraper_pid" ]; then kill "$scraper_pid"; wait "$scraper_pid" 2>/dev/null || true; fi
    scraper_pid=""
    kill "$replica_pid"
    wait "$replica_pid" 2>/dev/null || true
    replica_pid=""
    rm -f "$work/0_0.kimberlite"
    echo "[$mode $*] $(echo "$out" | grep throughput) | $(echo "$out" | grep latency)"
}

disk
for args in "--events=2000000" "--batch=1 --clients=64 --events=100000"; do
    for _ in $(seq "$rounds"); do
        # shellcheck disable=SC2086
        run none $args
        # shellcheck disable=SC2086
        run metrics $args
    done
done
disk
