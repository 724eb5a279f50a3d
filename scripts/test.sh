#!/usr/bin/env bash
# The full test suite, exactly as CI runs it (.ci/run calls this). It installs what it needs:
# Rust crates through cargo (Cargo.lock pins them) and the Python packages of the ONNX Runtime
# cross-checks (scripts/requirements-test.txt pins them) into target/venv-test, and cargo-fuzz
# for the closing fuzz smoke (pinned version, from crates.io); the Python package's wheel is built
# with maturin and tested in its own venv (scripts/test_wheel.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv-test
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p target
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
export ONNX_DLQ_PYTHON="$PWD/$venv/bin/python"
cargo fmt --all --check
# The size rule of docs/ARCHITECTURE.md: no function outside SIMD kernels above 100 lines.
python3 scripts/fn_lengths.py src crates --max 100 --top 3
cargo clippy --locked --workspace --all-targets -- -D warnings
# --nocapture: the tests' SKIPPED lines and the kernel paths that ran reach the log, and the
# summary at the end lists them.
mkdir -p target
cargo test --locked --workspace -- --nocapture 2>&1 | tee target/test.log
# The kernels' tests again with overflow checks and debug assertions on (Cargo.toml, "checked").
cargo test --locked -p dlq-kernels --profile checked
# The Python package: the wheel built, installed into a new venv and tested with pytest.
ONNX_DLQ_CLI="$PWD/target/debug/onnx-dlq" scripts/test_wheel.sh
# Coverage-guided fuzz smoke on the stable toolchain (no sanitizer): 60 s of libFuzzer over the
# seed corpus; new inputs go to target/fuzz-corpus, a crash fails the run (docs/GUIDE.md, "Fuzzing").
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
mkdir -p target/fuzz-corpus
if ! cargo fuzz run --sanitizer none load_convert target/fuzz-corpus fuzz/corpus/load_convert \
    fuzz/regressions/load_convert \
    -- -max_total_time=60 -max_len=16384 -timeout=30 >target/fuzz-smoke.log 2>&1; then
  tail -n 60 target/fuzz-smoke.log
  echo "fuzz smoke failed: full log in target/fuzz-smoke.log" >&2
  exit 1
fi
grep -a "^Done" target/fuzz-smoke.log
# The kernels' entry points on arbitrary layers, built with debug assertions and overflow checks
# (-a): 30 s of libFuzzer (crates/dlq-kernels/fuzz).
mkdir -p target/fuzz-kernel-corpus
if ! cargo fuzz run --fuzz-dir crates/dlq-kernels/fuzz -a --sanitizer none kernel_entry \
    target/fuzz-kernel-corpus -- -max_total_time=30 -max_len=512 >target/fuzz-kernel.log 2>&1; then
  tail -n 60 target/fuzz-kernel.log
  echo "kernel fuzzing failed: full log in target/fuzz-kernel.log" >&2
  exit 1
fi
grep -a "^Done" target/fuzz-kernel.log
echo "== summary"
grep -a "^kernel path" target/test.log || echo "no kernel path reported"
if grep -aq "SKIPPED" target/test.log target/pytest.log; then
  echo "skipped:"
  grep -ah "SKIPPED" target/test.log target/pytest.log | sort | uniq
else
  echo "skipped: none"
fi
