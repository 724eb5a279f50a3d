#!/usr/bin/env bash
# The full test suite, exactly as CI runs it (.ci/run calls this). It installs what it needs:
# Rust crates through cargo (Cargo.lock pins them) and the Python packages of the ONNX Runtime
# cross-checks (scripts/requirements-test.txt pins them) into target/venv-test.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-test
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p target
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
export ONNX_DLQ_PYTHON="$PWD/$venv/bin/python"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
