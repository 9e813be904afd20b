"""The reference side of bench/vqgan_train.py: taming's own PyTorch training iteration.

Run with a Python that has torch (and einops), against a taming-transformers checkout:
    python bench/taming_train_reference.py --taming /path/to/taming-transformers
Prints one JSON line with the median ms of one iteration over --steps after 2 warm-ups
(on the CPU by default; --device cuda times it on a GPU).

The model is taming's `taming.models.vqgan.VQModel` with
`VQLPIPSWithDiscriminator(disc_start=0, disc_weight=0.8)` (its default D: ndf 64,
3 layers, BatchNorm), ch 64, ch_mult [1,1,2,2,4], 2 res blocks, attention at the lowest
level, z 256, embed_dim 256, 1024 codes, float32; Adam(4.5e-6 * 4, betas (0.5, 0.9)) for
the AE and for D, from `configure_optimizers`. One iteration is what PyTorch Lightning
1.0 runs per batch with two optimizers: for each optimizer, `toggle_optimizer` (only
its params require grad), `training_step(batch, 0, optimizer_idx)` (model(x), then the
loss with that optimizer_idx), backward, step, zero_grad; the model is in train mode
(LPIPS dropout on, BatchNorm batch statistics), as under Lightning.

Nothing is downloaded and no taming code is copied: modules that taming imports but
this benchmark does not need are replaced in sys.modules when absent (pytorch_lightning:
an nn.Module base with no-op logging; `main`: instantiate_from_config; requests and
tqdm: empty), torchvision's VGG16 `features` is rebuilt from torch.nn layers when
torchvision is absent, and LPIPS keeps random weights (`load_from_pretrained` is a
no-op): the weights do not change the time.
"""

import argparse
import importlib
import importlib.machinery
import json
import statistics
import sys
import time
import types


def _vgg16_features():
  """torchvision.models.vgg16().features: 13 3x3 convs with ReLUs, 5 max-pools (31 layers)."""
  import torch.nn as nn
  layers, c = [], 3
  for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
            512, 512, 512, "M"):
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
      c = v
  return nn.Sequential(*layers)


def _module(name: str) -> types.ModuleType:
  """An empty module with a spec (torch._dynamo calls find_spec on some module names)."""
  mod = types.ModuleType(name)
  mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
  return mod


def _install_stubs() -> list:
  """Puts stand-ins for modules taming imports but the benchmark does not use."""
  import torch
  stubs = []

  def missing(name):
    try:
      importlib.import_module(name)
      return False
    except ImportError:
      return True

  if missing("pytorch_lightning"):
    pl = _module("pytorch_lightning")

    class LightningModule(torch.nn.Module):
      global_step = 0

      def log(self, *args, **kwargs):
        pass

      def log_dict(self, *args, **kwargs):
        pass

    pl.LightningModule = LightningModule
    sys.modules["pytorch_lightning"] = pl
    stubs.append("pytorch_lightning")
  main = _module("main")  # taming's main.py (omegaconf, PL, ...): one function used

  def instantiate_from_config(config):
    module, cls = config["target"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(**config.get("params", dict()))

  main.instantiate_from_config = instantiate_from_config
  sys.modules["main"] = main
  stubs.append("main")
  for name in ("requests", "tqdm"):
    if missing(name):
      mod = _module(name)
      mod.tqdm = None
      sys.modules[name] = mod
      stubs.append(name)
  if missing("torchvision"):
    tv = _module("torchvision")
    tv.models = types.SimpleNamespace()
    sys.modules["torchvision"] = tv
    stubs.append("torchvision")
  return stubs


def _no_download_lpips():
  """LPIPS with random weights: VGG16 built without weights, no checkpoint loaded."""
  from taming.modules.losses import lpips
  lpips.models = types.SimpleNamespace(
      vgg16=lambda pretrained=False, **kw: types.SimpleNamespace(features=_vgg16_features()))
  lpips.LPIPS.load_from_pretrained = lambda self, name="vgg_lpips": None


def toggle_optimizer(model, optimizer):
  """PyTorch Lightning 1.0's LightningModule.toggle_optimizer."""
  for p in model.parameters():
    p.requires_grad = False
  for group in optimizer.param_groups:
    for p in group["params"]:
      p.requires_grad = True


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--taming", required=True, help="taming-transformers checkout")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
  parser.add_argument("--threads", type=int, default=0,
                      help="torch.set_num_threads (0: torch's default); on a CPU shared with "
                      "other busy processes, 2 OpenMP threads on 2 cores can be many times "
                      "slower than 1")
  args = parser.parse_args()
  sys.path.insert(0, args.taming)
  import torch
  if args.threads:
    torch.set_num_threads(args.threads)
  stubs = _install_stubs()
  _no_download_lpips()
  from taming.models.vqgan import VQModel

  torch.manual_seed(0)
  s = args.image_size
  ddconfig = dict(double_z=False, z_channels=256, resolution=s, in_channels=3, out_ch=3, ch=64,
                  ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[s // 16],
                  dropout=0.0)
  lossconfig = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                "params": dict(disc_conditional=False, disc_in_channels=3, disc_start=0,
                               disc_weight=0.8, codebook_weight=1.0)}
  model = VQModel(ddconfig=ddconfig, lossconfig=lossconfig, n_embed=1024, embed_dim=256)
  model = model.to(args.device)
  model.log = model.log_dict = lambda *a, **k: None
  model.learning_rate = 4.5e-6 * args.batch  # main.py: accumulate * ngpu * bs * base_lr
  optimizers, _ = model.configure_optimizers()
  model.train()
  batch = {"image": torch.rand(args.batch, s, s, 3, device=args.device) * 2 - 1}  # NHWC
  sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

  def iteration():
    times = []
    for idx, opt in enumerate(optimizers):
      t0 = time.perf_counter()
      toggle_optimizer(model, opt)
      loss = model.training_step(batch, 0, idx)
      loss.backward()
      opt.step()
      opt.zero_grad()
      sync()
      times.append(time.perf_counter() - t0)
    return times

  for _ in range(2):
    iteration()
  ae, d, total = [], [], []
  for _ in range(args.steps):
    t_ae, t_d = iteration()
    ae.append(t_ae)
    d.append(t_d)
    total.append(t_ae + t_d)
  ms = statistics.median(total) * 1e3
  count = lambda m: sum(p.numel() for p in m.parameters())
  print(json.dumps({
      "bench": "taming_train_reference", "ms_per_iteration": round(ms, 1),
      "ae_step_ms": round(statistics.median(ae) * 1e3, 1),
      "d_step_ms": round(statistics.median(d) * 1e3, 1),
      "images_per_s": round(args.batch * 1e3 / ms, 2), "steps": args.steps,
      "batch": args.batch, "image_size": s, "dtype": "float32",
      "ae_params": count(model) - count(model.loss),
      "d_params": count(model.loss.discriminator), "lpips_weights": "random",
      "stubbed_modules": stubs, "torch": torch.__version__, "device": args.device,
      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
