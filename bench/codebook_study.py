"""Codebook study: taming's quantizer against restarts, factorized and l2-normalised codes.

    python bench/codebook_study.py [--steps 300] [--seeds 0,1] [--settings a,b,c,d] \
        [--inception pt_inception-2015-12-05-6726825d.pth] [--out out/codebook_study]

Trains the `:small` demo recipe (configs/vqgan_custom.py:small: f4, 128 codes of width
32, taming's whole objective with the discriminator from half-way, as scripts/main.sh)
on 64x64 patches of eight photos bundled with scikit-image, validating on patches of two
held-out photos, once per setting and seed (equal steps, data and seeds):

  a  taming-exact (VectorQuantizer2, legacy beta placement)
  b  a + dead-code restart every --restart_every steps (unused codes re-drawn from the
     batch's latents)
  c  codebook_dim=8 + l2_normalize_codes (ViT-VQGAN / LlamaGen lookup)
  d  c + dead-code restart

Each run is `train_vqgan.py` in its own process (resumable: a finished run is read back).
Prints one JSON line per setting: the held-out L1, LPIPS, PSNR, SSIM, code usage (share of
the 128 codes used on the held-out patches), perplexity, and rFID with --inception (the
FID of the held-out reconstructions against the held-out patches), each as the mean over
seeds with the per-seed values.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {
    "a": ("taming-exact", []),
    "b": ("dead-code restart", ["--config.dead_code_restart_every={restart}"]),
    "c": ("codebook_dim=8 + l2-normalised", ["--config.model.codebook_dim=8",
                                              "--config.model.l2_normalize_codes=True"]),
    "d": ("codebook_dim=8 + l2-normalised + restart",
          ["--config.model.codebook_dim=8", "--config.model.l2_normalize_codes=True",
           "--config.dead_code_restart_every={restart}"]),
}
METRICS = ("l1", "lpips", "psnr", "ssim", "code_usage", "perplexity", "rfid")


def run(setting, seed, args, photos):
  workdir = os.path.join(args.out, f"{setting}_seed{seed}")
  summary = os.path.join(workdir, "summary.json")
  if not os.path.isfile(summary) or json.load(open(summary)).get("end_step") != args.steps:
    flags = [f.format(restart=args.restart_every) for f in SETTINGS[setting][1]]
    cmd = [sys.executable, os.path.join(REPO, "train_vqgan.py"),
           "--config=" + os.path.join(REPO, "configs/vqgan_custom.py:small"),
           f"--workdir={workdir}", f"--config.data.train_images={photos}/train",
           f"--config.data.val_images={photos}/val", f"--config.total_steps={args.steps}",
           f"--config.loss.disc_start={args.steps // 2}", f"--config.eval_every={args.steps}",
           f"--config.seed={seed}", f"--config.image_every={args.steps}",
           "--alsologtostderr=false"] + flags
    if args.inception:
      cmd.append(f"--config.eval.inception={os.path.abspath(args.inception)}")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(workdir, "study.log"), "a") as log:
      res = subprocess.run(cmd, stdout=log, stderr=log, check=False)
    if res.returncode:
      raise SystemExit(f"error: {setting} seed {seed} failed; see {workdir}/study.log")
    print(f"[study] {setting} seed {seed}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
  val = json.load(open(summary))["val_after"]
  return {m: val[f"val/{m}"] for m in METRICS if f"val/{m}" in val}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--settings", default="a,b,c,d")
  p.add_argument("--restart_every", type=int, default=50)
  p.add_argument("--inception", default="", help="pytorch-fid's weights: adds rFID")
  p.add_argument("--out", default=os.path.join(REPO, "out", "codebook_study"))
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  photos = os.path.join(args.out, "photos")
  if not os.path.isdir(os.path.join(photos, "train")):
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "export_photos.py"), photos,
                    "--patches", "512"], check=True)
  for setting in args.settings.split(","):
    per_seed = [run(setting, seed, args, photos) for seed in seeds]
    out = {"bench": "codebook_study", "setting": setting, "name": SETTINGS[setting][0],
           "steps": args.steps, "seeds": seeds}
    for m in per_seed[0]:
      values = [r[m] for r in per_seed]
      out[m] = round(statistics.mean(values), 4)
      out[f"{m}_per_seed"] = [round(v, 4) for v in values]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
