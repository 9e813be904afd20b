#!/usr/bin/env bash
# The main job on its embedded default, both stages on real photos bundled with
# scikit-image (nothing downloaded):
#   1. train the `:small` VQGAN recipe (taming's full objective: L1 + LPIPS + codebook,
#      and the adaptive-weight PatchGAN from half-way) on random crops of eight photos,
#      validating on crops of two held-out photos;
#   2. encode the training and held-out patches once into a code dataset
#      (python -m vqgan_jax.extract_codes);
#   3. train the `:small` unconditional transformer on those codes, with validation NLL
#      and sample grids (greedy and top-k).
# About 10.5 minutes on 2 CPU cores. Re-running resumes (and finishes at once if done).
# VQGAN_STEPS / GPT_STEPS change the budgets (the README's VQGAN table: VQGAN_STEPS=600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY="${VENV:-.venv}/bin/python"
OUT="${OUT:-out/main}"
VQGAN_STEPS="${VQGAN_STEPS:-${STEPS:-400}}"
GPT_STEPS="${GPT_STEPS:-300}"
fail() { tail -30 "$1" >&2; echo "error: $2 failed (log: $1)" >&2; exit 1; }
[ -d "$OUT/photos/train" ] || "$PY" scripts/export_photos.py "$OUT/photos" --patches 512
echo "== 1/3 VQGAN ($VQGAN_STEPS steps, discriminator from step $((VQGAN_STEPS / 2)))"
"$PY" train_vqgan.py --config=configs/vqgan_custom.py:small --workdir="$OUT/run" \
  --config.data.train_images="$OUT/photos/train" --config.data.val_images="$OUT/photos/val" \
  --config.total_steps="$VQGAN_STEPS" --config.loss.disc_start=$((VQGAN_STEPS / 2)) \
  --config.eval_every=$((VQGAN_STEPS / 2)) --alsologtostderr=false 2> "$OUT/train.log" \
  || fail "$OUT/train.log" "VQGAN training"
echo "log:          $OUT/train.log"
echo "== 2/3 codes of the 64x64 patches (resized to 32x32: 8x8 codes each)"
for split in train val; do
  name=$([ "$split" = val ] && echo validation || echo train)
  "$PY" -m vqgan_jax.extract_codes --vqgan "$OUT/run/model" --out "$OUT/codes" \
    --images "$OUT/photos/$split" --split "$name" --size 32 >> "$OUT/codes.log" 2>&1 \
    || fail "$OUT/codes.log" "code extraction ($split)"
  tail -1 "$OUT/codes.log"
done
echo "== 3/3 transformer ($GPT_STEPS steps)"
"$PY" train_transformer.py --config=configs/transformer_custom.py:small --workdir="$OUT/gpt" \
  --config.data.codes="$OUT/codes" --config.total_steps="$GPT_STEPS" \
  --config.eval_every="$GPT_STEPS" --config.image_every="$GPT_STEPS" \
  --alsologtostderr=false 2> "$OUT/gpt.log" || fail "$OUT/gpt.log" "transformer training"
echo "log:          $OUT/gpt.log"
echo "samples:      $OUT/gpt/images (per row: codes decoded | top half kept, rest sampled | top-k sample | greedy)"
