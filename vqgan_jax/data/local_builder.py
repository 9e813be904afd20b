"""Image folders and image lists as TFDS datasets (array_record, one 'train' split).

`prepare_local_images(path, prepared_dir)` lists the images (a folder, searched
recursively, or a text file with one path per line: `vqgan_jax.images.list_images`),
hashes the sorted list with each file's size and mtime, and prepares `LocalImages` under
`<prepared_dir>/vqgan_local_images/<folder name>_<hash>/1.0.0`. An unchanged list is
reused as is; a changed one gets a new hash and is prepared anew. Nothing is downloaded.

What is stored per example: 'image' (encoded bytes, always decodable as 8-bit RGB by
`tf.io.decode_image`) and 'path' (the file). Examples keep the sorted-list order.
 - 8-bit RGB JPEG and PNG files are stored byte for byte.
 - Anything else PIL reads is converted to RGB uint8 (`vqgan_jax.images.to_rgb_uint8`)
   and stored as PNG:
   L, P, CMYK, YCbCr, ... via PIL's `convert("RGB")` (CMYK: PIL's plain formula, no ICC);
   RGBA, LA, PA, P with transparency: composited on white (transparent pixels have no
   defined colour, so white is used rather than whatever RGB they happen to store);
   16-bit (I;16*) and 32-bit int (I) grey: clipped to [0, 65535], then round(x / 257);
   float (F) grey: clipped to [0, 1], then round(x * 255); animated images: first frame.
 - Files PIL cannot open or fully decode (missing, truncated, not an image) are skipped
   with one warning line each naming the file and the reason; the list of skipped files
   is kept in the dataset's metadata (`skipped`).
"""

import concurrent.futures
import dataclasses
import hashlib
import io
import logging
import os
import re
from typing import Iterator, Optional, Sequence, Tuple

from vqgan_jax.images import IMAGE_EXTENSIONS, list_images, to_rgb_uint8

logger = logging.getLogger(__name__)

# Bump when what gets stored per file changes, so old preparations are not reused.
_FORMAT_VERSION = "1"
_CHUNK = 64  # files decoded in parallel per chunk while preparing


def list_hash(files: Sequence[str]) -> str:
  """sha256 (hex) of the file list with each file's size and mtime (ns)."""
  h = hashlib.sha256(f"vqgan_local_images/{_FORMAT_VERSION}\n".encode())
  for f in files:
    try:
      st = os.stat(f)
      size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
      size, mtime = -1, -1
    h.update(f"{f}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
  return h.hexdigest()


def _png_bit_depth(data: bytes) -> int:
  """Bit depth from a PNG's IHDR chunk (byte 24)."""
  return data[24] if len(data) > 24 else 0


def load_image_bytes(path: str) -> Tuple[Optional[bytes], str]:
  """Reads one image file for storing: (encoded bytes, "") or (None, reason).

  The bytes decode (PIL or `tf.io.decode_image(channels=3)`) to the RGB uint8 image
  defined by the rules in the module docstring.
  """
  from PIL import Image, UnidentifiedImageError
  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as img:
      img.load()  # decodes every pixel: truncated files fail here
      fmt = img.format
      if img.mode == "RGB" and (fmt == "JPEG" or (fmt == "PNG" and _png_bit_depth(data) == 8)):
        return data, ""
      rgb = to_rgb_uint8(img)
  except UnidentifiedImageError:
    return None, "not an image PIL can identify"
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
    return None, f"{type(e).__name__}: {e}"
  if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
    return None, f"empty image of shape {rgb.shape}"
  out = io.BytesIO()
  Image.fromarray(rgb, "RGB").save(out, format="PNG", compress_level=3)
  return out.getvalue(), ""


def _slug(path: str) -> str:
  """A short config-name-safe label for `path` ("my_faces" for /x/My Faces/)."""
  base = os.path.basename(os.path.normpath(path))
  base = os.path.splitext(base)[0] if os.path.isfile(path) else base
  return (re.sub(r"[^a-z0-9]+", "_", base.lower()).strip("_") or "images")[:32]


def _tfds():
  import tensorflow_datasets as tfds  # deferred: the package imports fine without TF
  return tfds


def _make_builder_class():
  """Defines `LocalImages` (kept in a function so that importing this module is cheap)."""
  tfds = _tfds()

  class LocalImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A fixed list of image files as one 'train' split (see the module docstring)."""

    name = "vqgan_local_images"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Image folders / lists for vqgan_jax."}

    # TFDS 4.9.10 looks for a checksums file next to the builder's code and, for a
    # builder in a package, needs the `importlib_resources` backport on Python >= 3.9
    # (ModuleNotFoundError). There is nothing to download, hence no code path.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      return None

    def __init__(self, *, files: Sequence[str] = (), **kwargs):
      self._files = tuple(files)
      self.generated = None  # (examples, skipped files) once _generate_examples is done
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description="Local images prepared by vqgan_jax.data.local_builder.",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
              "path": tfds.features.Text(),
          }),
          disable_shuffling=True,  # keep the sorted-list order
          metadata=tfds.core.MetadataDict(),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self) -> Iterator[Tuple[int, dict]]:
      skipped = []
      files = self._files
      workers = min(16, os.cpu_count() or 1)
      with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(files), _CHUNK):
          chunk = files[start:start + _CHUNK]
          for i, (f, (data, reason)) in enumerate(
              zip(chunk, pool.map(load_image_bytes, chunk)), start):
            if data is None:
              logger.warning("Skipping unreadable image %s: %s", f, reason)
              skipped.append(f)
              continue
            yield i, {"image": data, "path": f}
      self.info.metadata["skipped"] = skipped
      self.generated = (len(files) - len(skipped), skipped)

  return LocalImages


_BUILDER_CLASS = None


def builder_class():
  """The `LocalImages` GeneratorBasedBuilder class (defined on first use)."""
  global _BUILDER_CLASS
  if _BUILDER_CLASS is None:
    _BUILDER_CLASS = _make_builder_class()
  return _BUILDER_CLASS


@dataclasses.dataclass(frozen=True)
class PreparedImages:
  """A prepared image list: its builder, how many examples and which files were skipped."""

  builder: object  # LocalImages, prepared
  num_examples: int
  skipped: Tuple[str, ...]
  source: str  # the folder or list it came from

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)


def prepare_local_images(path: str, prepared_dir: str) -> PreparedImages:
  """Prepares (or reuses) the TFDS dataset of the images named by `path`.

  Args:
    path: an image folder or a text file listing images (see `list_images`).
    prepared_dir: TFDS data_dir that receives `vqgan_local_images/<slug>_<hash>/`.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: no image file is listed, or none of them could be read.
  """
  tfds = _tfds()
  if not os.path.exists(path):
    raise FileNotFoundError(f"Image folder/list {path!r} does not exist.")
  files = list_images(path)
  if not files:
    raise ValueError(f"No images in {path!r} (looked for {', '.join(IMAGE_EXTENSIONS)}"
                     " files, recursively, or for paths listed one per line).")
  config_name = f"{_slug(path)}_{list_hash(files)[:16]}"
  config = tfds.core.BuilderConfig(name=config_name, description=f"Images from {path}")
  cls = builder_class()
  builder = cls(files=files, config=config, data_dir=prepared_dir,
                file_format="array_record")
  if not builder.is_prepared():
    logger.info("Preparing %d images from %s in %s", len(files), path, builder.data_dir)
    try:
      builder.download_and_prepare(
          download_dir=os.path.join(prepared_dir, "downloads"),
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except Exception as e:
      if builder.generated is not None and builder.generated[0] == 0:
        raise ValueError(f"None of the {len(files)} images listed by {path!r} could be "
                         "read (see the warnings above).") from e
      # Another process may have prepared the same list concurrently: reuse its result.
      builder = cls(files=files, config=config, data_dir=prepared_dir,
                    file_format="array_record")
      if not builder.is_prepared():
        raise
  num = builder.info.splits["train"].num_examples
  skipped = tuple(builder.info.metadata.get("skipped", ()))
  if skipped:
    logger.warning("%d of %d images in %s could not be read and were skipped.",
                   len(skipped), len(files), path)
  return PreparedImages(builder=builder, num_examples=num, skipped=skipped, source=path)
