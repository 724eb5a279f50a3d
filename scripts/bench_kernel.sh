#!/usr/bin/env bash
# Runs scripts/bench_kernel.py (native DlqConv kernel vs ONNX Runtime's dense Conv) in
# a venv with the project's pinned ONNX Runtime packages (same pins as requirements-test.txt).
# Honours CARGO_TARGET_DIR (e.g. CARGO_TARGET_DIR=/tmp/bench-target scripts/bench_kernel.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/../target/venv-bench-kernel"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check onnxruntime==1.31.1 onnx==1.23.2 numpy==2.4.6
exec "$venv/bin/python" "$here/bench_kernel.py" "$@"
