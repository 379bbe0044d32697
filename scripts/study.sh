#!/usr/bin/env bash
# The augmentation study of docs/regimes.md (question 2): regime A and regime B (flip only;
# the book's augmentation) over the data's pose x training images per class x 3 seeds,
# 30 epochs, the shipped base; then one combined table (scripts/study.py).
#   bash scripts/study.sh [OUT]      # default OUT: sweeps/study; ~40 min on 2 cores
# Rerunning resumes: finished runs are skipped (pipe sweep).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-sweeps/study}"
POSE='{rotation: 30, shift: 0.15, zoom: [0.75, 1.15], flip: true}'
SIZES='[100, 500, 500],[300, 500, 500],[1000, 500, 500]'
BOOK='{stage: augment, rotation: 40, width_shift: 0.2, height_shift: 0.2, shear: 0.2, zoom: 0.2, horizontal_flip: true, fill: nearest}'
build/pipe sweep graphs/cached.yaml --out "$out/A" \
    --grid "data.pose={},$POSE" --grid "data.per_class=$SIZES" \
    --set train.epochs=30 --seeds 3 --plot-x data.per_class
build/pipe sweep graphs/augmented.yaml --out "$out/B" \
    --grid "data.pose={},$POSE" --grid "data.per_class=$SIZES" \
    --grid "nodes.augment={stage: augment, horizontal_flip: true},$BOOK" \
    --set train.epochs=30 --seeds 3 --plot-x data.per_class
python3 scripts/study.py "$out/A/sweep.csv" "$out/B/sweep.csv" > "$out/study.md"
echo "study: $out/study.md"
