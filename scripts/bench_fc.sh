#!/usr/bin/env bash
# The large fully connected layer of BENCHMARKS.md: a 4096x4096 Gemm (scripts/make_fc_model.py) converted
# to the compact form (palettes) and to the standard-operator form, file sizes and ONNX Runtime
# latency at batch 1 (one thread) against the original, all in one run (runs alternate between
# the original and each converted model: scripts/bench_models_ort.py). Uses the test venv
# (scripts/test.sh makes it), target/debug/onnx-dlq (cargo build) and the DlqConv library
# (cargo build --release -p dlq-ort) for the fused form.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py="$here/../target/venv-test/bin/python"
bin="$here/../target/debug/onnx-dlq"
out=${1:-/tmp/fcbench}
mkdir -p "$out"
"$py" "$here/make_fc_model.py" "$out/fc.onnx"
convert() { local name=$1; shift; "$bin" "$out/fc.onnx" "$out/$name.onnx" --layers fc --no-latency "$@" >/dev/null; }
convert dense-n1k16 --form dense --shared-codebook --subspace 1 --k 16
convert dense-n2k256 --form dense --shared-codebook --subspace 2 --k 256
convert dense-n4k256 --form dense --shared-codebook --subspace 4 --k 256
convert ops-vq-n16k256 --form ops --method vq --subspace 16 --k 256
convert ops-dl-n16r16 --form ops --subspace 16 --ratio 16
convert ops-dl-n32r32 --form ops --subspace 32 --ratio 32
convert fused-vq-n16k256 --form fused --method vq --subspace 16 --k 256
convert fused-dl-n16r16 --form fused --subspace 16 --ratio 16
lscpu | grep -E "Model name" || true
forms="dense-n1k16 dense-n2k256 dense-n4k256 ops-vq-n16k256 ops-dl-n16r16 ops-dl-n32r32 fused-vq-n16k256 fused-dl-n16r16"
printf "fc\t%s bytes\n" "$(stat -c %s "$out/fc.onnx")"
pairs=()
for f in $forms; do
  printf "%s\t%s bytes\n" "$f" "$(stat -c %s "$out/$f.onnx")"
  pairs+=("$out/fc.onnx" "$out/$f.onnx")
done
"$py" "$here/bench_models_ort.py" --lib "$here/../target/release/libonnx_dlq_ort.so" --runs 200 "${pairs[@]}"
