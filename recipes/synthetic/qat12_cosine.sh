#!/usr/bin/env bash
# 2-bit QAT on the synthetic corpus for 12 epochs with a cosine learning-rate schedule (to 2%
# of the peak at the last step) instead of the experiment's noam decay, every run against the
# float model fine-tuned the same way (the control); what docs/results/synthetic_cos12 was
# made with (about 100 min here):
#   bash recipes/synthetic/qat12_cosine.sh
# Needs runs/synthetic_study12 (the issue-12 study: its PTQ grid and calibration PTQ are the
# reference rows, the best 4-bit model among them). Resumable member by member: a finished
# run (its results.json says ok) is not run again.
# Environment: OUT (default runs/synthetic_cos12), DOCS (default docs/results/synthetic_cos12),
# THREADS (default 2), CKPT (default models/cpu_synthetic_float.safetensors), REF (default
# runs/synthetic_study12).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
[[ -x $BIN/asrquant-train ]] || make install >/dev/null
OUT=${OUT:-runs/synthetic_cos12}
DOCS=${DOCS:-docs/results/synthetic_cos12}
THREADS=${THREADS:-2}
CKPT=${CKPT:-models/cpu_synthetic_float.safetensors}
REF=${REF:-runs/synthetic_study12}
[[ -d $REF/ptq_group ]] || { echo "REF=$REF has no ptq_group: run the issue-12 study first" \
  "(docs/results/README.md, synthetic_issue12)"; exit 2; }
COMMON=(threads="$THREADS" trainer.enable_progress_bar=false)
FINETUNE=(experiment=finetune optim=cosine init_from="$CKPT" trainer.max_epochs=12)
source recipes/lib.sh
done_ok() { [[ -d $1 && -n "$(find_run "$1")" ]]; }  # DIR holds a finished (ok) run
mkdir -p "$OUT"
for d in ptq_float_mixed ptq_channel ptq_group ptq_calib ptq_calib_rtn ptq_calib_int3 \
         ptq_calib_int4; do
  [[ -d $OUT/$d ]] || cp -r "$REF/$d" "$OUT/"
done
# the control and plain int2 asym g32 QAT (one process)
if ! done_ok "$OUT/qat/0" || ! done_ok "$OUT/qat/1"; then
  $BIN/asrquant-train -m "${FINETUNE[@]}" "${COMMON[@]}" quant=float,int2_asym_g32 \
    hydra.sweep.dir="$OUT/qat" 'hydra.sweep.subdir=${hydra.job.num}'
fi
qat() {  # NAME, then the overrides of one QAT run
  local name=$1; shift
  done_ok "$OUT/qat_ablation/$name/0" && return 0
  $BIN/asrquant-train "${FINETUNE[@]}" "${COMMON[@]}" "$@" \
    hydra.run.dir="$OUT/qat_ablation/$name/0"
}
qat kd quant=int2_asym_g32 qat.kd_weight=1.0
qat dq quant=int2_asym_g32_dq
qat dq_g64 quant=int2_asym_g32_dq quant.group_size=64
# initialised from GPTQ (calibration PTQ) instead of round-to-nearest
qat gptq_init quant=int2_asym_g32 quant.method=gptq
# the g64 double-quantized recipe's PTQ files (round-to-nearest and GPTQ; its file size)
if ! done_ok "$OUT/ptq_calib_dq64/0" || ! done_ok "$OUT/ptq_calib_dq64/1"; then
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$CKPT" export=true quant=int2_asym_g32_dq \
    quant.group_size=64 quant.method=rtn,gptq hydra.sweep.dir="$OUT/ptq_calib_dq64" \
    'hydra.sweep.subdir=${hydra.job.num}'
fi
$BIN/asrquant-report "$OUT" --out "$DOCS" \
  --title "synthetic corpus (eSpeak NG), 12-epoch QAT with a cosine schedule"
