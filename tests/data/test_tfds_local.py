"""Build cache, locking and errors of tfds_local (through the MnistIdx builder)."""
import concurrent.futures
import pathlib
import tempfile

import numpy as np
import pytest

from readingnotes_jax.data import idx
from readingnotes_jax.data import tfds_local
from readingnotes_jax.errors import UserError


def test_default_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("READINGNOTES_CACHE", str(tmp_path / "c"))
  assert tfds_local.default_data_dir() == tmp_path / "c"
  monkeypatch.delenv("READINGNOTES_CACHE")
  monkeypatch.setenv("HOME", str(tmp_path))
  assert tfds_local.default_data_dir() == tmp_path / ".cache" / "readingnotes_jax" / "tfds"


def test_builder_uses_env_cache(monkeypatch, tmp_path, write_mnist):
  write_mnist(tmp_path / "src", {"test": 2})
  monkeypatch.setenv("READINGNOTES_CACHE", str(tmp_path / "env_cache"))
  builder = idx.MnistIdx(source_dir=tmp_path / "src")
  tfds_local.prepare(builder)
  assert pathlib.Path(builder.data_dir).is_relative_to(tmp_path / "env_cache")


def test_sources_do_not_share_a_build(tmp_path, write_mnist):
  a = write_mnist(tmp_path / "a", {"test": 3}, seed=1)["test"][1]
  b = write_mnist(tmp_path / "b", {"test": 3}, seed=2)["test"][1]
  for folder, labels in (("a", a), ("b", b)):
    source = tfds_local.load(idx.MnistIdx(source_dir=tmp_path / folder, data_dir=tmp_path / "cache"), "test")
    assert [source[i]["label"] for i in range(3)] == labels.tolist()
  # Rewriting a source's files changes its cache key: the new data is built.
  c = write_mnist(tmp_path / "a", {"test": 4}, seed=3)["test"][1]
  source = tfds_local.load(idx.MnistIdx(source_dir=tmp_path / "a", data_dir=tmp_path / "cache"), "test")
  assert [source[i]["label"] for i in range(4)] == c.tolist()


def test_concurrent_builds_agree(tmp_path, write_mnist):
  """Separate builders racing on one cache: one builds, the other reuses it."""
  _, labels = write_mnist(tmp_path / "src", {"train": 200})["train"]

  def build_and_read(_):
    builder = idx.MnistIdx(source_dir=tmp_path / "src", data_dir=tmp_path / "cache")
    source = tfds_local.load(builder, "train")
    return [source[i]["label"] for i in range(len(source))]

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    results = list(pool.map(build_and_read, range(3)))
  for result in results:
    assert result == labels.tolist()
  folders = [p.name for p in (tmp_path / "cache").glob("*/mnist_idx/*") if p.is_dir()]
  assert folders == ["1.0.0"]  # One build, no incomplete folder left over.


def test_unwritable_cache_is_a_user_error(tmp_path, write_mnist):
  write_mnist(tmp_path / "src", {"test": 2})
  (tmp_path / "file").write_text("not a folder")
  builder = idx.MnistIdx(source_dir=tmp_path / "src", data_dir=tmp_path / "file")
  with pytest.raises(UserError, match="could not build mnist_idx.*READINGNOTES_CACHE"):
    tfds_local.prepare(builder)


def test_values_are_numpy(tmp_path, write_mnist):
  images, _ = write_mnist(tmp_path / "src", {"test": 2})["test"]
  source = tfds_local.load(idx.MnistIdx(source_dir=tmp_path / "src", data_dir=tmp_path / "c"), "test")
  record = source.__getitems__([1])[0]
  assert isinstance(record["image"], np.ndarray) and record["image"].dtype == np.uint8
  np.testing.assert_array_equal(record["image"][:, :, 0], images[1])


def test_building_leaves_the_temporary_folder_alone(monkeypatch, tmp_path, write_mnist):
  """TFDS's `DatasetInfo.initialize_from_bucket` leaves an empty `tmp*tfds` folder per new
  builder; `LocalDatasetInfo` skips it (360 such folders piled up in /tmp per suite run)."""
  write_mnist(tmp_path / "src", {"test": 2})
  temporary = tmp_path / "tmp"
  temporary.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temporary))
  for _ in range(2):  # A new build, then a builder over the finished one.
    tfds_local.load(idx.MnistIdx(source_dir=tmp_path / "src", data_dir=tmp_path / "c"), "test")
  assert list(temporary.iterdir()) == []
