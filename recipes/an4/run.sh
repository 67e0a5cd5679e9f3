#!/usr/bin/env bash
# The quantization study on CMU AN4 (real speech, 74 train and 10 other test speakers), from
# CMU's own files or from manifests already prepared. Stages:
#   0. data preparation, when AN4_CMU is given: CMU's an4_raw.bigendian.tar.gz or
#      an4_sphere.tar.gz (or either extracted) -> 16 kHz FLAC + train/test.jsonl in DATA_DIR
#      (recipes/an4/prepare.py; each file's byte order is checked);
#   1. the float baseline (experiment=an4_baseline), unless CKPT;
#   2. the study on it: CORPUS=an4 bash recipes/study.sh (PTQ grid, QAT and its float
#      control, mixed-precision search, packed-file check, peers; it writes the report);
#   3. the report again from the results on disk (runs only when stage 2 did not: FROM=3).
#
#   AN4_CMU=~/Downloads/an4_raw.bigendian.tar.gz bash recipes/an4/run.sh
#   DATA_DIR=../shared/data/an4 bash recipes/an4/run.sh          # manifests ready
#   QUICK=1 DATA_DIR=../shared/data/an4 bash recipes/an4/run.sh  # smoke run (study MODE=quick)
#   FROM=2 STUDY_FROM=3 DATA_DIR=... bash recipes/an4/run.sh     # resume inside the study
#
# Environment: AN4_CMU (CMU's archive or folder; stage 0 runs only with it), DATA_DIR
# (prepared data: default OUT/data with AN4_CMU, required without), OUT (default runs/an4;
# QUICK: runs/an4_quick), DOCS (default docs/results/an4; QUICK: OUT/report), CKPT (a float
# .ckpt or .safetensors: skips stage 1; default OUT/float/checkpoints/best.ckpt after it),
# MODE (study.sh's: full, main or quick; QUICK=1 sets quick), THREADS (default 2), FROM
# (first stage, default 0), LAST (last stage, default 3), STUDY_FROM (study.sh's first
# stage, default 2). Paths are taken relative to where the command is run. Times and
# results: docs/an4.md.
set -euo pipefail
abs() { realpath -m "$1"; }
[[ -z "${AN4_CMU:-}" ]] || AN4_CMU=$(abs "$AN4_CMU")
[[ -z "${DATA_DIR:-}" ]] || DATA_DIR=$(abs "$DATA_DIR")
[[ -z "${OUT:-}" ]] || OUT=$(abs "$OUT")
[[ -z "${DOCS:-}" ]] || DOCS=$(abs "$DOCS")
[[ -z "${CKPT:-}" ]] || CKPT=$(abs "$CKPT")
cd "$(dirname "$0")/../.."
BIN=.venv/bin
[[ -x $BIN/asrquant-train ]] || make install >/dev/null
THREADS=${THREADS:-2}
FROM=${FROM:-0}
LAST=${LAST:-3}
STUDY_FROM=${STUDY_FROM:-2}

if [[ -n "${QUICK:-}" ]]; then
  MODE=quick
  OUT=${OUT:-runs/an4_quick}
  DOCS=${DOCS:-$OUT/report}
  # study.sh's quick training, so that stage 1 here gives the model it would train
  TRAIN=(trainer.max_steps=60 optim.warmup_steps=10 model.num_layers=2)
else
  MODE=${MODE:-full}
  OUT=${OUT:-runs/an4}
  DOCS=${DOCS:-docs/results/an4}
  TRAIN=()
fi
if [[ -n "${AN4_CMU:-}" ]]; then
  DATA_DIR=${DATA_DIR:-$OUT/data}
else
  [[ -n "${DATA_DIR:-}" ]] || {
    echo "set AN4_CMU=CMU's an4_raw.bigendian.tar.gz or an4_sphere.tar.gz (or the folder), or"
    echo "DATA_DIR=prepared manifests (train.jsonl, test.jsonl), e.g. ../shared/data/an4"
    exit 2; }
fi
mkdir -p "$OUT"
# Paths inside Hydra overrides are quoted: sweep folders contain '=' and ','.
q() { printf "'%s'" "$1"; }
stage() { [[ $FROM -le $1 && $1 -le $LAST ]]; }
source "recipes/lib.sh"

if stage 0 && [[ -n "${AN4_CMU:-}" ]]; then
  echo "== 0. data preparation: $AN4_CMU -> $DATA_DIR"
  $BIN/python recipes/an4/prepare.py --root "$AN4_CMU" --out "$DATA_DIR"
fi
for f in train.jsonl test.jsonl; do
  [[ -f $DATA_DIR/$f ]] || { echo "no $f in $DATA_DIR (stage 0 with AN4_CMU writes it)"; exit 2; }
done
[[ $LAST -ge 1 ]] || exit 0

if [[ -z "${CKPT:-}" ]]; then
  if stage 1; then
    echo "== 1. float baseline"
    # as study.sh trains it (same overrides), into the folder where it would
    $BIN/asrquant-train experiment=an4_baseline data=an4 data.dir="$(q "$DATA_DIR")" \
      threads="$THREADS" trainer.enable_progress_bar=false ${TRAIN[@]+"${TRAIN[@]}"} \
      hydra.run.dir="$(q "$OUT/float")"
    check_stage "$OUT/float"
  fi
  CKPT=$OUT/float/checkpoints/best.ckpt
else
  echo "== 1. float baseline: using $CKPT"
fi
[[ $LAST -lt 2 || -f $CKPT ]] || { echo "no float checkpoint $CKPT (run stage 1)"; exit 2; }

STUDIED=
if stage 2; then
  echo "== 2. the study (recipes/study.sh, MODE=$MODE, from its stage $STUDY_FROM)"
  CORPUS=an4 DATA_DIR="$DATA_DIR" CKPT="$CKPT" OUT="$OUT" DOCS="$DOCS" MODE="$MODE" \
    THREADS="$THREADS" FROM="$STUDY_FROM" bash recipes/study.sh
  STUDIED=1
fi

if stage 3 && [[ -z $STUDIED ]]; then
  echo "== 3. report"
  # the title study.sh gives CORPUS=an4
  $BIN/asrquant-report "$OUT" --out "$DOCS" --title "AN4 (CMU census, speaker-independent)"
fi
