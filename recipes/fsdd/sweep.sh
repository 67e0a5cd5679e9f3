#!/usr/bin/env bash
# The study on FSDD digit strings (real human speech): recipes/study.sh with CORPUS=fsdd.
# The data folder is the argument (made by ../shared/tools/make_digit_strings.py DIR):
#   python ../shared/tools/make_digit_strings.py /data/fsdd_digits
#   bash recipes/fsdd/sweep.sh /data/fsdd_digits                   # trains the baseline too
#   CKPT=models/cpu_fsdd_float.safetensors bash recipes/fsdd/sweep.sh /data/fsdd_digits
# MODE=main|quick as for recipes/synthetic/sweep.sh.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: bash recipes/fsdd/sweep.sh DATA_DIR"; exit 2; }
[[ -n "${QUICK:-}" ]] && export MODE=quick
CORPUS=fsdd DATA_DIR=$1 exec bash "$(dirname "$0")/../study.sh"
