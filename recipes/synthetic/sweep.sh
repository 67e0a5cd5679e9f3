#!/usr/bin/env bash
# The quantization sweep on the built-in synthetic corpus, from one command:
#   1. the float CPU-size baseline (28 min of training here), unless CKPT is given;
#   2. PTQ of it at 8/4/3/2 bits x symmetric/asymmetric x per-channel/groups of 128/32
#      x clip none/mse, plus a mixed 2/4-bit recipe;
#   3. QAT fine-tuning at 4 and 2 bits, and the float control fine-tuned for the same steps;
#   4. packed export of the main recipes and of the QAT 2-bit model, whose packed file is
#      decoded again (its WER must equal the fake-quant one);
#   5. the results table (Markdown, CSV), the WER-vs-size plot and the export size table in
#      docs/results/synthetic/.
#
#   bash recipes/synthetic/sweep.sh                       # everything
#   CKPT=runs/synth_float/checkpoints/best.ckpt bash recipes/synthetic/sweep.sh
#   QUICK=1 bash recipes/synthetic/sweep.sh               # a smoke run in minutes
# Environment: OUT (default runs/synthetic_sweep), DOCS (default docs/results/synthetic),
# THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
make install >/dev/null
BIN=.venv/bin
OUT=${OUT:-runs/synthetic_sweep}
DOCS=${DOCS:-docs/results/synthetic}
THREADS=${THREADS:-2}
COMMON=(threads="$THREADS" trainer.enable_progress_bar=false)

if [[ -n "${QUICK:-}" ]]; then
  OUT=${OUT}_quick DOCS=${OUT}/report
  COMMON+=(data.synthetic.n_train=200 data.synthetic.n_dev=40 data.synthetic.n_test=40
           data.synthetic.n_test_voices=40)
  TRAIN=(trainer.max_epochs=3 model.num_layers=2)
  QAT_EPOCHS=1
  BITS=4,2
else
  TRAIN=(trainer.max_epochs=200 'trainer.max_time="00:00:28:00"')
  QAT_EPOCHS=4
  BITS=8,4,3,2
fi
mkdir -p "$OUT"

if [[ -z "${CKPT:-}" ]]; then
  echo "== 1. float baseline"
  $BIN/asrquant-train "${COMMON[@]}" "${TRAIN[@]}" hydra.run.dir="$OUT/float"
  CKPT=$OUT/float/checkpoints/best.ckpt
else
  echo "== 1. float baseline: using $CKPT"
fi

echo "== 2. PTQ grid"
$BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$CKPT" quant=float,mixed_attn4_rest2 \
  hydra.sweep.dir="$OUT/ptq_float_mixed"
$BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$CKPT" quant=int8 quant.bits=$BITS \
  quant.symmetric=true,false quant.clip=none,mse hydra.sweep.dir="$OUT/ptq_channel"
$BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$CKPT" quant=int4_asym_g128 quant.bits=$BITS \
  quant.symmetric=true,false quant.group_size=128,32 quant.clip=none,mse \
  hydra.sweep.dir="$OUT/ptq_group"

echo "== 3. QAT at 4 and 2 bits, and the float control with the same steps"
$BIN/asrquant-train -m "${COMMON[@]}" experiment=finetune init_from="$CKPT" \
  quant=float,int4_asym_g128,int2_asym_g32 trainer.max_epochs=$QAT_EPOCHS \
  hydra.sweep.dir="$OUT/qat"


echo "== 5. packed export of the main recipes, and the QAT 2-bit model (file size vs report)"
for q in int8 int4 int4_asym_g128 int2_asym_g32 int2_asym_g32_mse mixed_attn4_rest2; do
  $BIN/asrquant-export ckpt="$CKPT" quant=$q hydra.run.dir="$OUT/export/$q"
done
QAT2=$(ls "$OUT"/qat/*quant=int2_asym_g32*/checkpoints/best.ckpt | head -1)
$BIN/asrquant-export ckpt="$QAT2" hydra.run.dir="$OUT/export/qat_int2_asym_g32"
echo "== 6. the packed QAT 2-bit model decodes the test sets (same WER as its fake-quant run)"
$BIN/asrquant-eval "${COMMON[@]}" packed="$OUT/export/qat_int2_asym_g32/model.safetensors" \
  hydra.run.dir="$OUT/packed_eval/qat_int2_asym_g32"
$BIN/asrquant-report "$OUT" --out "$DOCS" --title "synthetic corpus: WER against size"
