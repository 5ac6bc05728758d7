#!/usr/bin/env bash
# Automatic batching in the Rust client, measured: on one local cluster of REPLICAS (default
# 3) replicas, alternately ROUNDS times (default 3), 64 threads of one process appending single
# 128-byte events through one kimberlite-client (examples/append_threads.rs), and
# `kimberlite benchmark --batch=1 --clients=64` (64 independent sessions). Prints both
# throughputs, and the disk's durable write speed (dd) before and after.
# Usage: scripts/client-batching.sh [ROUNDS] [REPLICAS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
replicas="${2:-3}"
events=100000
cargo build --release --quiet --workspace --examples
binary="$PWD/target/release/kimberlite"
example="$PWD/target/release/examples/append_threads"
work="$(mktemp -d -p "$PWD/target" client-batching.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

disk() {
    echo "dd 4KiB: $(dd if=/dev/zero of="$work/dd" bs=4k count=2000 oflag=direct,dsync 2>&1 | tail -1)"
    echo "dd 1MiB: $(dd if=/dev/zero of="$work/dd" bs=1M count=300 oflag=direct,dsync 2>&1 | tail -1)"
    rm -f "$work/dd"
}

base=$((20000 + RANDOM % 20000))
addresses=""
for ((replica = 0; replica < replicas; replica++)); do
    addresses+="${addresses:+,}127.0.0.1:$((base + replica))"
done
for ((replica = 0; replica < replicas; replica++)); do
    "$binary" format --cluster=5 --replica="$replica" --replica-count="$replicas" \
        "$work/$replica.kimberlite" >/dev/null
    "$binary" start --addresses="$addresses" --log-level=warn "$work/$replica.kimberlite" \
        2>>"$work/replicas.log" &
    pids+=($!)
done
sleep 1
disk
for _ in $(seq "$rounds"); do
    echo "client, 64 threads: $("$example" "$addresses" 5 64 "$events" 128)"
    out="$("$binary" benchmark --addresses="$addresses" --cluster=5 --batch=1 --clients=64 \
        --events="$events" 2>/dev/null)"
    echo "benchmark --batch=1 --clients=64: $(echo "$out" | grep throughput)"
done
disk
