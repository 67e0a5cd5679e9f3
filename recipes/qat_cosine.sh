#!/usr/bin/env bash
# QAT for EPOCHS epochs with a cosine learning-rate schedule (to 2% of the peak at the last
# step) instead of the experiment's noam decay, every run against the float model fine-tuned
# the same way (the control), on one corpus; the PTQ grid and calibration PTQ of the corpus'
# issue-12 study (REF) are copied in as the reference rows (the report's best 4-bit model is
# the best on dev among them and the int4 member), and the report (asrquant-report) is
# written to DOCS. What docs/results/synthetic_cos12, synthetic_cos24, fsdd_cos4 and
# an4_cos12 were made with (docs/results/README.md):
#   bash recipes/qat_cosine.sh                                         # synthetic, 12 epochs
#   CORPUS=fsdd DATA_DIR=/path/to/fsdd_digits EPOCHS=4 bash recipes/qat_cosine.sh
#   CORPUS=an4 DATA_DIR=../shared/data/an4 EPOCHS=12 bash recipes/qat_cosine.sh
# Resumable member by member: a finished run (its results.json says ok) is not run again.
# Environment:
#   CORPUS   synthetic (default) | fsdd | an4 (both need DATA_DIR, as recipes/study.sh)
#   EPOCHS   default 12
#   MEMBERS  the runs (default: control plain kd dq dq_g64 gptq_init):
#            control  float, fine-tuned the same way      plain    int2 asym g32
#            kd       int2 asym g32, distillation         dq       int2_asym_g32_dq
#            dq_g64   int2_asym_g32_dq, groups of 64      gptq_init int2 asym g32 from GPTQ
#            int4     int4 asym g128 (a fine-tuned 4-bit reference for the 40% claim)
#            ternary  int2 sym g32 (codes -1, 0, 1)
#            dq_gptq_kd  int2_asym_g32_dq from GPTQ, with distillation (as the study's)
#            dq64_gptq_kd  the same in groups of 64
#            sym_all  int2 sym g32 from GPTQ, distillation, learned scales (as the study's)
#            ternary_mse  int2 sym g32 whose clip range is searched (mse) at every step: with
#                     codes -1, 0, 1 the absmax scale rounds most weights to 0
#            ternary_mse_gk  the same from GPTQ (mse clip), with distillation
#   OUT (default runs/<corpus>_cos<EPOCHS>), DOCS (default docs/results/<corpus>_cos<EPOCHS>),
#   THREADS (default 2), CKPT (default models/cpu_<corpus>_float.safetensors), REF (default
#   runs/synthetic_study12, runs/fsdd_study12, runs/an4_study).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
[[ -x $BIN/asrquant-train ]] || make install >/dev/null
CORPUS=${CORPUS:-synthetic}
source recipes/lib.sh
[[ -z "${DATA_DIR:-}" || -d $DATA_DIR ]] || { echo "DATA_DIR=$DATA_DIR is not a folder"; exit 2; }
corpus_data "$CORPUS" "${DATA_DIR:-}"
case $CORPUS in
  synthetic) REF_DEFAULT=runs/synthetic_study12 ;;
  fsdd) REF_DEFAULT=runs/fsdd_study12 ;;
  an4) REF_DEFAULT=runs/an4_study ;;
esac
EPOCHS=${EPOCHS:-12}
[[ $EPOCHS =~ ^[1-9][0-9]*$ ]] || { echo "EPOCHS=$EPOCHS is invalid; allowed: an integer >= 1"; exit 2; }
ALL_MEMBERS="control plain kd dq dq_g64 gptq_init int4 ternary dq_gptq_kd dq64_gptq_kd sym_all ternary_mse ternary_mse_gk"
MEMBERS=${MEMBERS-control plain kd dq dq_g64 gptq_init}
for m in $MEMBERS; do
  [[ " $ALL_MEMBERS " == *" $m "* ]] || { echo "MEMBERS: $m is invalid; allowed: $ALL_MEMBERS"; exit 2; }
done
want() { [[ " $MEMBERS " == *" $1 "* ]]; }
OUT=${OUT:-runs/${CORPUS}_cos$EPOCHS}
DOCS=${DOCS:-docs/results/${CORPUS}_cos$EPOCHS}
THREADS=${THREADS:-2}
CKPT=${CKPT:-models/cpu_${CORPUS}_float.safetensors}
REF=${REF:-$REF_DEFAULT}
[[ -d $REF/ptq_group ]] || { echo "REF=$REF has no ptq_group: run the issue-12 study first" \
  "(docs/results/README.md)"; exit 2; }
[[ -f $CKPT ]] || { echo "CKPT=$CKPT is not a file"; exit 2; }
COMMON=(threads="$THREADS" trainer.enable_progress_bar=false ${DATA[@]+"${DATA[@]}"})
FINETUNE=(experiment=finetune optim=cosine init_from="$CKPT" trainer.max_epochs="$EPOCHS")
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
want int4 && single "$OUT/qat_ablation/int4/0" quant=int4_asym_g128
want ternary && single "$OUT/qat_ablation/ternary/0" quant=int2_sym_g32
want dq_gptq_kd && single "$OUT/qat_ablation/dq_gptq_kd/0" quant=int2_asym_g32_dq \
  quant.method=gptq qat.kd_weight=1.0
want dq64_gptq_kd && single "$OUT/qat_ablation/dq64_gptq_kd/0" quant=int2_asym_g32_dq \
  quant.group_size=64 quant.method=gptq qat.kd_weight=1.0
want sym_all && single "$OUT/qat_ablation/sym_all/0" quant=int2_sym_g32 quant.method=gptq \
  qat.kd_weight=1.0 qat.scales=learned
want ternary_mse && single "$OUT/qat_ablation/ternary_mse/0" quant=int2_sym_g32 quant.clip=mse
want ternary_mse_gk && single "$OUT/qat_ablation/ternary_mse_gk/0" quant=int2_sym_g32 \
  quant.clip=mse quant.method=gptq qat.kd_weight=1.0
# the g64 double-quantized recipe's PTQ files (round-to-nearest and GPTQ; its file size)
if { want dq_g64 || want dq64_gptq_kd; } && { ! done_ok "$OUT/ptq_calib_dq64/0" || ! done_ok "$OUT/ptq_calib_dq64/1"; }; then
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$CKPT" export=true quant=int2_asym_g32_dq \
    quant.group_size=64 quant.method=rtn,gptq hydra.sweep.dir="$OUT/ptq_calib_dq64" \
    'hydra.sweep.subdir=${hydra.job.num}'
fi
$BIN/asrquant-report "$OUT" --out "$DOCS" --title "$TITLE, $EPOCHS-epoch QAT with a cosine schedule"
