#!/usr/bin/env bash
# Quantization demo on torchaudio Conformers of the paper's sizes (random weights):
# size, bits per weight and relative output error of each recipe.
#   bash recipes/conformer_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
make install
for size in "4 144 4" "16 144 4" "16 256 4"; do   # CPU size, Conformer S, Conformer M
  set -- $size
  .venv/bin/asrquant-demo --layers "$1" --d-model "$2" --heads "$3"
done
