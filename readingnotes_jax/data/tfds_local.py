"""TFDS builders over local files, built and read without TensorFlow.

Every builder in `readingnotes_jax.data` reads a folder of files the user
already has and writes TFDS `array_record` shards into a cache; `load` then
opens a split as a random-access `tfds.data_source` (NumPy values, no
TensorFlow).

Conventions for builders (subclass `LocalFilesBuilder`):
- The source folder is a constructor argument: `Builder(source_dir=...,
  data_dir=None, ...)`. Nothing is downloaded by the builder itself.
- Builds are cached under `data_dir`, by default `$READINGNOTES_CACHE` or
  `~/.cache/readingnotes_jax/tfds`, in a sub-folder keyed by the source
  folder's absolute path, the listing of its top level (names, sizes, mtimes)
  and the builder's own options (`_cache_tag`), so two source folders or two
  resolutions never share a build. Files changed in place below the top level
  are not detected: delete the cache sub-folder to rebuild.
- Records keep the source order (`LocalDatasetInfo(disable_shuffling=True)`);
  pipelines shuffle.
- Features are `tfds.features.Tensor` for raw arrays, with
  `encoding=tfds.features.Encoding.BYTES` for images (one bytes field instead
  of a list of ints: about 2x faster to build). `tfds.features.Image` would
  encode NumPy arrays through TensorFlow.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from readingnotes_jax.errors import UserError

_FILE_FORMAT = "array_record"


def default_data_dir() -> pathlib.Path:
  """Root of the build cache: `$READINGNOTES_CACHE` or `~/.cache/readingnotes_jax/tfds`."""
  env = os.environ.get("READINGNOTES_CACHE")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path.home() / ".cache" / "readingnotes_jax" / "tfds"


def _source_key(source_dir: pathlib.Path, tag: str) -> str:
  """Readable, collision-safe folder name for one source folder and options."""
  digest = hashlib.sha1(str(source_dir).encode())
  digest.update(tag.encode())
  for entry in sorted(os.scandir(source_dir), key=lambda e: e.name):
    stat = entry.stat()
    digest.update(f"\0{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
  name = source_dir.name or "root"
  return f"{name}-{tag + '-' if tag else ''}{digest.hexdigest()[:10]}"


class LocalDatasetInfo(tfds.core.DatasetInfo):
  """`tfds.core.DatasetInfo` of a build from local files.

  A builder whose build folder does not exist yet calls `initialize_from_bucket`,
  which in TFDS makes an empty `tmp*tfds` folder under the system's temporary
  folder (never removed) before finding that there is no bucket to read. No
  bucket holds these data sets' metadata: this does nothing.
  """

  def initialize_from_bucket(self) -> None:
    return None


class LocalFilesBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the builders over a local source folder.

  Subclasses implement `_info`, `_split_generators` and `_generate_examples`
  (reading `self.source_dir`), and may override `_cache_tag` to key the build
  on their options (e.g. the resolution). Build the info with
  `LocalDatasetInfo(builder=self, disable_shuffling=True, ...)`
  (`dataset_info_from_configs` looks for metadata files next to the module).
  """

  def __init_subclass__(cls, **kwargs: Any) -> None:
    # Never enter TFDS's global name registry: these builders are constructed
    # directly, and names such as `voc` or `cityscapes` belong to TFDS's own.
    super().__init_subclass__(skip_registration=True, **kwargs)

  def __init__(self, *, source_dir: str | os.PathLike[str],
               data_dir: str | os.PathLike[str] | None = None,
               **kwargs: Any) -> None:
    self.source_dir = pathlib.Path(source_dir).expanduser().resolve()
    if not self.source_dir.is_dir():
      raise UserError(
          f"data folder {self.source_dir} does not exist: pass the folder "
          "that holds the data set's files")
    root = pathlib.Path(data_dir) if data_dir is not None else default_data_dir()
    root = root.expanduser() / _source_key(self.source_dir, self._cache_tag())
    super().__init__(data_dir=os.fspath(root), file_format=_FILE_FORMAT, **kwargs)

  def _cache_tag(self) -> str:
    """Short string naming the builder's options that change the build."""
    return ""


@contextlib.contextmanager
def _build_lock(builder: tfds.core.DatasetBuilder) -> Iterator[None]:
  """Exclusive lock (flock) on one builder's version folder across processes."""
  parent = pathlib.Path(os.fspath(builder.data_path)).parent
  parent.mkdir(parents=True, exist_ok=True)
  lock_path = parent / f".{builder.version}.lock"
  with open(lock_path, "a") as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)


def prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Builds `builder` as array_record shards unless already built.

  Safe against concurrent builds of the same data set: a file lock serialises
  them, the loser reuses the winner's build, and TFDS writes into a temporary
  folder renamed into place only when complete.

  Raises:
    UserError: the build failed: the builder's own UserError for bad source
      data, or one naming the cache folder for I/O errors (no space, no
      permission).
  """
  try:
    with _build_lock(builder):
      # The folder appears, complete, by TFDS's rename (`is_prepared` would
      # log a warning while it is absent).
      if (pathlib.Path(os.fspath(builder.data_path)) / "dataset_info.json").is_file():
        if not builder.info.splits:  # Built by another process meanwhile.
          builder.info.read_from_directory(builder.data_path)
        return
      # Its progress bars and messages go to stdout with the run's output, so that a bad
      # source file's error line is alone on stderr.
      with contextlib.redirect_stderr(sys.stdout):
        builder.download_and_prepare(file_format=_FILE_FORMAT)
  except (OSError, RuntimeError) as e:
    message = " ".join(str(e).split()) or type(e).__name__
    raise UserError(
        f"could not build {builder.name} into {builder.data_dir_root}: "
        f"{message}; check the source files, or set READINGNOTES_CACHE to a "
        "writable folder with free space") from e


def load(builder: tfds.core.DatasetBuilder, split: str) -> Sequence[Mapping[str, Any]]:
  """Random-access source of one split (prepares the builder first).

  Returns:
    A `tfds.data_source` object: `len(source)`, and `source[i]` is a dict of
    NumPy values (also `source.__getitems__(indices)` for a batch).

  Raises:
    UserError: the split does not exist in this data set.
  """
  prepare(builder)
  splits = builder.info.splits
  if split not in splits:
    raise UserError(
        f"{builder.name} built from {getattr(builder, 'source_dir', '?')} has no "
        f"split {split!r} (available: {', '.join(sorted(splits)) or 'none'}): "
        "choose one of those or add the missing files to the source folder")
  return builder.as_data_source(split=split)
