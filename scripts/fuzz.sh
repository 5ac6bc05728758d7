#!/usr/bin/env bash
# Runs every fuzz target for a while, then minimizes its corpus in place so the corpus that
# `cargo test` replays stays small. Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-300}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
for target in "${targets[@]}"; do
    echo "== $target: fuzzing for ${seconds}s"
    mkdir -p "corpus/$target"
    cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" \
        -print_final_stats=1 2>&1 | grep -E '^(#[0-9]+ +DONE|stat::|==|SUMMARY|Done)' || true
    if [ -d "artifacts/$target" ] && [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
        echo "== $target: CRASHES in fuzz/artifacts/$target: minimize, fix, commit as corpus"
        exit 1
    fi
    echo "== $target: minimizing corpus"
    cargo +nightly fuzz cmin "$target" "corpus/$target" 2>&1 | tail -1
    echo "== $target: $(ls "corpus/$target" | wc -l) corpus files"
done
