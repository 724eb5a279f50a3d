#!/usr/bin/env bash
# Peak resident memory (GNU time's "Maximum resident set size") and wall time of convert,
# calibrated convert, verify and fine-tune on SqueezeNet 1.1 and ResNet-56, and of inspect and
# convert (plain and calibrated) and verify on a 720x720 model of the fast-neural-style kind
# (scripts/make_hires_model.py). HIRES_ONLY=1 measures the 720x720 rows alone.
# usage: scripts/bench_memory.sh [SHARED] [ONNX_DLQ]   (defaults ../shared, target/debug/onnx-dlq)
# Needs /usr/bin/time and the packages of scripts/requirements-bench.txt (ONNX_DLQ_PYTHON).
set -uo pipefail
S=${1:-../shared}; B=${2:-target/debug/onnx-dlq}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
py=${ONNX_DLQ_PYTHON:-python3}
m() {
  local name=$1; shift
  /usr/bin/time -v "$@" > /dev/null 2> "$work/$name.err"
  printf '%s\t%s KB\t%s\texit %s\n' "$name" \
    "$(grep 'Maximum resident' "$work/$name.err" | awk '{print $6}')" \
    "$(grep 'Elapsed' "$work/$name.err" | awk '{print $8}')" \
    "$(grep 'Exit status' "$work/$name.err" | awk '{print $3}')"
}
SQ=$S/models/squeezenet1.1.onnx; R56=$S/models/resnet56-cifar10.onnx
SQP="--preprocess $S/models/squeezenet1.1.preprocess.json"
RP="--preprocess $S/models/resnet56-cifar10.preprocess.json"
"$py" "$(dirname "$0")/make_hires_model.py" "$work/hires.onnx" 720
# ImageNet-sample photos resized and cropped to 720x720 for the 720x720 model's calibration.
cat > "$work/hires.preprocess.json" <<'JSON'
{"input": "x", "layout": "NCHW", "resize_shorter": 720, "center_crop": [720, 720],
 "channel_order": "RGB", "scale": 1.0, "mean": [0, 0, 0], "std": [255, 255, 255]}
JSON
if [ -z "${HIRES_ONLY:-}" ]; then
m sq-convert "$B" "$SQ" "$work/sq.onnx" --all --ratio 4 --no-latency
m sq-convert-calibrated "$B" "$SQ" "$work/sqc.onnx" --all --target-compression 8 \
  --calibrate "$S/data/imagenet-sample" $SQP --no-latency
m sq-verify "$B" verify "$SQ" "$work/sqc.onnx" --data "$S/data/imagenet-sample" $SQP --skip 256 --engine ort
m sq-finetune "$B" finetune "$SQ" "$work/sqc.onnx" "$work/sqf.onnx" --data "$S/data/imagenet-sample" \
  $SQP --finetune-samples 256 --epochs 1
m r56-convert "$B" "$R56" "$work/r56.onnx" --all --ratio 4 --no-latency
m r56-convert-calibrated "$B" "$R56" "$work/r56c.onnx" --all --target-compression 8 \
  --calibrate "$S/data/cifar10-train" --calib-select spread $RP --no-latency
m r56-verify "$B" verify "$R56" "$work/r56c.onnx" --data "$S/data/cifar10-test" $RP --engine ort
m r56-finetune "$B" finetune "$R56" "$work/r56c.onnx" "$work/r56f.onnx" --data "$S/data/cifar10-train" \
  $RP --finetune-samples 1000 --epochs 1
fi
m hires-inspect "$B" inspect "$work/hires.onnx"
m hires-convert "$B" "$work/hires.onnx" "$work/hi.onnx" --all --ratio 4
m hires-convert-compact "$B" "$work/hires.onnx" "$work/hic.onnx" --all --ratio 4 --form dense
m hires-verify-compact "$B" verify "$work/hires.onnx" "$work/hic.onnx" --engine ort
# Refused before it runs: the standard-operator form's tensors exceed what is available.
m hires-verify-ops "$B" verify "$work/hires.onnx" "$work/hi.onnx" --engine ort
m hires-convert-calibrated "$B" "$work/hires.onnx" "$work/hical.onnx" --all --ratio 4 \
  --calibrate "$S/data/imagenet-sample" --calib-samples 16 --preprocess "$work/hires.preprocess.json"
