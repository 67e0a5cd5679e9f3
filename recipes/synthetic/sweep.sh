#!/usr/bin/env bash
# The quantization sweep on the built-in synthetic corpus, from one command:
#   1. the float CPU-size baseline (experiment=float_baseline: 3,300 steps, ~27 min here),
#      unless CKPT is given;
#   2. PTQ of it at 8/4/3/2 bits x symmetric/asymmetric x per-channel/groups of 128/32
#      x clip none/mse, plus float and a mixed 2/4-bit recipe;
#   3. QAT fine-tuning at 4 and 2 bits, and the float control fine-tuned for the same steps;
#   4. packed export of the main recipes and of the QAT 2-bit model;
#   5. the packed QAT 2-bit file decoded again: its WER must equal the fake-quant run's;
#   6. the results table (Markdown, CSV), the WER-vs-size plot and the export size table in
#      docs/results/synthetic/.
#
#   bash recipes/synthetic/sweep.sh                       # everything
#   CKPT=runs/synth_float/checkpoints/best.ckpt bash recipes/synthetic/sweep.sh
#   QUICK=1 bash recipes/synthetic/sweep.sh               # a smoke run (~4 min here) that
#                                     checks the mechanics; its 60-step model outputs blanks
# Environment: OUT (default runs/synthetic_sweep), DOCS (default docs/results/synthetic;
# with QUICK, OUT/report), THREADS (default 2), FROM (first stage to run, default 1: an
# interrupted sweep resumes with e.g. FROM=4 CKPT=...).
set -euo pipefail
cd "$(dirname "$0")/../.."
make install >/dev/null
BIN=.venv/bin
THREADS=${THREADS:-2}
COMMON=(threads="$THREADS" trainer.enable_progress_bar=false)

if [[ -n "${QUICK:-}" ]]; then
  OUT=${OUT:-runs/synthetic_sweep_quick}
  DOCS=${DOCS:-$OUT/report}
  COMMON+=(data.synthetic.n_train=200 data.synthetic.n_dev=40 data.synthetic.n_test=40
           data.synthetic.n_test_voices=40)
  TRAIN=(trainer.max_steps=60 optim.warmup_steps=10 model.num_layers=2)
  QAT_EPOCHS=1
  BITS=4,2
else
  OUT=${OUT:-runs/synthetic_sweep}
  DOCS=${DOCS:-docs/results/synthetic}
  TRAIN=()
  QAT_EPOCHS=4
  BITS=8,4,3,2
fi
mkdir -p "$OUT"
FROM=${FROM:-1}
# Paths inside Hydra overrides are quoted: sweep folders contain '=' and ','.
q() { printf "'%s'" "$1"; }

# A stage whose members all failed stops the recipe; a partly failed sweep goes on (the
# report lists the failures).
check_stage() {
  .venv/bin/python - "$1" <<'PY'
import json, pathlib, sys
runs = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).rglob("results.json")]
failed = [r for r in runs if r.get("status") != "ok"]
print(f"   {sys.argv[1]}: {len(runs) - len(failed)} ok, {len(failed)} failed")
for r in failed:
    print(f"   failed: {r.get('overrides')}: {r.get('error')}")
sys.exit(0 if runs and len(failed) < len(runs) else 1)
PY
}

if [[ -z "${CKPT:-}" ]]; then
  [[ $FROM -le 1 ]] || { echo "FROM=$FROM needs CKPT"; exit 2; }
  echo "== 1. float baseline"
  $BIN/asrquant-train experiment=float_baseline "${COMMON[@]}" ${TRAIN[@]+"${TRAIN[@]}"} \
    hydra.run.dir="$OUT/float"
  check_stage "$OUT/float"
  CKPT=$OUT/float/checkpoints/best.ckpt
else
  echo "== 1. float baseline: using $CKPT"
fi

if [[ $FROM -le 2 ]]; then
echo "== 2. PTQ grid"
$BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" quant=float,mixed_attn4_rest2 \
  hydra.sweep.dir="$OUT/ptq_float_mixed"
$BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" quant=int8 quant.bits=$BITS \
  quant.symmetric=true,false quant.clip=none,mse hydra.sweep.dir="$OUT/ptq_channel"
$BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" quant=int4_asym_g128 quant.bits=$BITS \
  quant.symmetric=true,false quant.group_size=128,32 quant.clip=none,mse \
  hydra.sweep.dir="$OUT/ptq_group"
for d in ptq_float_mixed ptq_channel ptq_group; do check_stage "$OUT/$d"; done
fi

if [[ $FROM -le 3 ]]; then
echo "== 3. QAT at 4 and 2 bits, and the float control with the same steps"
$BIN/asrquant-train -m experiment=finetune "${COMMON[@]}" init_from="$(q "$CKPT")" \
  quant=float,int4_asym_g128,int2_asym_g32 trainer.max_epochs=$QAT_EPOCHS \
  hydra.sweep.dir="$OUT/qat"
check_stage "$OUT/qat"
fi

echo "== 4. packed export of the main recipes, and of the QAT 2-bit model"
for q in float int8 int4 int4_asym_g128 int2_asym_g32 int2_asym_g32_mse mixed_attn4_rest2; do
  $BIN/asrquant-export ckpt="$(q "$CKPT")" quant=$q hydra.run.dir="$(q "$OUT/export/$q")"
done
QAT2_DIR=$(dirname "$(dirname "$(ls "$OUT"/qat/*quant=int2_asym_g32*/checkpoints/best.ckpt)")")
$BIN/asrquant-export ckpt="$(q "$QAT2_DIR/checkpoints/best.ckpt")" \
  hydra.run.dir="$(q "$OUT/export/qat_int2_asym_g32")"

echo "== 5. the packed QAT 2-bit file decodes the test sets with the fake-quant WER"
$BIN/asrquant-eval "${COMMON[@]}" packed="$(q "$OUT/export/qat_int2_asym_g32/model.safetensors")" \
  hydra.run.dir="$(q "$OUT/packed_eval/qat_int2_asym_g32")"
.venv/bin/python - "$QAT2_DIR/results.json" \
  "$OUT/packed_eval/qat_int2_asym_g32/results.json" <<'PY'
import json, sys
fake, packed = (json.load(open(p))["test"] for p in sys.argv[1:])
for name in fake:
    print(f"   {name}: fake-quant WER {fake[name]['wer']:.4f}, packed {packed[name]['wer']:.4f}")
    assert fake[name]["wer"] == packed[name]["wer"], "packed and fake-quant WER differ"
PY

echo "== 6. report"
$BIN/asrquant-report "$OUT" --out "$DOCS" --title "synthetic corpus: WER against size"
