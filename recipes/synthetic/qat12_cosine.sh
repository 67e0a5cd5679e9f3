#!/usr/bin/env bash
# 2-bit QAT on the synthetic corpus with a cosine schedule: recipes/qat_cosine.sh with
# CORPUS=synthetic (its header lists EPOCHS, MEMBERS, OUT, DOCS, THREADS, CKPT, REF).
# docs/results/synthetic_cos12 (about 100 min here):  bash recipes/synthetic/qat12_cosine.sh
# docs/results/synthetic_cos24:  EPOCHS=24 MEMBERS="control dq dq_g64 int4 ternary" (31 min a run)
set -euo pipefail
CORPUS=synthetic exec bash "$(dirname "$0")/../qat_cosine.sh"
