#!/usr/bin/env bash
# Re-trains models/digits-cnn.onnx and rewrites models/digits-test/ (see train_default_model.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/../target/venv-train"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements-train.txt"
exec "$venv/bin/python" "$here/train_default_model.py" "$@"
