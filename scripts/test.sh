#!/usr/bin/env bash
# The full test suite, exactly as CI runs it (.ci/run calls this). It installs what it needs:
# Rust crates come through cargo (Cargo.lock pins them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
