#!/usr/bin/env bash
# Runs scripts/bench_cluster.py in a venv with the pinned benchmark packages.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/../target/venv-bench"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check numpy==2.4.6 scikit-learn==1.9.1 onnx==1.23.2
exec "$venv/bin/python" "$here/bench_cluster.py" "$@"
