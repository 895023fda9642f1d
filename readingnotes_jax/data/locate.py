"""Where the Fashion-MNIST IDX files come from.

In order: a folder given in the config (`data.path`), `$READINGNOTES_DATA/
fashion-mnist`, Debian's `dataset-fashion-mnist` package
(`/usr/share/datasets/fashion-mnist`), then the official files, downloaded
once into the cache (the Zalando URLs TFDS uses, checked against TFDS's
sizes and SHA-256 sums).
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import urllib.request

import tqdm

from readingnotes_jax.data import idx
from readingnotes_jax.data import tfds_local
from readingnotes_jax.errors import UserError

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_DEBIAN_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
# File -> (bytes, SHA-256), from tensorflow_datasets/url_checksums/fashion_mnist.txt.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (
        26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
    "train-labels-idx1-ubyte.gz": (
        29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    "t10k-images-idx3-ubyte.gz": (
        4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
    "t10k-labels-idx1-ubyte.gz": (
        5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
}
DOWNLOAD_TIMEOUT_S = 5.0  # Per connection attempt and read: fails fast offline.


def _has_train_files(folder: pathlib.Path) -> bool:
  return folder.is_dir() and idx.find_split_files(folder, "train") is not None


def _download(url: str, dest: pathlib.Path) -> None:
  """Downloads the official files into `dest`, each checked, renamed when complete."""
  dest.mkdir(parents=True, exist_ok=True)
  for name, (size, sha256) in FASHION_MNIST_FILES.items():
    target = dest / name
    if target.is_file() and target.stat().st_size == size:
      continue  # Verified when it was renamed into place.
    partial = dest / f".{name}.{os.getpid()}.partial"
    digest = hashlib.sha256()
    try:
      with urllib.request.urlopen(url + name, timeout=DOWNLOAD_TIMEOUT_S) as response, \
          open(partial, "wb") as out, \
          tqdm.tqdm(total=size, unit="B", unit_scale=True, desc=name, leave=False) as bar:
        while chunk := response.read(1 << 20):
          digest.update(chunk)
          out.write(chunk)
          bar.update(len(chunk))
      if partial.stat().st_size != size or digest.hexdigest() != sha256:
        raise OSError(f"{url + name} has the wrong size or SHA-256")
      os.replace(partial, target)
    finally:
      partial.unlink(missing_ok=True)


def fashion_mnist_dir(path: str | os.PathLike[str] | None = None, *,
                      cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
  """Folder holding Fashion-MNIST's IDX files (at least the train split).

  Args:
    path: the config's folder (`data.path`); when given it must hold the files.
    cache_dir: root of the cache for the download (default
      `tfds_local.default_data_dir()`); files go to `downloads/fashion-mnist`.

  Raises:
    UserError: `path` lacks the files, or no way worked; one line listing the
      ways to get the data.
  """
  if path is not None:
    folder = pathlib.Path(path).expanduser()
    if not _has_train_files(folder):
      raise UserError(f"data.path={folder} does not hold Fashion-MNIST's "
                      "train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz: "
                      "fix the path or unset it to search the default places")
    return folder
  if env := os.environ.get("READINGNOTES_DATA"):
    folder = pathlib.Path(env).expanduser() / "fashion-mnist"
    if _has_train_files(folder):
      return folder
  if _has_train_files(FASHION_MNIST_DEBIAN_DIR):
    return FASHION_MNIST_DEBIAN_DIR
  root = pathlib.Path(cache_dir) if cache_dir is not None else tfds_local.default_data_dir()
  folder = root.expanduser() / "downloads" / "fashion-mnist"
  try:
    _download(FASHION_MNIST_URL, folder)
    return folder
  except OSError as e:  # Includes urllib's URLError and timeouts.
    reason = " ".join(str(getattr(e, "reason", e)).split())
  raise UserError(
      "Fashion-MNIST not found; get it any one way: set the config key data.path "
      "to a folder with its IDX .gz files; or set READINGNOTES_DATA to a folder "
      "holding fashion-mnist/; or `sudo apt-get install dataset-fashion-mnist` "
      f"(installs {FASHION_MNIST_DEBIAN_DIR}); or allow network access to "
      f"{FASHION_MNIST_URL} (download into {folder} failed: {reason})")
