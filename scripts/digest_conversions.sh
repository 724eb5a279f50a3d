#!/usr/bin/env bash
# Digests of converted models over several models, methods, ratios and paths (fp16, calibrated,
# --target-speedup, external data), plus the inspect/diff JSON: run before and after a change
# that must not alter what a conversion computes, and compare the two listings.
#   scripts/digest_conversions.sh [BINARY] > before.txt
# BINARY defaults to target/debug/onnx-dlq (the test profile, optimised); ../shared is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/onnx-dlq}
shared=../shared
# A fixed folder: the diff JSON names the files it compares.
out=/tmp/onnx-dlq-digest
rm -rf "$out" && mkdir -p "$out"
sq=$shared/models/squeezenet1.1.onnx
r20=$shared/models/resnet20-cifar10.onnx
run() { # name, then convert arguments
  local name=$1; shift
  "$bin" "$@" >/dev/null 2>"$out/$name.log" || { echo "$name FAILED"; cat "$out/$name.log" >&2; return; }
}
run digits-dl models/digits-cnn.onnx "$out/digits-dl.onnx" --all --ratio 4
run digits-vq models/digits-cnn.onnx "$out/digits-vq.onnx" --all --ratio 4 --method vq
run digits-dl-ext models/digits-cnn.onnx "$out/digits-dl-ext.onnx" --all --ratio 3 --external-data
run sq-fire8-dl20 "$sq" "$out/sq-fire8-dl20.onnx" --layers fire8/expand3x3_1 --ratio 20
run sq-fire8-vq10 "$sq" "$out/sq-fire8-vq10.onnx" --layers fire8/expand3x3_1 --ratio 10 --method vq
run sq16-fire9-dl10 "$shared/models/squeezenet1.1-fp16.onnx" "$out/sq16-fire9-dl10.onnx" --layers fire9/expand3x3_1 --ratio 10 --subspace 4 --c 2 --alpha 1
run r20-all-vq4 "$r20" "$out/r20-all-vq4.onnx" --all --ratio 4 --method vq
run r20-target2 "$r20" "$out/r20-target2.onnx" --target-speedup 2
run r20-cal-target15 "$r20" "$out/r20-cal-target15.onnx" --target-speedup 1.5 \
  --calibrate "$shared/data/cifar10-train" --preprocess "$shared/models/resnet20-cifar10.preprocess.json" --calib-samples 32
run sq-cal-fire6 "$sq" "$out/sq-cal-fire6.onnx" --layers fire6/expand3x3_1 --ratio 10 \
  --calibrate "$shared/data/imagenet-sample" --preprocess "$shared/models/squeezenet1.1.preprocess.json" --calib-samples 8
# Every output form, the int8 output, and a converted file's codebooks read back by fine-tuning.
r20pre=$shared/models/resnet20-cifar10.preprocess.json
cifar=$shared/data/cifar10-train
run digits-fused models/digits-cnn.onnx "$out/digits-fused.onnx" --all --ratio 4 --form fused
run digits-dense-dl models/digits-cnn.onnx "$out/digits-dense-dl.onnx" --all --ratio 4 --form dense
run r20-dense-vq "$r20" "$out/r20-dense-vq.onnx" --all --ratio 4 --method vq --form dense
run r20-palette8 "$r20" "$out/r20-palette8.onnx" --all --target-compression 8 --shared-codebook --subspace 1
run r20-int8 "$r20" "$out/r20-int8.onnx" --all --target-compression 8 --int8 \
  --calibrate "$cifar" --preprocess "$r20pre" --calib-samples 32
"$bin" finetune "$r20" "$out/r20-all-vq4.onnx" "$out/r20-ft-ops.onnx" --data "$cifar" \
  --preprocess "$r20pre" --epochs 1 --finetune-samples 64 >/dev/null 2>"$out/r20-ft-ops.log" || echo "r20-ft-ops FAILED"
"$bin" finetune "$r20" "$out/r20-palette8.onnx" "$out/r20-ft-palette.onnx" --data "$cifar" \
  --preprocess "$r20pre" --epochs 1 --finetune-samples 64 >/dev/null 2>"$out/r20-ft-palette.log" || echo "r20-ft-palette FAILED"
"$bin" finetune models/digits-cnn.onnx "$out/digits-fused.onnx" "$out/digits-ft-fused.onnx" --data models/digits-test \
  --preprocess models/digits-cnn.preprocess.json --epochs 1 --finetune-samples 64 >/dev/null 2>"$out/digits-ft-fused.log" || echo "digits-ft-fused FAILED"
"$bin" inspect "$sq" --json >"$out/inspect-sq.json"
"$bin" diff models/digits-cnn.onnx "$out/digits-dl.onnx" --json >"$out/diff-digits.json"
cd "$out"
sha256sum -- *.onnx *.data *.json 2>/dev/null | sed "s#$out/##"
