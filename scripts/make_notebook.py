"""Generates notebooks/quickstart.ipynb from the cell sources held in this file.

    python scripts/make_notebook.py            # (re)writes notebooks/quickstart.ipynb
    python scripts/make_notebook.py --check    # exit 1 if the committed notebook differs

Edit the cells here, never the .ipynb: the notebook is written without outputs
(execution_count null), as nbformat 4 JSON by json.dump (indent 1), so that the same
cells always give the same bytes. tests/test_notebook.py checks that the committed
notebook equals what this script writes, and runs it on the tiny taming fixtures.

Cell tags: "parameters" marks the one cell holding every path and size (papermill-style
tools, and the test, override it by a cell inserted right after it); "colab" marks the
setup cell that only makes sense on Colab (pip, wget), which the test skips.
"""

import argparse
import json
import os
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "quickstart.ipynb")


def md(text):
  return ("markdown", text, ())


def code(text, *tags):
  return ("code", text, tuple(tags))


CELLS = [
    md("""
    # vqgan_jax quickstart: taming-transformers in JAX

    This notebook runs the released [taming-transformers](https://github.com/CompVis/taming-transformers)
    models (Esser, Rombach, Ommer, CVPR 2021) with `vqgan_jax`, a JAX/Flax port that reads
    their PyTorch checkpoints without torch:

    1. convert the VQGAN ImageNet f16-1024 checkpoint and reconstruct a few photos;
    2. load the class-conditional ImageNet (cIN) transformer and draw class-conditional and
       unconditional samples;
    3. sample an image larger than the transformer's trained latent with taming's sliding
       attention window;
    4. fine-tune the VQGAN for a few steps on the photos and reload the exported model.

    On Colab, pick a GPU or TPU runtime (*Runtime > Change runtime type*): the cIN transformer
    has 1.4B parameters. Every path and size is in the next cell; change them there.
    """),
    code("""
    # Parameters: every path and size this notebook uses (tools such as papermill, and
    # tests/test_notebook.py, override this cell with one inserted right after it).
    # Taming's release files, downloaded by the Colab cell below:
    VQGAN_CKPT = "/content/checkpoints/vqgan_imagenet_f16_1024/last.ckpt"
    VQGAN_YAML = "/content/checkpoints/vqgan_imagenet_f16_1024/model.yaml"  # "" or None: inferred
    TRANSFORMER_CKPT = "/content/checkpoints/2021-04-03T19-39-50_cin_transformer/checkpoints/last.ckpt"
    TRANSFORMER_YAML = ("/content/checkpoints/2021-04-03T19-39-50_cin_transformer/configs/"
                        "2021-04-03T19-39-50-project.yaml")
    IMAGES_DIR = "/content/images"      # your photos (a folder, searched recursively)
    OUT_DIR = "/content/vqgan_jax_out"  # converted model, figures, fine-tuning run
    IMAGE_SIZE = 256                    # photos: smaller side resized, centre crop
    N_IMAGES = 4                        # photos reconstructed
    N_SAMPLES = 4                       # samples per sampling cell
    CLASS_IDS = [9, 232, 901, 980]      # ImageNet class ids of the class-conditional samples
    TOP_K = 600                         # taming's cIN recipe (sample_fast.py -k 600 -p 0.92)
    TOP_P = 0.92                        # None: no nucleus filtering
    TEMPERATURE = 1.0
    SEED = 0
    WINDOW_LATENT = (16, 32)            # latent grid (h, w) of the sliding-window sample
    WINDOW_CLASS = 980                  # its class (class-conditional models)
    WINDOW_SAMPLES = 1
    FINETUNE_STEPS = 50
    FINETUNE_BATCH_SIZE = 2
    FINETUNE_PERCEPTUAL_WEIGHT = 1.0    # taming's LPIPS term (0: none, no VGG16 needed)
    """, "parameters"),
    md("""
    ## Setup (Colab)

    The next cell (tagged `colab`) installs `vqgan_jax` from GitHub and downloads the
    checkpoints. **`YOUR_ORG` is a placeholder**: replace it with the GitHub organisation or
    user that hosts the `vqgan_jax` repository. Colab already has a CUDA build of JAX; the
    install keeps it. The `[train]` extra (TensorFlow Datasets, ml_collections, clu) is only
    needed by the fine-tuning section.

    The download addresses are the ones the
    [taming-transformers README](https://github.com/CompVis/taming-transformers#overview-of-pretrained-models)
    links to (check there if one has moved):

    - *VQGAN ImageNet (f=16), 1024*: <https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/>
      (`ckpts/last.ckpt`, about 1 GB, and `configs/model.yaml`);
    - *ImageNet* class-conditional transformer: the `2021-04-03T19-39-50_cin_transformer`
      log folder, <https://k00.fr/s511rwcv> (`checkpoints/last.ckpt` and
      `configs/2021-04-03T19-39-50-project.yaml`; several GB). Its own first stage, a
      16384-code VQGAN, is inside the checkpoint.

    Elsewhere (a local Jupyter), skip this cell: install the package, download the files
    yourself and set the parameters above.
    """),
    code("""
    # Colab only (skipped by tests/test_notebook.py). YOUR_ORG is a placeholder.
    !pip install -q "vqgan_jax[train] @ git+https://github.com/YOUR_ORG/vqgan_jax"
    import os
    for path in (VQGAN_CKPT, VQGAN_YAML, TRANSFORMER_CKPT):
      os.makedirs(os.path.dirname(path), exist_ok=True)
    CIN_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(TRANSFORMER_CKPT)))
    ![ -f {VQGAN_CKPT} ] || wget -q -O {VQGAN_CKPT} 'https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/files/?p=%2Fckpts%2Flast.ckpt&dl=1'
    ![ -f {VQGAN_YAML} ] || wget -q -O {VQGAN_YAML} 'https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/files/?p=%2Fconfigs%2Fmodel.yaml&dl=1'
    # The cIN transformer's log folder as a zip (the download behind https://k00.fr/s511rwcv)
    ![ -f {TRANSFORMER_CKPT} ] || (wget -q -O /content/cin_transformer.zip 'https://app.koofr.net/content/links/90cbd5aa-ef70-4f5e-99bc-f12e5a89380e/files/get/2021-04-03T19-39-50_cin_transformer.zip?path=%2F&force' && unzip -q -o /content/cin_transformer.zip -d {CIN_PARENT} && rm /content/cin_transformer.zip)
    !ls -l {VQGAN_CKPT} {VQGAN_YAML} {TRANSFORMER_CKPT} {TRANSFORMER_YAML}
    """, "colab"),
    md("""
    ## Imports and a figure helper

    `show` puts image batches side by side (one example per row), saves the grid as a PNG
    under `OUT_DIR` and displays it (matplotlib if installed, else IPython's `display`).
    Images are `float32[B, H, W, 3]` in [-1, 1] (NHWC) everywhere in `vqgan_jax`.
    """),
    code("""
    import json
    import os

    import jax
    import numpy as np
    from PIL import Image

    import vqgan_jax
    from vqgan_jax import images as imlib
    from vqgan_jax.metrics import psnr

    print("jax", jax.__version__, "on", jax.devices())
    os.makedirs(OUT_DIR, exist_ok=True)
    VQGAN_DIR = os.path.join(OUT_DIR, "vqgan_f16")       # the converted VQGAN
    FINETUNE_DIR = os.path.join(OUT_DIR, "finetune")     # the fine-tuning run's workdir
    SHOWN = {}                                           # figure name -> its PNG


    def show(columns, title, name):
      \"\"\"Shows batches float32[N, H, W, 3] in [-1, 1] side by side; saves OUT_DIR/name.png.\"\"\"
      grid = imlib.image_grid([np.asarray(c) for c in columns])
      SHOWN[name] = imlib.save_png(os.path.join(OUT_DIR, f"{name}.png"), grid)
      try:
        import matplotlib.pyplot as plt
      except ImportError:
        plt = None
      if plt is not None:
        h, w = grid.shape[:2]
        width = min(16.0, max(4.0, w / 64))
        plt.figure(figsize=(width, width * h / w + 0.5))
        plt.imshow(grid, interpolation="nearest")
        plt.title(title)
        plt.axis("off")
        plt.show()
        return
      try:
        from IPython.display import display
      except ImportError:
        print(f"{title}: {SHOWN[name]}")
        return
      print(title)
      display(Image.fromarray(grid))
    """),
    md("""
    ## 1. Convert the VQGAN and reconstruct photos

    `python -m vqgan_jax.convert CKPT OUT_DIR --config YAML` (here called in-process) reads
    taming's Lightning checkpoint without torch and writes a model directory
    (`config.json` + orbax `variables/`). `vqgan_jax.load_vqgan` loads either the directory
    or the `.ckpt` itself; its `encode`, `decode`, `decode_indices` and `reconstruct` are
    jitted.

    The photos come from `IMAGES_DIR`; if it holds none, a few photos bundled with
    scikit-image are written there.
    """),
    code("""
    from vqgan_jax.convert.__main__ import main as convert_main

    argv = [VQGAN_CKPT, VQGAN_DIR] + (["--config", VQGAN_YAML] if VQGAN_YAML else [])
    if convert_main(argv) != 0:
      raise RuntimeError(f"converting {VQGAN_CKPT} failed (the error is printed above)")
    vq = vqgan_jax.load_vqgan(VQGAN_DIR)
    print(f"f{vq.downsample_factor}, {vq.config.num_codes} codes, embed_dim {vq.config.embed_dim}")
    """),
    code("""
    os.makedirs(IMAGES_DIR, exist_ok=True)
    if not imlib.list_images(IMAGES_DIR):
      from skimage import data as skimage_data   # photos bundled with scikit-image
      for photo in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skimage_data, photo)()).save(
            os.path.join(IMAGES_DIR, f"{photo}.png"))
    paths = imlib.list_images(IMAGES_DIR)[:N_IMAGES]
    photos = np.stack([imlib.load_image(p, IMAGE_SIZE, vq.downsample_factor) for p in paths])

    z_q, indices = vq.encode(photos)        # z_q float32[B, h, w, D], indices int32[B, h, w]
    recon = np.asarray(vq.decode(z_q))      # == vq.reconstruct(photos)
    print("photos", photos.shape, "-> codes", indices.shape, "-> reconstructions", recon.shape)
    print("PSNR (dB):", [round(float(v), 2) for v in psnr(photos, recon)])
    show([photos, recon], "input | reconstruction", "reconstruction")
    """),
    md("""
    ## 2. Class-conditional and unconditional samples

    `vqgan_jax.load_transformer(ckpt, yaml)` loads a taming `Net2NetTransformer` (a GPT
    over the first stage's codes, its first stage included). The project YAML gives what
    the weights cannot (head count, conditioning kind). Sampling is taming's
    `sample_fast.py`: the conditioning token is prefilled, then one code per step through a
    KV cache, with its top-k / top-p filtering; `decode_to_img` turns the codes back into
    images.
    """),
    code("""
    n2n = vqgan_jax.load_transformer(TRANSFORMER_CKPT, TRANSFORMER_YAML or None)
    h, w = n2n.config.z_shape
    print(f"conditioning {n2n.config.cond!r}, latent {h}x{w}, vocabulary {n2n.vocab_size}, "
          f"{n2n.transformer_config.n_layer} layers")
    key = jax.random.PRNGKey(SEED)
    samples_class = None
    if n2n.config.cond == "class":
      labels = np.resize(np.asarray(CLASS_IDS, np.int32), N_SAMPLES)
      _, c_class = n2n.encode_to_c(labels)   # int32[N, 1]: the class tokens
      codes_class = n2n.sample(c_class, h * w, temperature=TEMPERATURE, top_k=TOP_K,
                               top_p=TOP_P, rng=jax.random.fold_in(key, 1))
      samples_class = np.asarray(n2n.decode_to_img(codes_class, (h, w)))
      show([samples_class], f"class-conditional samples, classes {labels.tolist()}",
           "samples_class")
    else:
      print(f"not a class-conditional model (cond {n2n.config.cond!r}): skipped")
    """),
    md("""
    **Unconditional samples.** A taming *unconditional* transformer (FFHQ, CelebA-HQ)
    starts from a start token (`cond == "sos"`), and that is what the next cell uses for
    such a model. The cIN transformer has no unconditional mode: it was trained with a
    class token on every image and has no "no class" token. For it the cell draws a class
    uniformly at random for each sample and then samples the image given that class:
    ancestral sampling from p(class) p(image | class) with a uniform class prior, i.e. from
    the model's marginal over images. (A class-conditional model trained here with
    `net2net.label_dropout > 0` has a "no class" token, `n2n.uncond_token`, which the cell
    uses instead.)
    """),
    code("""
    cond = n2n.config.cond
    if cond == "sos":
      _, c_uncond = n2n.encode_to_c(N_SAMPLES)   # the start token, N_SAMPLES times
      uncond_how = f"start token {n2n.config.sos_token}"
    elif n2n.uncond_token is not None:
      c_uncond = np.full((N_SAMPLES, 1), n2n.uncond_token, np.int32)
      uncond_how = f"'no class' token {n2n.uncond_token}"
    elif cond == "class":
      random_labels = np.random.default_rng(SEED).integers(0, n2n.config.n_classes, N_SAMPLES)
      _, c_uncond = n2n.encode_to_c(random_labels)
      uncond_how = f"random classes {random_labels.tolist()}"
    else:
      raise ValueError(f"cond {cond!r} needs a conditioning image: see sample.py --cond")
    codes_uncond = n2n.sample(c_uncond, h * w, temperature=TEMPERATURE, top_k=TOP_K,
                              top_p=TOP_P, rng=jax.random.fold_in(key, 2))
    samples_uncond = np.asarray(n2n.decode_to_img(codes_uncond, (h, w)))
    show([samples_uncond], f"unconditional samples ({uncond_how})", "samples_uncond")
    """),
    md("""
    ## 3. A sample larger than the trained latent: the sliding window

    `n2n.sample_window(c, (H, W))` samples an `H x W` code grid with taming's sliding
    attention window of the trained size (`scripts/sample_conditional.py`): each code is
    predicted from the window of trained size around it, placed where taming's script
    places it. It needs the raster (identity) token order, as the cIN model has. The codes
    come back as a raster grid `int32[B, H, W]`, decoded by the first stage.
    """),
    code("""
    H, W = (int(v) for v in WINDOW_LATENT)
    if n2n.config.cond == "class":
      _, c_window = n2n.encode_to_c(np.full((WINDOW_SAMPLES,), WINDOW_CLASS, np.int32))
    else:
      c_window = c_uncond[:WINDOW_SAMPLES]
    codes_window = n2n.sample_window(c_window, (H, W), temperature=TEMPERATURE, top_k=TOP_K,
                                     top_p=TOP_P, rng=jax.random.fold_in(key, 3))
    big = np.asarray(n2n.first_stage.decode_indices(codes_window))
    print(f"trained latent {h}x{w}, sampled {H}x{W} -> images {big.shape}")
    show([big], f"sliding-window sample, latent {H}x{W}", "sample_window")
    """),
    md("""
    ## 4. Fine-tune the VQGAN on your photos

    `train_vqgan.py` in-process: `vqgan_config.base_config()` holds every field (see
    `configs/vqgan_custom.py`), the model fields are set to the converted checkpoint's
    architecture, `init_from` starts from its weights (the discriminator too, when its
    shape matches), and the objective is taming's (the loss fields of its YAML). The run
    writes checkpoints, TensorBoard logs, input | reconstruction grids and the exported
    model directory `<workdir>/model` under `FINETUNE_DIR`; re-running resumes it. The
    discriminator joins at `loss.disc_start` (250001 for f16-1024), so a short run trains
    the L1 + LPIPS + codebook terms only. Validation here uses the same photos as
    training (point `c.data.val_images` at a held-out folder for an honest measure).
    """),
    code("""
    from vqgan_jax.training import vqgan_config, vqgan_trainer

    with open(os.path.join(VQGAN_DIR, "config.json")) as f:
      converted = json.load(f)              # what the converter read off the checkpoint
    c = vqgan_config.base_config()
    c.model = vq.config.to_dict()           # the checkpoint's architecture
    c.loss.update({k: v for k, v in converted.get("loss", {}).items() if k in c.loss})
    if "discriminator" in converted:
      d = converted["discriminator"]
      c.loss.update(dict(disc_ndf=d["ndf"], disc_num_layers=d["n_layers"]))
    c.loss.perceptual_weight = FINETUNE_PERCEPTUAL_WEIGHT
    c.init_from = VQGAN_DIR
    c.data.train_images = c.data.val_images = IMAGES_DIR
    c.data.crop_size = IMAGE_SIZE
    c.batch_size = FINETUNE_BATCH_SIZE
    c.total_steps = FINETUNE_STEPS
    c.log_every = max(1, FINETUNE_STEPS // 10)
    c.image_every = c.eval_every = c.ckpt_every = FINETUNE_STEPS
    c.num_images = min(4, len(paths))
    errors = vqgan_config.validate_config(c, num_devices=jax.device_count())
    if errors:
      raise ValueError("bad fine-tuning config:\\n  " + "\\n  ".join(errors))
    summary = vqgan_trainer.train_and_evaluate(c, FINETUNE_DIR)
    print(f"steps {summary['start_step']} -> {summary['end_step']}; model: {summary.get('model_dir')}")
    for name in ("val_before", "val_after"):
      if name in summary:
        print(name, {k: round(v, 4) for k, v in summary[name].items()})
    """),
    code("""
    vq_ft = vqgan_jax.load_vqgan(os.path.join(FINETUNE_DIR, "model"))
    recon_ft = np.asarray(vq_ft.reconstruct(photos))
    print("PSNR before (dB):", [round(float(v), 2) for v in psnr(photos, recon)])
    print("PSNR after  (dB):", [round(float(v), 2) for v in psnr(photos, recon_ft)])
    show([photos, recon, recon_ft], "input | reconstruction | after fine-tuning", "finetuned")
    """),
    md("""
    ## Next

    - Command-line equivalents: `python -m vqgan_jax.convert`, `python -m vqgan_jax.reconstruct`,
      `python sample.py` (taming's output layout, classifier-free guidance, completion),
      `python train_vqgan.py` and `python train_transformer.py` (see the README).
    - Use the fine-tuned model directory anywhere a VQGAN is expected:
      `vqgan_jax.load_vqgan(os.path.join(FINETUNE_DIR, "model"))`.
    """),
]


def _lines(text):
  text = textwrap.dedent(text).strip("\n")
  lines = text.split("\n")
  return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def build_notebook():
  """The notebook as a dict: nbformat 4.5, no outputs, deterministic cell ids."""
  cells = []
  for i, (kind, text, tags) in enumerate(CELLS):
    cell = {"cell_type": kind, "id": f"cell-{i:02d}", "metadata": {}, "source": _lines(text)}
    if tags:
      cell["metadata"]["tags"] = list(tags)
    if kind == "code":
      cell.update(execution_count=None, outputs=[])
    cells.append(cell)
  metadata = {
      "accelerator": "GPU",
      "colab": {"name": "quickstart.ipynb", "provenance": []},
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"},
  }
  return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


def render():
  """The notebook file's exact text."""
  import io
  out = io.StringIO()
  json.dump(build_notebook(), out, indent=1, ensure_ascii=False)
  return out.getvalue() + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=NOTEBOOK, help="where to write the notebook")
  parser.add_argument("--check", action="store_true",
                      help="only compare: exit 1 if the file differs from what would be written")
  args = parser.parse_args(argv)
  text = render()
  if args.check:
    try:
      with open(args.out, encoding="utf-8") as f:
        same = f.read() == text
    except FileNotFoundError:
      same = False
    print(f"{args.out}: {'up to date' if same else 'differs: run scripts/make_notebook.py'}")
    return 0 if same else 1
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"wrote {args.out} ({len(CELLS)} cells)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
