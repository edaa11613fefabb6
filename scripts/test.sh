#!/usr/bin/env bash
# The whole check, as CI runs it: formatting, lints (warnings are errors), and every test of the
# workspace (unit tests, and integration tests that start the real binary on loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
