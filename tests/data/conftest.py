"""Fixtures for the data tests: tiny MNIST-format folders written by hand."""
import gzip
import pathlib
import struct

import numpy as np
import pytest

from readingnotes_jax.data import idx


def write_idx(path: pathlib.Path, array: np.ndarray, type_code: int = 0x08) -> pathlib.Path:
  """IDX bytes written by hand from the format's description."""
  header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  if path.suffix == ".gz":
    data = gzip.compress(data)
  path.write_bytes(data)
  return path


def write_mnist(folder: pathlib.Path, splits: dict[str, int], seed: int = 0) -> dict:
  """Tiny MNIST-format folder; returns split -> (images, labels)."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  out = {}
  for split, n in splits.items():
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    image_name, label_name = idx.SPLIT_FILES[split]
    write_idx(folder / f"{image_name}.gz", images)
    write_idx(folder / f"{label_name}.gz", labels)
    out[split] = (images, labels)
  return out


@pytest.fixture(name="write_idx", scope="session")
def write_idx_fixture():
  return write_idx


@pytest.fixture(name="write_mnist", scope="session")
def write_mnist_fixture():
  return write_mnist
