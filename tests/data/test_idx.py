"""IDX parsing and the MnistIdx builder, on tiny generated files."""
import gzip
import struct

import numpy as np
import pytest

from readingnotes_jax.data import idx
from readingnotes_jax.data import tfds_local
from readingnotes_jax.errors import UserError


def test_read_idx_known_bytes(tmp_path):
  raw = bytes.fromhex("00000B02" "00000002" "00000003" "0001 0002 FFFF 7FFF 8000 0100")
  (tmp_path / "a.idx").write_bytes(raw)
  expected = np.array([[1, 2, -1], [32767, -32768, 256]], np.int16)
  got = idx.read_idx(tmp_path / "a.idx")
  np.testing.assert_array_equal(got, expected)
  assert got.dtype == np.int16
  (tmp_path / "a.idx.gz").write_bytes(gzip.compress(raw))
  np.testing.assert_array_equal(idx.read_idx(tmp_path / "a.idx.gz"), expected)
  assert idx.read_idx_header(tmp_path / "a.idx.gz") == (np.dtype(">i2"), (2, 3))


def test_read_idx_uint8_images(tmp_path):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  path = tmp_path / "x-images-idx3-ubyte.gz"
  path.write_bytes(gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", 2, 3, 4) + images.tobytes()))
  np.testing.assert_array_equal(idx.read_idx(path), images)


@pytest.mark.parametrize("name,content", [
    ("bad_magic.idx", b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00"),
    ("bad_type.idx", b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00"),
    ("empty.idx", b""),
    ("short_header.idx", b"\x00\x00\x08\x03\x00\x00"),
    ("short_data.idx", b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00\x01"),
    ("long_data.idx", b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x00\x01"),
    ("not_gzip.gz", b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x00"),
    ("truncated.gz", gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 1000)
                                   + np.random.default_rng(0).bytes(1000))[:500]),
], ids=lambda value: value if isinstance(value, str) else "")
def test_corrupt_idx_names_the_file(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(UserError, match=name):
    idx.read_idx(path)


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory, write_mnist):
  folder = tmp_path_factory.mktemp("mnist")
  arrays = write_mnist(folder, {"train": 30, "test": 12})
  builder = idx.MnistIdx(source_dir=folder, data_dir=tmp_path_factory.mktemp("cache"))
  return builder, arrays


@pytest.mark.parametrize("split", ["train", "test"])
def test_builder_records_in_file_order(tiny_mnist, split):
  builder, arrays = tiny_mnist
  images, labels = arrays[split]
  source = tfds_local.load(builder, split)
  assert len(source) == len(images)
  for i in range(len(images)):
    record = source[i]
    np.testing.assert_array_equal(record["image"], images[i][:, :, None])
    assert record["label"] == labels[i]


def test_test_only_folder(tmp_path, write_mnist):
  """Like the MNIST copy in ../shared/data: only the t10k files."""
  write_mnist(tmp_path / "src", {"test": 5})
  builder = idx.MnistIdx(source_dir=tmp_path / "src", data_dir=tmp_path / "cache")
  assert len(tfds_local.load(builder, "test")) == 5
  with pytest.raises(UserError, match="no split 'train'.*available: test"):
    tfds_local.load(builder, "train")


def test_uncompressed_files(tmp_path, write_idx):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
  (tmp_path / "src").mkdir()
  write_idx(tmp_path / "src" / "train-images-idx3-ubyte", images)
  write_idx(tmp_path / "src" / "train-labels-idx1-ubyte", np.array([7, 8, 9], np.uint8))
  source = tfds_local.load(idx.MnistIdx(source_dir=tmp_path / "src", data_dir=tmp_path / "c"), "train")
  np.testing.assert_array_equal(source[2]["image"][:, :, 0], images[2])
  assert source[2]["label"] == 9


def test_missing_files(tmp_path, write_mnist):
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no MNIST-format files"):
    idx.MnistIdx(source_dir=tmp_path / "empty", data_dir=tmp_path / "cache")
  with pytest.raises(UserError, match="does not exist"):
    idx.MnistIdx(source_dir=tmp_path / "nowhere", data_dir=tmp_path / "cache")
  folder = tmp_path / "nolabels"
  write_mnist(folder, {"train": 3})
  (folder / "train-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(UserError, match="train-labels-idx1-ubyte"):
    idx.MnistIdx(source_dir=folder, data_dir=tmp_path / "cache")


def test_bad_data_stops_the_build(tmp_path, write_idx, write_mnist):
  folder = tmp_path / "src"
  write_mnist(folder, {"train": 4})
  write_idx(folder / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2], np.uint8))
  builder = idx.MnistIdx(source_dir=folder, data_dir=tmp_path / "cache")
  with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz holds labels of shape"):
    tfds_local.prepare(builder)
  write_idx(folder / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 10], np.uint8))
  builder = idx.MnistIdx(source_dir=folder, data_dir=tmp_path / "cache")
  with pytest.raises(UserError, match="outside 0..9"):
    tfds_local.prepare(builder)
  truncated = gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", 4, 28, 28) + bytes(100))
  (folder / "train-images-idx3-ubyte.gz").write_bytes(truncated)
  builder = idx.MnistIdx(source_dir=folder, data_dir=tmp_path / "cache")
  with pytest.raises(UserError, match="train-images-idx3-ubyte.gz holds 100 bytes"):
    tfds_local.prepare(builder)
