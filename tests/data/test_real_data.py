"""Fashion-MNIST and MNIST from ../shared/data (skipped without READINGNOTES_DATA)."""
import numpy as np
import pytest

from readingnotes_jax.data import idx
from readingnotes_jax.data import locate
from readingnotes_jax.data import pipeline
from readingnotes_jax.data import tfds_local
from readingnotes_jax.errors import UserError


@pytest.fixture(name="cache", scope="module")
def cache_fixture(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_cache")


def test_fashion_mnist_train(data_dir, cache, monkeypatch):
  monkeypatch.setenv("READINGNOTES_DATA", str(data_dir))
  folder = locate.fashion_mnist_dir(cache_dir=cache)
  assert folder == data_dir / "fashion-mnist"
  source = tfds_local.load(idx.MnistIdx(source_dir=folder, data_dir=cache), "train")
  assert len(source) == 60000
  memory = pipeline.to_memory(source)
  assert memory.arrays["image"].shape == (60000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(memory.arrays["label"]), [6000] * 10)
  # Known first record: an ankle boot (class 9), as in the original file.
  assert memory.arrays["label"][0] == 9
  with pipeline.ImageStream(memory, seed=0, resolution=32, mirror=False, num_channels=1) as stream:
    batch = stream.batch(0, 64)
  assert batch["image"].shape == (64, 32, 32, 1)
  assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0


def test_mnist_has_only_the_test_split(data_dir, cache):
  builder = idx.MnistIdx(source_dir=data_dir / "mnist", data_dir=cache)
  source = tfds_local.load(builder, "test")
  assert len(source) == 10000
  np.testing.assert_array_equal(source[0]["image"].shape, (28, 28, 1))
  assert source[0]["label"] == 7  # The first MNIST test digit is a 7.
  with pytest.raises(UserError, match="no split 'train'"):
    tfds_local.load(builder, "train")
