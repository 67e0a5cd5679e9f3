#!/usr/bin/env bash
# 2-bit QAT on the synthetic corpus for 12 (EPOCHS) epochs with a cosine learning-rate schedule (to 2%
# of the peak at the last step) instead of the experiment's noam decay, every run against the
# float model fine-tuned the same way (the control); what docs/results/synthetic_cos12 was
# made with (about 100 min here):
#   bash recipes/synthetic/qat12_cosine.sh
# Needs runs/synthetic_study12 (the issue-12 study: its PTQ grid and calibration PTQ are the
# reference rows, the best 4-bit model among them). Resumable member by member: a finished
# run (its results.json says ok) is not run again.
# Environment: EPOCHS (default 12), MEMBERS (the runs, default all: control plain kd dq dq_g64
# gptq_init), OUT (default runs/synthetic_cos$EPOCHS), DOCS (default
# docs/results/synthetic_cos$EPOCHS), THREADS (default 2), CKPT (default
# models/cpu_synthetic_float.safetensors), REF (default runs/synthetic_study12). The 24-epoch
# runs of docs/results/synthetic_cos24: EPOCHS=24 MEMBERS="control dq" (about 65 min).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
[[ -x $BIN/asrquant-train ]] || make install >/dev/null
EPOCHS=${EPOCHS:-12}
[[ $EPOCHS =~ ^[1-9][0-9]*$ ]] || { echo "EPOCHS=$EPOCHS is invalid; allowed: an integer >= 1"; exit 2; }
ALL_MEMBERS="control plain kd dq dq_g64 gptq_init"
MEMBERS=${MEMBERS-$ALL_MEMBERS}
for m in $MEMBERS; do
  [[ " $ALL_MEMBERS " == *" $m "* ]] || { echo "MEMBERS: $m is invalid; allowed: $ALL_MEMBERS"; exit 2; }
done
want() { [[ " $MEMBERS " == *" $1 "* ]]; }
OUT=${OUT:-runs/synthetic_cos$EPOCHS}
DOCS=${DOCS:-docs/results/synthetic_cos$EPOCHS}
THREADS=${THREADS:-2}
CKPT=${CKPT:-models/cpu_synthetic_float.safetensors}
REF=${REF:-runs/synthetic_study12}
[[ -d $REF/ptq_group ]] || { echo "REF=$REF has no ptq_group: run the issue-12 study first" \
  "(docs/results/README.md, synthetic_issue12)"; exit 2; }
COMMON=(threads="$THREADS" trainer.enable_progress_bar=false)
FINETUNE=(experiment=finetune optim=cosine init_from="$CKPT" trainer.max_epochs="$EPOCHS")
source recipes/lib.sh
done_ok() { [[ -d $1 && -n "$(find_run "$1")" ]]; }  # DIR holds a finished (ok) run
mkdir -p "$OUT"
for d in ptq_float_mixed ptq_channel ptq_group ptq_calib ptq_calib_plus ptq_calib_rtn \
         ptq_calib_int3 ptq_calib_int4; do
  [[ -d $OUT/$d || ! -d $REF/$d ]] || cp -r "$REF/$d" "$OUT/"
done
single() {  # DIR, then the overrides of one run
  local dir=$1; shift
  done_ok "$dir" && return 0
  $BIN/asrquant-train "${FINETUNE[@]}" "${COMMON[@]}" "$@" hydra.run.dir="$dir"
}
# the float control (qat/0) and plain int2 asym g32 QAT (qat/1): one process when both run
if want control && want plain && ! done_ok "$OUT/qat/0" && ! done_ok "$OUT/qat/1"; then
  $BIN/asrquant-train -m "${FINETUNE[@]}" "${COMMON[@]}" quant=float,int2_asym_g32 \
    hydra.sweep.dir="$OUT/qat" 'hydra.sweep.subdir=${hydra.job.num}'
fi
want control && single "$OUT/qat/0" quant=float
want plain && single "$OUT/qat/1" quant=int2_asym_g32
want kd && single "$OUT/qat_ablation/kd/0" quant=int2_asym_g32 qat.kd_weight=1.0
want dq && single "$OUT/qat_ablation/dq/0" quant=int2_asym_g32_dq
want dq_g64 && single "$OUT/qat_ablation/dq_g64/0" quant=int2_asym_g32_dq quant.group_size=64
# initialised from GPTQ (calibration PTQ) instead of round-to-nearest
want gptq_init && single "$OUT/qat_ablation/gptq_init/0" quant=int2_asym_g32 quant.method=gptq
# the g64 double-quantized recipe's PTQ files (round-to-nearest and GPTQ; its file size)
if ! done_ok "$OUT/ptq_calib_dq64/0" || ! done_ok "$OUT/ptq_calib_dq64/1"; then
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$CKPT" export=true quant=int2_asym_g32_dq \
    quant.group_size=64 quant.method=rtn,gptq hydra.sweep.dir="$OUT/ptq_calib_dq64" \
    'hydra.sweep.subdir=${hydra.job.num}'
fi
$BIN/asrquant-report "$OUT" --out "$DOCS" \
  --title "synthetic corpus (eSpeak NG), $EPOCHS-epoch QAT with a cosine schedule"
