#!/usr/bin/env bash
# The main job on its embedded default: train the `:small` VQGAN recipe (taming's full
# objective: L1 + LPIPS + codebook + adaptive-weight PatchGAN) on random crops of real
# photos bundled with scikit-image (nothing downloaded), validate on crops of two
# held-out photos, and write TensorBoard logs, checkpoints and PNG reconstruction grids.
# About 5 minutes on 2 CPU cores. Re-running resumes (and finishes at once if done).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY="${VENV:-.venv}/bin/python"
OUT="${OUT:-out/main}"
STEPS="${STEPS:-600}"
[ -d "$OUT/photos/train" ] || "$PY" scripts/export_photos.py "$OUT/photos" --patches 512
"$PY" train_vqgan.py --config=configs/vqgan_custom.py:small --workdir="$OUT/run" \
  --config.data.train_images="$OUT/photos/train" --config.data.val_images="$OUT/photos/val" \
  --config.total_steps="$STEPS" --alsologtostderr=false 2> "$OUT/train.log" || {
    tail -30 "$OUT/train.log" >&2; echo "error: training failed (log: $OUT/train.log)" >&2; exit 1; }
echo "log:          $OUT/train.log"
