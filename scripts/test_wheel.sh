#!/usr/bin/env bash
# The Python package as a user gets it: builds the wheel (scripts/build_wheel.sh), installs it
# into a new virtual environment beside onnxruntime (scripts/requirements-wheel-test.txt), and
# runs tests/python with pytest, with no variable pointing at ONNX Runtime or the custom-op
# library. The cargo-built command is compared with the wheel's. Output in target/pytest.log.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build_wheel.sh --quiet
wheel=$(ls -t target/wheels/onnx_dlq-*.whl | head -n 1)
venv=target/venv-wheel
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  -r scripts/requirements-wheel-test.txt "$wheel"
# The cargo-built command to compare with: ONNX_DLQ_CLI when the caller has one (scripts/test.sh
# passes the one `cargo test` just built), else built here.
if [ -z "${ONNX_DLQ_CLI:-}" ]; then
  cargo build --locked --quiet --bin onnx-dlq
  ONNX_DLQ_CLI="$PWD/target/debug/onnx-dlq"
fi
env -u ORT_DYLIB_PATH -u ONNX_DLQ_PYTHON -u ONNX_DLQ_ORT_LIBRARY \
  ONNX_DLQ_CLI="$ONNX_DLQ_CLI" PYTHONDONTWRITEBYTECODE=1 \
  "$venv/bin/python" -m pytest -p no:cacheprovider -rs tests/python 2>&1 | tee target/pytest.log
