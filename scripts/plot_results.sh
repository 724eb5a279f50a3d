#!/usr/bin/env bash
# Runs scripts/plot_results.py in a venv with pinned matplotlib (docs/results-top1.svg).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/../target/venv-plot"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check matplotlib==3.10.7
exec "$venv/bin/python" "$here/plot_results.py" "$@"
