#!/usr/bin/env bash
# The main job on its embedded default: convert the bundled tiny taming checkpoint
# (no torch needed), then reconstruct real photos bundled with scikit-image and write
# side-by-side PNGs (input | reconstruction) under ${OUT:-out/reconstruction}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY="${VENV:-.venv}/bin/python"
OUT="${OUT:-out/reconstruction}"
"$PY" scripts/export_photos.py "$OUT/photos"
"$PY" -m vqgan_jax.convert tests/fixtures/taming_tiny/vqgan_tiny.ckpt "$OUT/vqgan_tiny" \
  --config tests/fixtures/taming_tiny/vqgan_tiny-project.yaml
"$PY" -m vqgan_jax.reconstruct --checkpoint "$OUT/vqgan_tiny" --images "$OUT/photos" \
  --out "$OUT/images" --size 128
echo "done: converted model in $OUT/vqgan_tiny, reconstructions in $OUT/images (grid: $OUT/images/grid.png)"
