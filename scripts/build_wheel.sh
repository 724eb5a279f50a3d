#!/usr/bin/env bash
# Builds the Python package (crates/dlq-py: the onnx_dlq module, the onnx-dlq command and the
# ONNX Runtime custom-op library in one abi3 wheel for CPython 3.9 and later) into target/wheels.
# maturin comes from the package registry, pinned in scripts/requirements-build.txt; Rust crates
# from Cargo.lock. Extra arguments go to `maturin build`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-build
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p target
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-build.txt
"$venv/bin/maturin" build --release --locked --manifest-path crates/dlq-py/Cargo.toml \
  --out target/wheels "$@"
