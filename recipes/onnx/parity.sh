#!/usr/bin/env bash
# The deployed artifact scored like the torch model: every main recipe of a finished study
# (recipes/study.sh) exported to ONNX and evaluated by onnxruntime, next to the packed torch
# file it came from, plus onnxruntime's own MatMulNBitsQuantizer (the peer) on the float ONNX.
#   bash recipes/onnx/parity.sh synthetic                        # runs/synthetic_study
#   bash recipes/onnx/parity.sh fsdd /work/cache/fsdd_digits     # runs/fsdd_study
#   bash recipes/onnx/parity.sh an4 ../shared/data/an4           # runs/an4_study
# Environment: STUDY (default runs/<corpus>_study), OUT (runs/<corpus>_onnx), DOCS
# (docs/results/onnx/<corpus>), THREADS (2), PEERS (rtn,hqq; empty: none), CKPT (the float
# model, default models/cpu_<corpus>_float.safetensors) for our like-for-like rows next to
# the peer: int4 asym g128 and int2 asym g32 on the MatMul weights only (*_matmul recipes),
# round-to-nearest and GPTQ (MATMUL=0: skipped). MODELS: the study's files to convert (default:
# float int8 int4_asym_g128 int2_asym_g32 mixed_attn4_rest2 qat_int2_asym_g32
# qat_int4_asym_g128). Resumable: finished exports and evals are kept.
# Writes DOCS/parity.md and parity.json: test WER per model of the packed torch file, of the
# ONNX file at accuracy_level 0 (must be the same transcripts) and 4 (int8 activations), and
# the file sizes. Needs: pip install 'asrquant[onnx]'.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
source recipes/lib.sh
CORPUS=${1:?usage: parity.sh CORPUS [DATA_DIR]}
STUDY=${STUDY:-runs/${CORPUS}_study}
OUT=${OUT:-runs/${CORPUS}_onnx}
DOCS=${DOCS:-docs/results/onnx/$CORPUS}
THREADS=${THREADS:-2}
PEERS=${PEERS-rtn,hqq}
q() { printf "'%s'" "$1"; }
case $CORPUS in
  synthetic) DATA=() ;;
  fsdd) DATA=(data=fsdd_digits data.dir="$(q "$(realpath "${2:?fsdd needs DATA_DIR}")")") ;;
  an4)  DATA=(data=an4 data.dir="$(q "$(realpath "${2:?an4 needs DATA_DIR}")")") ;;
  *) echo "CORPUS=$CORPUS is invalid; allowed: synthetic, fsdd, an4"; exit 2 ;;
esac
EVAL=(threads="$THREADS" trainer.enable_progress_bar=false score_dev=false "${DATA[@]}")
CKPT=${CKPT:-models/cpu_${CORPUS}_float.safetensors}
done_run() { [[ -f $1/results.json ]] && grep -q '"status": "ok"' "$1/results.json"; }
[[ -d $STUDY/export ]] || { echo "$STUDY/export is missing: run the study first"; exit 2; }
mkdir -p "$OUT" "$DOCS"

# the QAT int4 file (stage 5 exports only the QAT int2 one)
QAT4=$(find_run "$STUDY/qat" recipe.name=int4_asym_g128)
if [[ -n $QAT4 && ! -f $OUT/qat_int4_asym_g128/model.safetensors ]]; then
  $BIN/asrquant-export ckpt="$(q "$QAT4/checkpoints/best.ckpt")" \
    hydra.run.dir="$(q "$OUT/qat_int4_asym_g128")" > /dev/null
fi
MODELS=${MODELS:-float int8 int4_asym_g128 int2_asym_g32 mixed_attn4_rest2 qat_int2_asym_g32 qat_int4_asym_g128}
MATMUL=${MATMUL:-1}
# our recipes on the weights the peer covers, rounded to nearest and with GPTQ
for r in int4_asym_g128_matmul int2_asym_g32_matmul; do
  [[ $MATMUL == 1 ]] || break
  for m in rtn gptq; do
    done_run "$OUT/${r}_$m" || $BIN/asrquant-eval "${EVAL[@]}" ckpt="$(q "$CKPT")" quant=$r \
      quant.method=$m export=true hydra.run.dir="$(q "$OUT/${r}_$m")" > "$OUT/ptq_${r}_$m.log" 2>&1
  done
done
extra=(); [[ $MATMUL == 1 ]] && extra=({int4_asym_g128,int2_asym_g32}_matmul_{rtn,gptq})
for r in $MODELS "${extra[@]}"; do
  packed=$STUDY/export/$r/model.safetensors
  [[ -f $packed ]] || packed=$OUT/$r/model.safetensors
  [[ -f $packed ]] || { echo "   $r: no packed file, skipped"; continue; }
  echo "== $r"
  done_run "$OUT/eval/$r/packed" || $BIN/asrquant-eval "${EVAL[@]}" packed="$(q "$packed")" \
    hydra.run.dir="$(q "$OUT/eval/$r/packed")" > "$OUT/eval_$r.log" 2>&1
  levels=(0); [[ $r == float ]] || levels=(0 4)
  for level in "${levels[@]}"; do  # one file per level: level 0 holds float32 zero points
    done_run "$OUT/eval/$r/onnx$level" && continue
    $BIN/asrquant-export packed="$(q "$packed")" format=onnx onnx.accuracy_level=$level \
      hydra.run.dir="$(q "$OUT/onnx/$r/level$level")" > /dev/null
    $BIN/asrquant-eval "${EVAL[@]}" onnx="$(q "$OUT/onnx/$r/level$level/model.onnx")" \
      hydra.run.dir="$(q "$OUT/eval/$r/onnx$level")" >> "$OUT/eval_$r.log" 2>&1
  done
done
if [[ -n $PEERS ]]; then
  echo "== peers: onnxruntime MatMulNBitsQuantizer ($PEERS) on the float ONNX"
  [[ -f $OUT/peers.jsonl ]] || $BIN/python bench/onnx_peers.py "$OUT/onnx/float/level0/model.onnx" "$OUT/peers" --algos "$PEERS" \
    | tee "$OUT/peers.jsonl"
  for f in "$OUT"/peers/*.onnx; do
    name=$(basename "$f" .onnx)
    done_run "$OUT/eval/$name/onnx4" && continue
    $BIN/asrquant-eval "${EVAL[@]}" onnx="$(q "$f")" hydra.run.dir="$(q "$OUT/eval/$name/onnx4")" \
      > "$OUT/eval_$name.log" 2>&1
  done
fi
$BIN/python recipes/onnx/table.py "$OUT" "$DOCS" "$CORPUS"
