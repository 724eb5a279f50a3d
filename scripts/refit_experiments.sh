#!/usr/bin/env bash
# The refit experiments of docs/RESULTS.md: each converts (calibrating on images never
# used for evaluation), then evaluates. CIFAR models calibrate on cifar10-train and evaluate on all
# of cifar10-test; SqueezeNet calibrates on the first 256 ImageNet-sample images and evaluates on
# the other 244 (verify --skip 256).
# usage: scripts/refit_experiments.sh [NAME...]   (needs ../shared and a built target/debug/onnx-dlq;
#        with names, runs only those experiments)
set -u
cd "$(dirname "$0")/.."
S=../shared
B=${B:-target/debug/onnx-dlq}
out=${TMPDIR:-/tmp}/onnx-dlq-refit
mkdir -p "$out"
SQ=$S/models/squeezenet1.1.onnx
R20=$S/models/resnet20-cifar10.onnx
R56=$S/models/resnet56-cifar10.onnx
SQ_PRE="--preprocess $S/models/squeezenet1.1.preprocess.json"
RN_PRE="--preprocess $S/models/resnet20-cifar10.preprocess.json"
SQ_EVAL="--data $S/data/imagenet-sample $SQ_PRE --skip 256"
RN_EVAL="--data $S/data/cifar10-test $RN_PRE"
SQ_CAL="--calibrate $S/data/imagenet-sample $SQ_PRE --calib-samples 256"
RN_CAL="--calibrate $S/data/cifar10-train $RN_PRE"
L=fire2/expand3x3_1,fire3/expand3x3_1,fire4/expand3x3_1,fire5/expand3x3_1,fire6/expand3x3_1,fire7/expand3x3_1,fire8/expand3x3_1,fire9/expand3x3_1
SELECTED="$*"
run() { # name model eval-args convert-args...
  local name=$1 model=$2 eval=$3
  shift 3
  if [ -n "$SELECTED" ] && [[ " $SELECTED " != *" $name "* ]]; then return; fi
  echo "== $name: onnx-dlq $model OUT $*"
  /usr/bin/time -f "convert: %e s, peak memory %M KB" $B "$model" "$out/$name.onnx" "$@" 2>&1 |
    grep -E "^model:|target-(speedup|compression): [0-9]|^size budget|^fine-tune|^convert:"
  $B verify "$model" "$out/$name.onnx" $eval --runs 1 2>/dev/null | grep -E "^(original|converted|samples)"
}
for r in "" "--no-refit"; do
  tag=${r:+-norefit}
  run r20-dl-t2$tag $R20 "$RN_EVAL" --target-speedup 2 $RN_CAL $r
  run r20-vq-t2$tag $R20 "$RN_EVAL" --target-speedup 2 --method vq $RN_CAL $r
  run r20-dl-4$tag $R20 "$RN_EVAL" --all --ratio 4 $RN_CAL $r
  run r56-dl-t2$tag $R56 "$RN_EVAL" --target-speedup 2 $RN_CAL $r
  run sq-dl-10$tag $SQ "$SQ_EVAL" --layers $L --ratio 10 $SQ_CAL $r
  run sq-vq-10$tag $SQ "$SQ_EVAL" --layers $L --ratio 10 --method vq $SQ_CAL $r
  run sq-dl-t15$tag $SQ "$SQ_EVAL" --target-speedup 1.5 $SQ_CAL $r
done
# Γ kept as clustered (continuous refit only).
run r20-dl-t2-keep $R20 "$RN_EVAL" --target-speedup 2 $RN_CAL --refit-keep-assignment
run r20-dl-4-keep $R20 "$RN_EVAL" --all --ratio 4 $RN_CAL --refit-keep-assignment
run r56-dl-t2-keep $R56 "$RN_EVAL" --target-speedup 2 $RN_CAL --refit-keep-assignment
run sq-dl-10-keep $SQ "$SQ_EVAL" --layers $L --ratio 10 $SQ_CAL --refit-keep-assignment
# Fine-tuning after the refit (the CIFAR training images; ImageNet: the 256 calibration images).
run r20-dl-4-ft $R20 "$RN_EVAL" --all --ratio 4 $RN_CAL --finetune $S/data/cifar10-train --epochs 3
run r20-dl-t2-ft $R20 "$RN_EVAL" --target-speedup 2 $RN_CAL --finetune $S/data/cifar10-train --epochs 3
run sq-dl-10-ft $SQ "$SQ_EVAL" --layers $L --ratio 10 $SQ_CAL --finetune $S/data/imagenet-sample --finetune-samples 256 --epochs 3
# Fine-tuning the layers left original too (--train-original-layers), and VQ fine-tuned.
SQ_FT="--finetune $S/data/imagenet-sample --finetune-samples 256 --epochs 3"
run sq-dl-10-ft-orig $SQ "$SQ_EVAL" --layers $L --ratio 10 $SQ_CAL $SQ_FT --train-original-layers
run sq-vq-10-ft $SQ "$SQ_EVAL" --layers $L --ratio 10 --method vq $SQ_CAL $SQ_FT
run r20-vq-4 $R20 "$RN_EVAL" --all --ratio 4 --method vq $RN_CAL
for d in 0.001 0.1 1; do
  run r20-dl-t2-rd$d $R20 "$RN_EVAL" --target-speedup 2 $RN_CAL --refit-damping $d
  run sq-dl-10-rd$d $SQ "$SQ_EVAL" --layers $L --ratio 10 $SQ_CAL --refit-damping $d
done
# `onnx-dlq finetune` on an already converted file (an experiment above made it, so no
# re-calibration): other learning rates, the layers left original, VQ.
finetune() { # name model eval-args from-experiment finetune-args...
  local name=$1 model=$2 eval=$3 from=$4
  shift 4
  if [ -n "$SELECTED" ] && [[ " $SELECTED " != *" $name "* ]]; then return; fi
  echo "== $name: onnx-dlq finetune $model $from.onnx OUT $*"
  /usr/bin/time -f "finetune: %e s, peak memory %M KB" $B finetune "$model" "$out/$from.onnx" "$out/$name.onnx" "$@" 2>&1 |
    grep -E "^fine-tune|^kept|^no epoch|^finetune:"
  $B verify "$model" "$out/$name.onnx" $eval --runs 1 2>/dev/null | grep -E "^(original|converted|samples)"
}
SQ_DATA="--data $S/data/imagenet-sample $SQ_PRE --finetune-samples 256"
RN_DATA="--data $S/data/cifar10-train $RN_PRE"
finetune sq-dl-10-ft-lr2e-5 $SQ "$SQ_EVAL" sq-dl-10 $SQ_DATA --lr 2e-5 --epochs 4
finetune sq-dl-10-ft-lr2e-5-h20 $SQ "$SQ_EVAL" sq-dl-10 $SQ_DATA --lr 2e-5 --epochs 4 --holdout 0.2
finetune sq-dl-10-ft-labels $SQ "$SQ_EVAL" sq-dl-10 $SQ_DATA --lr 2e-5 --epochs 4 --finetune-labels
finetune sq-vq-10-ft-lr2e-5 $SQ "$SQ_EVAL" sq-vq-10 $SQ_DATA --lr 2e-5 --epochs 4
finetune r20-dl-4-ft-orig $R20 "$RN_EVAL" r20-dl-4 $RN_DATA --train-original-layers
finetune r20-dl-4-ft-orig-e2 $R20 "$RN_EVAL" r20-dl-4 $RN_DATA --train-original-layers --epochs 2
# VQ converts the FC layer too (DL skips it: L = 0), which `finetune` does not read back:
# fine-tuned by convert (DL the same way, for the comparison).
run r20-vq-4-ft $R20 "$RN_EVAL" --all --ratio 4 --method vq $RN_CAL --finetune $S/data/cifar10-train
run r20-dl-4-ft2 $R20 "$RN_EVAL" --all --ratio 4 $RN_CAL --finetune $S/data/cifar10-train
# Calibration spread over cifar10-train (--calib-select spread: every class; the CIFAR rows
# above calibrated on its first 256 images, all airplanes).
RN_CALS="$RN_CAL --calib-select spread"
RN_FT="--finetune $S/data/cifar10-train"
run r20-dl-t2-spread $R20 "$RN_EVAL" --target-speedup 2 $RN_CALS
run r20-dl-4-spread $R20 "$RN_EVAL" --all --ratio 4 $RN_CALS
run r20-dl-4-spread-ft $R20 "$RN_EVAL" --all --ratio 4 $RN_CALS $RN_FT
run r56-dl-t2-spread $R56 "$RN_EVAL" --target-speedup 2 $RN_CALS
# Palettes (--form dense --shared-codebook) under a size budget, then fine-tuned.
PAL="--all --form dense --shared-codebook --subspace 1"
run r20-pal-c8 $R20 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS
run r20-pal-c8-ft $R20 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS $RN_FT --epochs 2
run r56-pal-c8 $R56 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS
run r56-pal-c8-ft $R56 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS $RN_FT --epochs 2
# SqueezeNet at ρ = 10 with DL's c = 2 (the --target-speedup default: more atoms, fewer
# representatives at the same multiplications), refitted, then fine-tuned as sq-dl-10-ft-lr2e-5.
run sq-dl-10-c2 $SQ "$SQ_EVAL" --layers $L --ratio 10 --c 2 $SQ_CAL
finetune sq-dl-10-c2-ft $SQ "$SQ_EVAL" sq-dl-10-c2 $SQ_DATA --lr 2e-5 --epochs 4
# Soft assignments (DKM, --soft-assignments, τ annealed with the learning rate) for the
# palettes, against Γ fixed (the same conversion as r20-pal-c8-ft, fine-tuned both ways).
run r20-pal-c8-ft-b $R20 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS $RN_FT --epochs 2
run r20-pal-c8-ft-soft-anneal $R20 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS $RN_FT --epochs 2 --soft-assignments
# SqueezeNet palettes (N′ = 2, the default) under --target-compression 8, calibrated on the first
# 256 ImageNet-sample images, evaluated on the other 244.
run sq-pal-c8 $SQ "$SQ_EVAL" --all --form dense --shared-codebook --target-compression 8 $SQ_CAL
finetune sq-pal-c8-ft $SQ "$SQ_EVAL" sq-pal-c8 $SQ_DATA --epochs 3
for n in 4 1; do
  run sq-pal-c8-n$n $SQ "$SQ_EVAL" --all --form dense --shared-codebook --subspace $n --target-compression 8 $SQ_CAL
done
# Palettes refitted as one table to the patches' full covariance (Γ re-assigned between refits),
# the same commands as r20-pal-c8, r56-pal-c8 and sq-pal-c8 (which ran before palettes were refitted).
run r20-pal-c8-rf $R20 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS
run r56-pal-c8-rf $R56 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS
run sq-pal-c8-rf $SQ "$SQ_EVAL" --all --form dense --shared-codebook --target-compression 8 $SQ_CAL
# The same three, each layer's error weighed by how much of it reaches the model's output (the
# default with --calibrate since palettes are refitted; the -rf rows ran before it).
run r20-pal-c8-e2e $R20 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS
run r56-pal-c8-e2e $R56 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS
run sq-pal-c8-e2e $SQ "$SQ_EVAL" --all --form dense --shared-codebook --target-compression 8 $SQ_CAL
# The speed budget with the end-to-end weighting (as r20-dl-t2-spread, which ran before it).
run r20-dl-t2-e2e $R20 "$RN_EVAL" --target-speedup 2 $RN_CALS
# With 7-bit indices stored as two planes (K = 128 on the palette ladder) and --target-compression
# implying palettes: the same ResNet-56 and SqueezeNet commands.
run r56-pal-c8-k128 $R56 "$RN_EVAL" $PAL --target-compression 8 $RN_CALS
run sq-pal-c8-k128 $SQ "$SQ_EVAL" --all --target-compression 8 $SQ_CAL
finetune sq-pal-c8-k128-ft $SQ "$SQ_EVAL" sq-pal-c8-k128 $SQ_DATA --epochs 3
# Palette width under the final build: SqueezeNet with scalar palettes, ResNet-56 with N' = 2.
run sq-pal-c8-n1-e2e $SQ "$SQ_EVAL" --all --target-compression 8 --subspace 1 $SQ_CAL
run r56-pal-c8-n2-e2e $R56 "$RN_EVAL" --all --target-compression 8 $RN_CALS
# Palettes scaled per output channel (--channel-scale: each channel clustered relative to its
# largest weight, kept per layer where it lowers the error), both palette widths.
run sq-pal-c8-cs $SQ "$SQ_EVAL" --all --target-compression 8 --channel-scale $SQ_CAL
run sq-pal-c8-n1-cs $SQ "$SQ_EVAL" --all --target-compression 8 --subspace 1 --channel-scale $SQ_CAL
run r56-pal-c8-cs $R56 "$RN_EVAL" --all --target-compression 8 --channel-scale $RN_CALS
# The other fold: calibrated on the last 256 ImageNet-sample images, evaluated on the first 244
# (with the rows above, every image of the 488 evaluated by a model that did not see it).
SQ_EVAL_FIRST="--data $S/data/imagenet-sample $SQ_PRE --samples 244"
SQ_CAL_LAST="--calibrate $S/data/imagenet-sample $SQ_PRE --calib-samples 256 --calib-select last"
run sq-pal-c8-last $SQ "$SQ_EVAL_FIRST" --all --target-compression 8 $SQ_CAL_LAST
run sq-pal-c8-cs-last $SQ "$SQ_EVAL_FIRST" --all --target-compression 8 --channel-scale $SQ_CAL_LAST
# Palettes stored in float16 (the size budget's default: the bytes go to
# larger palettes instead), both SqueezeNet folds, and ResNet-56.
run sq-pal-c8-h $SQ "$SQ_EVAL" --all --target-compression 8 $SQ_CAL
run sq-pal-c8-h-last $SQ "$SQ_EVAL_FIRST" --all --target-compression 8 $SQ_CAL_LAST
run r56-pal-c8-h $R56 "$RN_EVAL" --all --target-compression 8 $RN_CALS
