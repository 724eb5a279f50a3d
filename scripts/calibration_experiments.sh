#!/usr/bin/env bash
# The calibration and --target-speedup experiments of docs/RESULTS.md: each converts,
# then evaluates on the images not used for calibration (verify --skip N).
# usage: scripts/calibration_experiments.sh   (needs ../shared and a built target/debug/onnx-dlq)
set -u
cd "$(dirname "$0")/.."
S=../shared
B=target/debug/onnx-dlq
out=${TMPDIR:-/tmp}/onnx-dlq-calibration
mkdir -p "$out"
SQ_EVAL="--data $S/data/imagenet-sample --preprocess $S/models/squeezenet1.1.preprocess.json"
RN_EVAL="--data $S/data/cifar10-test --preprocess $S/models/resnet20-cifar10.preprocess.json"
SQ_CAL="--calibrate $S/data/imagenet-sample --preprocess $S/models/squeezenet1.1.preprocess.json"
RN_CAL="--calibrate $S/data/cifar10-test --preprocess $S/models/resnet20-cifar10.preprocess.json"
L=fire2/expand3x3_1,fire3/expand3x3_1,fire4/expand3x3_1,fire5/expand3x3_1,fire6/expand3x3_1,fire7/expand3x3_1,fire8/expand3x3_1,fire9/expand3x3_1
run() { # name model eval-args skip convert-args...
  local name=$1 model=$2 eval=$3 skip=$4
  shift 4
  echo "== $name: onnx-dlq $model OUT $*"
  $B "$model" "$out/$name.onnx" "$@" 2>&1 | grep -E "model:|target-speedup: [0-9]"
  $B verify "$model" "$out/$name.onnx" $eval --skip "$skip" --runs 1 2>/dev/null
}
SQ=$S/models/squeezenet1.1.onnx
RN=$S/models/resnet20-cifar10.onnx
for m in dl vq; do
  run sq-$m-10 $SQ "$SQ_EVAL" 256 --layers $L --ratio 10 --method $m
  run sq-$m-10-cal $SQ "$SQ_EVAL" 256 --layers $L --ratio 10 --method $m $SQ_CAL --calib-samples 256
done
for d in 0.01 0.3 1 3 10; do
  run sq-dl-10-cal-d$d $SQ "$SQ_EVAL" 256 --layers $L --ratio 10 $SQ_CAL --calib-samples 256 --calib-damping $d
done
run sq-dl-t15-cal $SQ "$SQ_EVAL" 256 --target-speedup 1.5 $SQ_CAL --calib-samples 256
run sq-dl-t15 $SQ "$SQ_EVAL" 256 --target-speedup 1.5
run sq-dl-t15-c3-cal $SQ "$SQ_EVAL" 256 --target-speedup 1.5 --c 3 $SQ_CAL --calib-samples 256
run sq-vq-t15-cal $SQ "$SQ_EVAL" 256 --target-speedup 1.5 --method vq $SQ_CAL --calib-samples 256
run r20-dl-t2-cal512 $RN "$RN_EVAL" 512 --target-speedup 2 $RN_CAL --calib-samples 512
run r20-dl-t2-cal256 $RN "$RN_EVAL" 256 --target-speedup 2 $RN_CAL --calib-samples 256
run r20-dl-t2 $RN "$RN_EVAL" 512 --target-speedup 2
run r20-dl-t2-c3-cal256 $RN "$RN_EVAL" 256 --target-speedup 2 --c 3 $RN_CAL --calib-samples 256
run r20-vq-t2-cal512 $RN "$RN_EVAL" 512 --target-speedup 2 --method vq $RN_CAL --calib-samples 512
run r20-dl-4 $RN "$RN_EVAL" 256 --all --ratio 4
run r20-dl-4-cal $RN "$RN_EVAL" 256 --all --ratio 4 $RN_CAL --calib-samples 256
