#!/usr/bin/env bash
# The paper's study on one corpus, from one command (called by recipes/synthetic/sweep.sh and
# recipes/fsdd/sweep.sh; see docs/results/README.md for what each stage produced):
#   1. the float CPU-size baseline (unless CKPT is given: a float .ckpt or .safetensors);
#   2. PTQ over the grid 8/4/3/2 bits x symmetric/asymmetric x per-channel/groups of
#      256/128/64/32 x clip none/mse, plus float and a hand-made mixed 2/4-bit recipe; every
#      run also writes its packed file (eval export=true), so sizes are files' sizes;
#   3. QAT fine-tuning at 4 and 2 bits, and the float control fine-tuned for the same steps;
#   4. mixed-precision search (asrquant-search) at the size of uniform 2-bit g32 and of
#      uniform 4-bit g128, and PTQ of the two chosen recipes;
#   5. the packed QAT 2-bit file decoded again: its WER must equal the fake-quant run's;
#   6. peers (torchao, HQQ, optimum-quanto) on the same float model and test split;
#   7. the report: results.md (study table, findings, all runs), CSVs, plots, exports.md;
#      it runs last, after:
#   8. calibration PTQ (issue 12): GPTQ, output-aware clip (awq_clip) and both, at int2 asym
#      and sym g32, int2 asym g32 with double-quantized scales (int2_asym_g32_dq), int3 asym
#      g64 and int4 asym g128 (so that the 4-bit reference may use GPTQ too); the 2-bit
#      recipes also by GPTQ with 1 and 2 rounds of scale refinement against the float
#      model's layer outputs (calib.refine, calib.target=float: ptq_calib_plus);
#   9. the QAT ablation at 2 bits, same steps as the control of stage 3: QAT from GPTQ,
#      distillation from the float model (kd), learned scales (lsq), one at a time and all
#      together, plus all together for int2 sym g32 (ternary) and int2_asym_g32_dq (gptq+kd).
#      An interrupted study resumes with FROM=8 (stages 8, 9 and the report).
#
# Environment:
#   CORPUS   synthetic (default; the built-in eSpeak corpus) | fsdd (needs DATA_DIR, made by
#            ../shared/tools/make_digit_strings.py DATA_DIR) | an4 (needs DATA_DIR: the output
#            of recipes/an4/prepare.py, e.g. ../shared/data/an4)
#   CKPT     start from this float model instead of training one
#   MODE     full (default: the grid above, 4 QAT epochs) | main (the README's main job: bits
#            8/4/2, groups 128/32, one QAT epoch at 2 bits and its control, no search or
#            peers) | quick (smoke run in minutes: tiny corpus, 40 training steps, no clip search)
#   OUT (default runs/<corpus>_study[_main|_quick]), DOCS (where the report goes; default
#   docs/results/<corpus> for full, OUT/report otherwise), THREADS (default 2),
#   FROM (first stage to run, default 1; an interrupted study resumes with FROM=n CKPT=...)
#   CALIB    stages 8-9: full (default in MODE=full) | smoke (MODE=quick: one run of each) |
#            empty (MODE=main: skipped)
#   ABLATION the QAT runs of stage 9 (default: all gptq_init kd lsq sym_all dq_gptq_kd; also
#            dq: int2_asym_g32_dq QAT from round-to-nearest, no other ingredient)
#   QAT_OPTIM the learning-rate schedule of stages 3 and 9 (conf/optim; default: the
#            experiment's, noam; cosine anneals to 2% of the peak at the last step)
#   QAT, SEARCH (MODE=full) the QAT recipes of stage 3 and whether stage 4 runs (empty: no);
#   QAT_EPOCHS (MODE=main, default 1) epochs of stages 3 and 9
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
[[ -x $BIN/asrquant-eval ]] || make install >/dev/null
CORPUS=${CORPUS:-synthetic}
MODE=${MODE:-full}
THREADS=${THREADS:-2}
FROM=${FROM:-1}
# Paths inside Hydra overrides are quoted: sweep folders contain '=' and ','.
q() { printf "'%s'" "$1"; }

source "recipes/lib.sh"
corpus_data "$CORPUS" "${DATA_DIR:-}"
COMMON=(threads="$THREADS" trainer.enable_progress_bar=false "${DATA[@]}")
# Sweep members are folders named by job number (overrides would pass 255 characters); each
# results.json records its config and recipe.
SUB=('hydra.sweep.subdir=${hydra.job.num}')
TRAIN=()
case $MODE in
  full)  BITS=8,4,3,2; GROUP_SIZES=256,128,64,32; CLIPS=none,mse; QAT_EPOCHS=4
         QAT=${QAT-float,int4_asym_g128,int2_asym_g32,int2_sym_g32}; SEARCH=${SEARCH-1}
         PEERS=${PEERS-1}
         CALIB=${CALIB-full}
         OUT=${OUT:-runs/${CORPUS}_study}; DOCS=${DOCS:-docs/results/$CORPUS} ;;
  main)  BITS=8,4,2; GROUP_SIZES=128,32; CLIPS=none,mse; QAT_EPOCHS=${QAT_EPOCHS-1}
         QAT=float,int2_asym_g32; SEARCH=; PEERS=${PEERS-}; CALIB=${CALIB-}
         OUT=${OUT:-runs/${CORPUS}_study_main}; DOCS=${DOCS:-$OUT/report} ;;
  quick) BITS=4,2; GROUP_SIZES=32; CLIPS=none; QAT_EPOCHS=1
         QAT=float,int2_asym_g32; SEARCH=1; PEERS=${PEERS-}; CALIB=${CALIB-smoke}
         OUT=${OUT:-runs/${CORPUS}_study_quick}; DOCS=${DOCS:-$OUT/report}
         if [[ $CORPUS == synthetic ]]; then
           SEARCH_DATA=(data.synthetic.n_train=200 data.synthetic.n_dev=40 data.synthetic.n_test=40
                        data.synthetic.n_test_voices=40)
           COMMON+=("${SEARCH_DATA[@]}")
         fi
         TRAIN=(trainer.max_steps=40 optim.warmup_steps=10 model.num_layers=2)
         PEERS_ARGS=(--calib-utterances 0 --max-utts 10) ;;  # smoke: no gptq rows (tested in
         # tests/test_peers_bench.py), 10 utterances per test set
  *) echo "MODE=$MODE is invalid; allowed: full, main, quick"; exit 2 ;;
esac
ABLATION=${ABLATION-all gptq_init kd lsq sym_all dq_gptq_kd}
QAT_OPTIM=${QAT_OPTIM:-}
case $QAT_OPTIM in
  ""|noam|cosine) ;;
  *) echo "QAT_OPTIM=$QAT_OPTIM is invalid; allowed: noam, cosine (conf/optim)"; exit 2 ;;
esac
FINETUNE=(experiment=finetune ${QAT_OPTIM:+optim=$QAT_OPTIM})
mkdir -p "$OUT"
started=$SECONDS
# Each stage's wall time is printed when it ends and written, with the machine, to
# $OUT/timing.json and $DOCS/timing.json at the end (what README's main-job time quotes).
STAGES=$OUT/.stages.tsv; : > "$STAGES"; stage_name=; stage_start=$SECONDS
end_stage() {
  [[ -n $stage_name ]] || return 0
  local s=$(( SECONDS - stage_start ))
  printf '%s\t%s\n' "$stage_name" "$s" >> "$STAGES"
  echo "   ($s s)"
}
stage() { end_stage; stage_name=${1%%$'\n'*}; stage_start=$SECONDS
          echo "== $1 ($(( (SECONDS - started) / 60 )) min)"; }

size_mb_of() {  # size_mb (as asrquant-eval reports it) of the run in folder $1
  $BIN/python -c "import json,sys; print(json.load(open(sys.argv[1]))['size_bytes'] / 1e6)" \
    "$1/results.json"
}
uniform() {  # the uniform clip-none PTQ run of BITS, SYMMETRIC (true|false), GROUP in ptq_group
  find_run "$OUT/ptq_group" recipe.default.bits="$1" recipe.default.symmetric="$2" \
    recipe.default.group_size="$3" recipe.default.clip=none recipe.rules=[]
}

if [[ -z "${CKPT:-}" ]]; then
  [[ $FROM -le 1 ]] || { echo "FROM=$FROM needs CKPT"; exit 2; }
  stage "1. float baseline"
  $BIN/asrquant-train experiment=$BASELINE "${COMMON[@]}" ${TRAIN[@]+"${TRAIN[@]}"} \
    hydra.run.dir="$OUT/float"
  check_stage "$OUT/float"
  CKPT=$OUT/float/checkpoints/best.ckpt
else
  stage "1. float baseline: using $CKPT"
fi

if [[ $FROM -le 2 ]]; then
  stage "2. PTQ grid"
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" export=true \
    quant=float,mixed_attn4_rest2 "${SUB[@]}" hydra.sweep.dir="$OUT/ptq_float_mixed"
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" export=true quant=int8 \
    quant.bits=$BITS quant.symmetric=true,false quant.clip=$CLIPS \
    "${SUB[@]}" hydra.sweep.dir="$OUT/ptq_channel"
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" export=true quant=int4_asym_g128 \
    quant.bits=$BITS quant.symmetric=true,false quant.group_size=$GROUP_SIZES quant.clip=$CLIPS \
    "${SUB[@]}" hydra.sweep.dir="$OUT/ptq_group"
  for d in ptq_float_mixed ptq_channel ptq_group; do check_stage "$OUT/$d"; done
fi

if [[ $FROM -le 3 ]]; then
  stage "3. QAT, and the float control with the same steps"
  $BIN/asrquant-train -m "${FINETUNE[@]}" "${COMMON[@]}" init_from="$(q "$CKPT")" \
    quant=$QAT trainer.max_epochs=$QAT_EPOCHS "${SUB[@]}" hydra.sweep.dir="$OUT/qat"
  check_stage "$OUT/qat"
fi

if [[ $FROM -le 4 && -n "$SEARCH" ]]; then
  stage "4. mixed-precision search at the sizes of uniform 2-bit and 4-bit"
  for pair in "int2:$(uniform 2 false 32)" "int4:$(uniform 4 false 128)"; do
    name=${pair%%:*}; run=${pair#*:}
    [[ -n "$run" ]] || continue
    mb=$(size_mb_of "$run")
    $BIN/asrquant-search threads="$THREADS" "${DATA[@]}" ${SEARCH_DATA[@]+"${SEARCH_DATA[@]}"} \
      ckpt="$(q "$CKPT")" budget_mb="$mb" candidates='[2,3,4,8,2g64,2g128,3g128]' name="searched_at_$name" progress=false \
      out="$(q "$OUT/search_conf/quant/searched_at_$name.yaml")" overwrite=true \
      hydra.run.dir="$(q "$OUT/search_runs/$name")"
  done
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" export=true \
    "hydra.searchpath=[$(q "file://$(realpath "$OUT/search_conf")")]" \
    quant="$(cd "$OUT/search_conf/quant" && ls *.yaml | sed 's/.yaml$//' | paste -sd,)" \
    "${SUB[@]}" hydra.sweep.dir="$OUT/ptq_searched"
  check_stage "$OUT/ptq_searched"
fi

if [[ $FROM -le 5 ]]; then
  stage "5. packed export of the main recipes (predicted vs file bytes), and the packed QAT
  2-bit file decodes the test sets with the fake-quant WER"
  # one process for the seven files: $OUT/export/<recipe>/model.safetensors
  $BIN/asrquant-export -m ckpt="$(q "$CKPT")" \
    quant=float,int8,int4,int4_asym_g128,int2_asym_g32,int2_asym_g32_mse,mixed_attn4_rest2 \
    hydra.sweep.dir="$(q "$OUT/export")" 'hydra.sweep.subdir=${hydra.runtime.choices.quant}'
  QAT2_DIR=$(find_run "$OUT/qat" recipe.name=int2_asym_g32)
  $BIN/asrquant-export ckpt="$(q "$QAT2_DIR/checkpoints/best.ckpt")" \
    hydra.run.dir="$(q "$OUT/export/qat_int2_asym_g32")"
  $BIN/asrquant-eval "${COMMON[@]}" packed="$(q "$OUT/export/qat_int2_asym_g32/model.safetensors")" \
    hydra.run.dir="$(q "$OUT/packed_eval/qat_int2_asym_g32")"
  same_wer "$QAT2_DIR/results.json" "$OUT/packed_eval/qat_int2_asym_g32/results.json"
fi

mkdir -p "$DOCS"
if [[ $FROM -le 6 && -n "$PEERS" ]]; then
  stage "6. peers on the same float model and test split"
  FLOAT_FILE=$(find_run "$OUT/ptq_float_mixed" mode=float)/model.safetensors
  $BIN/python bench/peers.py --model "$FLOAT_FILE" --out "$OUT/peers" --threads "$THREADS" \
    ${PEERS_ARGS[@]+"${PEERS_ARGS[@]}"} \
    "${DATA[@]//\'/}"
  cp "$OUT/peers/peers.md" "$OUT/peers/peers.json" "$DOCS/"
fi

if [[ $FROM -le 8 && $CALIB == smoke ]]; then  # quick mode: one run of each new stage
  stage "8. calibration PTQ (smoke: int2 asym g32 gptq, refined against the float outputs)"
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" export=true quant=int2_asym_g32 \
    quant.method=gptq calib.num_utterances=16 calib.refine=1 calib.target=float "${SUB[@]}" \
    hydra.sweep.dir="$OUT/ptq_calib"
  check_stage "$OUT/ptq_calib"
  stage "9. QAT ablation (smoke: gptq+kd+lsq)"
  $BIN/asrquant-train -m experiment=finetune "${COMMON[@]}" init_from="$(q "$CKPT")" \
    trainer.max_steps=10 optim.warmup_steps=2 quant=int2_asym_g32 quant.method=gptq \
    qat.kd_weight=1.0 qat.scales=learned calib.num_utterances=16 "${SUB[@]}" \
    hydra.sweep.dir="$OUT/qat_ablation/all"
  check_stage "$OUT/qat_ablation/all"
fi

if [[ $FROM -le 8 && $CALIB == full ]]; then
  stage "8. calibration PTQ: GPTQ, output-aware clip, double-quantized scales"
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" export=true \
    quant=int2_asym_g32,int2_sym_g32,int2_asym_g32_dq quant.method=gptq,awq_clip,gptq_awq_clip \
    "${SUB[@]}" hydra.sweep.dir="$OUT/ptq_calib"
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" export=true \
    quant=int2_asym_g32,int2_sym_g32,int2_asym_g32_dq quant.method=gptq calib.refine=1,2 \
    calib.target=float "${SUB[@]}" hydra.sweep.dir="$OUT/ptq_calib_plus"
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" export=true \
    quant=int2_asym_g32_dq quant.method=rtn "${SUB[@]}" hydra.sweep.dir="$OUT/ptq_calib_rtn"
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" export=true \
    quant=int4_asym_g128 quant.bits=3 quant.group_size=64 quant.method=rtn,gptq \
    "${SUB[@]}" hydra.sweep.dir="$OUT/ptq_calib_int3"
  $BIN/asrquant-eval -m "${COMMON[@]}" ckpt="$(q "$CKPT")" export=true \
    quant=int4_asym_g128 quant.method=gptq "${SUB[@]}" hydra.sweep.dir="$OUT/ptq_calib_int4"
  for d in ptq_calib ptq_calib_plus ptq_calib_rtn ptq_calib_int3 ptq_calib_int4; do
    check_stage "$OUT/$d"
  done
fi

if [[ $FROM -le 9 && $CALIB == full ]]; then
  stage "9. QAT ablation at 2 bits: init from GPTQ, distillation, learned scales"
  ablation() {  # NAME, then overrides of one QAT run (same steps as the stage-3 control)
    local name=$1; shift
    $BIN/asrquant-train -m "${FINETUNE[@]}" "${COMMON[@]}" init_from="$(q "$CKPT")" \
      trainer.max_epochs=$QAT_EPOCHS "$@" "${SUB[@]}" hydra.sweep.dir="$OUT/qat_ablation/$name"
    check_stage "$OUT/qat_ablation/$name"
  }
  ALL=(quant.method=gptq qat.kd_weight=1.0 qat.scales=learned)
  for name in $ABLATION; do
    case $name in
      all) ablation all quant=int2_asym_g32 "${ALL[@]}" ;;
      gptq_init) ablation gptq_init quant=int2_asym_g32 quant.method=gptq ;;
      kd) ablation kd quant=int2_asym_g32 qat.kd_weight=1.0 ;;
      lsq) ablation lsq quant=int2_asym_g32 qat.scales=learned ;;
      sym_all) ablation sym_all quant=int2_sym_g32 "${ALL[@]}" ;;
      dq_gptq_kd) ablation dq_gptq_kd quant=int2_asym_g32_dq quant.method=gptq qat.kd_weight=1.0 ;;
      dq) ablation dq quant=int2_asym_g32_dq ;;
      *) echo "ABLATION member $name is invalid; allowed: all gptq_init kd lsq sym_all dq_gptq_kd dq"
         exit 2 ;;
    esac
  done
fi

stage "7. report"
$BIN/asrquant-report "$OUT" --out "$DOCS" --title "$TITLE"
end_stage
$BIN/python recipes/timing.py "$STAGES" "$OUT/timing.json" corpus="$CORPUS" mode="$MODE" \
  threads="$THREADS" from_stage="$FROM" ckpt="${CKPT}"
[[ "$(realpath "$DOCS")" == "$(realpath "$OUT")" ]] || cp "$OUT/timing.json" "$DOCS/timing.json"
echo "done in $(( SECONDS - started )) s: $DOCS/results.md, $DOCS/timing.json"
