#!/usr/bin/env bash
# The study on the built-in synthetic corpus (eSpeak NG, no download): recipes/study.sh with
# CORPUS=synthetic. From scratch (trains the float baseline, ~27 min here, then the grid):
#   bash recipes/synthetic/sweep.sh
# From the shipped model (what docs/results/synthetic was made with):
#   CKPT=models/cpu_synthetic_float.safetensors bash recipes/synthetic/sweep.sh
# The README's main job (<15 min):  MODE=main CKPT=models/cpu_synthetic_float.safetensors ...
# Smoke run in minutes:             MODE=quick bash recipes/synthetic/sweep.sh  (or QUICK=1)
set -euo pipefail
[[ -n "${QUICK:-}" ]] && export MODE=quick
CORPUS=synthetic exec bash "$(dirname "$0")/../study.sh"
