#!/usr/bin/env bash
# The quantization study on LibriSpeech 960 h with Conformer L (~110 M parameters, CTC), on
# GPUs, from a local copy of LibriSpeech (nothing is downloaded). Stages:
#   0. data preparation: validate LIBRISPEECH, write JSONL manifests (train 960 h without
#      utterances over 20 s; dev-clean, test-clean, test-other complete) and the SentencePiece
#      tokenizer (recipes/librispeech/prepare.py);
#   1. the float baseline (experiment=librispeech_float: bf16-mixed, GPUS GPUs), unless CKPT;
#   2. PTQ of it: 8/4/3/2 bits x symmetric/asymmetric x per-channel/groups of 128/32 x clip
#      none/mse, plus float and the mixed 2/4-bit recipe;
#   3. QAT fine-tuning at 4 and 2 bits from the float model, and the float control fine-tuned
#      for the same steps (experiment=librispeech_finetune);
#   4. packed export of the main recipes and of the QAT 2-bit model;
#   5. the packed QAT 2-bit file decoded again: its WER must equal the fake-quant model's;
#   6. the results table (Markdown, CSV) and the WER-vs-size plot in DOCS.
#
#   LIBRISPEECH=/data/LibriSpeech GPUS=8 bash recipes/librispeech/run.sh
#   LIBRISPEECH=... CKPT=runs/librispeech/float/checkpoints/best.ckpt bash recipes/librispeech/run.sh
#   python recipes/librispeech/make_tiny.py /tmp/tiny && \
#     QUICK=1 LIBRISPEECH=/tmp/tiny bash recipes/librispeech/run.sh   # CPU smoke run, ~2 min
#
# Environment: LIBRISPEECH (required unless DATA holds prepared manifests), OUT (default
# runs/librispeech), DATA (default OUT/data), GPUS (default 1; >1 trains with DDP on one
# node), VOCAB (SentencePiece size, default 256), DOCS (default docs/results/librispeech;
# with QUICK, OUT/report), THREADS (CPU threads, default 2), FROM (first stage, default 0:
# e.g. FROM=3 CKPT=... resumes), LAST (last stage, default 6), STAGES (the stages to run,
# default all: "0 1 2 3 6" skips the export and its check). Expected run times:
# docs/librispeech.md. QUICK=1 runs the stages on the CPU with a tiny model, a small grid
# and a few steps: it checks the mechanics only (its model outputs blanks).
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -x .venv/bin/asrquant-train ]] || make install >/dev/null
BIN=.venv/bin
THREADS=${THREADS:-2}
FROM=${FROM:-0}
LAST=${LAST:-6}
GPUS=${GPUS:-1}

if [[ -n "${QUICK:-}" ]]; then
  OUT=${OUT:-runs/librispeech_quick}
  DOCS=${DOCS:-$OUT/report}
  VOCAB=${VOCAB:-40}
  PREP=(--train-splits train-clean-100 --workers 1)
  # CPU, one process, a 1-layer model; the recipe's own configs otherwise.
  DEVICE=(trainer.accelerator=cpu trainer.devices=1 trainer.precision=32-true
          data.num_workers=0 data.max_batch_seconds=40 threads="$THREADS"
          trainer.enable_progress_bar=false)
  EVAL_DEVICE=("${DEVICE[@]}")
  TRAIN=(trainer.max_epochs=2 optim.warmup_steps=10 model=cpu model.num_layers=1
         model.d_model=32 model.ffn_dim=64 model.subsampling_channels=8 normalizer_utterances=20)
  QAT=(trainer.max_epochs=1 optim.warmup_steps=5)
  PTQ_RECIPES=float,int4,int2_asym_g32
  QAT_RECIPES=float,int2_asym_g32
  EXPORTS=(int2_asym_g32)
  TOL=0
else
  OUT=${OUT:-runs/librispeech}
  DOCS=${DOCS:-docs/results/librispeech}
  VOCAB=${VOCAB:-256}
  PREP=()
  DEVICE=(trainer.devices="$GPUS" trainer.enable_progress_bar=false)
  # Evaluation on one GPU in float32 (no autocast error on top of the quantization error).
  EVAL_DEVICE=(trainer=gpu trainer.devices=1 trainer.precision=32-true data.num_workers=8
               trainer.enable_progress_bar=false)
  TRAIN=()
  QAT=()
  PTQ_RECIPES=float,mixed_attn4_rest2
  QAT_RECIPES=float,int4_asym_g128,int2_asym_g32
  EXPORTS=(float int8 int4 int4_asym_g128 int2_asym_g32 int2_asym_g32_mse mixed_attn4_rest2)
  TOL=0.0005   # GPU kernels: packed and fake-quant weights are equal, reductions may differ
fi
DATA=${DATA:-$OUT/data}
mkdir -p "$OUT"
# Paths inside Hydra overrides are quoted: sweep folders contain '=' and ','.
q() { printf "'%s'" "$1"; }
D=(data.dir="$(q "$DATA")")
STAGES=${STAGES:-0 1 2 3 4 5 6}
stage() { [[ $FROM -le $1 && $1 -le $LAST && " $STAGES " == *" $1 "* ]]; }

source "recipes/lib.sh"

if stage 0; then
  echo "== 0. data preparation: ${LIBRISPEECH:?set LIBRISPEECH=/path/to/LibriSpeech} -> $DATA"
  $BIN/python recipes/librispeech/prepare.py --root "$LIBRISPEECH" --out "$DATA" \
    --vocab-size "$VOCAB" ${PREP[@]+"${PREP[@]}"}
fi
[[ -f $DATA/summary.json ]] || { echo "no prepared data in $DATA (run stage 0)"; exit 2; }

if [[ -z "${CKPT:-}" ]]; then
  if stage 1; then
    echo "== 1. float baseline"
    # tokenizer: the same settings as prepare.py's, so training builds the same one
    $BIN/asrquant-train experiment=librispeech_float "${D[@]}" "${DEVICE[@]}" \
      tokenizer.vocab_size="$VOCAB" \
      ${TRAIN[@]+"${TRAIN[@]}"} hydra.run.dir="$(q "$OUT/float")"
    check_stage "$OUT/float"
  fi
  CKPT=$OUT/float/checkpoints/best.ckpt
else
  echo "== 1. float baseline: using $CKPT"
fi
[[ $LAST -lt 2 || -f $CKPT ]] || { echo "no float checkpoint $CKPT"; exit 2; }

EVAL=($BIN/asrquant-eval -m data=librispeech_manifests "${D[@]}" "${EVAL_DEVICE[@]}"
      ckpt="$(q "$CKPT")")
if stage 2; then
  echo "== 2. PTQ grid"
  "${EVAL[@]}" quant=$PTQ_RECIPES hydra.sweep.dir="$(q "$OUT/ptq_main")"
  DIRS=(ptq_main)
  if [[ -z "${QUICK:-}" ]]; then
    "${EVAL[@]}" quant=int8 quant.bits=8,4,3,2 quant.symmetric=true,false quant.clip=none,mse \
      hydra.sweep.dir="$(q "$OUT/ptq_channel")"
    "${EVAL[@]}" quant=int4_asym_g128 quant.bits=8,4,3,2 quant.symmetric=true,false \
      quant.group_size=128,32 quant.clip=none,mse hydra.sweep.dir="$(q "$OUT/ptq_group")"
    DIRS+=(ptq_channel ptq_group)
  fi
  for d in "${DIRS[@]}"; do check_stage "$OUT/$d"; done
fi

if stage 3; then
  echo "== 3. QAT at 4 and 2 bits, and the float control with the same steps"
  $BIN/asrquant-train -m experiment=librispeech_finetune "${D[@]}" "${DEVICE[@]}" \
    init_from="$(q "$CKPT")" quant=$QAT_RECIPES ${QAT[@]+"${QAT[@]}"} \
    hydra.sweep.dir="$(q "$OUT/qat")"
  check_stage "$OUT/qat"
fi

QAT2_CKPT=$(ls "$OUT"/qat/*quant=int2_asym_g32,*/checkpoints/best.ckpt 2>/dev/null | head -1 || true)
if stage 4; then
  echo "== 4. packed export of the main recipes, and of the QAT 2-bit model"
  for r in "${EXPORTS[@]}"; do
    $BIN/asrquant-export ckpt="$(q "$CKPT")" quant=$r hydra.run.dir="$(q "$OUT/export/$r")"
  done
  $BIN/asrquant-export ckpt="$(q "$QAT2_CKPT")" hydra.run.dir="$(q "$OUT/export/qat_int2_asym_g32")"
fi

if stage 5; then
  echo "== 5. the packed QAT 2-bit file decodes the test sets with the fake-quant WER"
  BASE=($BIN/asrquant-eval data=librispeech_manifests "${D[@]}" "${EVAL_DEVICE[@]}")
  "${BASE[@]}" packed="$(q "$OUT/export/qat_int2_asym_g32/model.safetensors")" \
    hydra.run.dir="$(q "$OUT/packed_eval/qat_int2_asym_g32")"
  "${BASE[@]}" ckpt="$(q "$QAT2_CKPT")" hydra.run.dir="$(q "$OUT/packed_eval/fake_quant")"
  same_wer "$OUT/packed_eval/fake_quant/results.json" \
    "$OUT/packed_eval/qat_int2_asym_g32/results.json" "$TOL"
fi

if stage 6; then
  echo "== 6. report"
  $BIN/asrquant-report "$OUT" --out "$DOCS" --title "LibriSpeech 960 h, Conformer L: WER against size"
fi
