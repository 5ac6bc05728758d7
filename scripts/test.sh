#!/usr/bin/env bash
# The tests: every crate of the workspace (the replica, its process tests, the Rust client
# against real clusters), then the Python client, built on the same core with one pip install
# into a virtual environment under target/, against a real cluster. What CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked --workspace
# The client crate brings neither io_uring nor the replica's allocator to an application.
if cargo tree --locked -p kimberlite-client -e normal | grep -q io-uring; then
    echo "kimberlite-client depends on io-uring" >&2
    exit 1
fi
python3 -m venv target/python-venv
target/python-venv/bin/pip install --quiet ./src/clients/python
# XXH3 for the client written from docs/client-protocol.md alone (tests/test_protocol_doc.py).
target/python-venv/bin/pip install --quiet xxhash
KIMBERLITE_BINARY="$PWD/target/release/kimberlite" \
    target/python-venv/bin/python -m unittest discover -s src/clients/python/tests -v
