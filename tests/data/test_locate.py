"""Where Fashion-MNIST is found, in order, with the network replaced or cut."""
import hashlib
import socket
import time

import pytest

from readingnotes_jax.data import locate
from readingnotes_jax.errors import UserError


@pytest.fixture(name="places")
def places_fixture(tmp_path, monkeypatch, write_mnist):
  """Three complete copies (config, env, Debian) and no network by default."""
  for name in ("config", "env/fashion-mnist", "debian"):
    write_mnist(tmp_path / name, {"train": 2})
  monkeypatch.setenv("READINGNOTES_DATA", str(tmp_path / "env"))
  monkeypatch.setattr(locate, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "debian")

  def no_network(*args, **kwargs):
    raise OSError("network disabled by the test")

  monkeypatch.setattr(socket, "getaddrinfo", no_network)
  monkeypatch.setattr(socket.socket, "connect", no_network)
  return tmp_path


def test_order(places, monkeypatch):
  cache = places / "cache"
  assert locate.fashion_mnist_dir(places / "config", cache_dir=cache) == places / "config"
  assert locate.fashion_mnist_dir(cache_dir=cache) == places / "env" / "fashion-mnist"
  monkeypatch.setenv("READINGNOTES_DATA", str(places / "elsewhere"))
  assert locate.fashion_mnist_dir(cache_dir=cache) == places / "debian"
  monkeypatch.delenv("READINGNOTES_DATA")
  assert locate.fashion_mnist_dir(cache_dir=cache) == places / "debian"


def test_explicit_path_must_hold_the_files(places):
  with pytest.raises(UserError, match="data.path=.*empty does not hold"):
    locate.fashion_mnist_dir(places / "empty", cache_dir=places / "cache")


def test_offline_gives_one_line_with_every_way(places, monkeypatch):
  monkeypatch.delenv("READINGNOTES_DATA")
  monkeypatch.setattr(locate, "FASHION_MNIST_DEBIAN_DIR", places / "no-debian")
  started = time.monotonic()
  with pytest.raises(UserError) as error:
    locate.fashion_mnist_dir(cache_dir=places / "cache")
  assert time.monotonic() - started < 2
  message = str(error.value)
  assert "\n" not in message
  for way in ("data.path", "READINGNOTES_DATA", "apt-get install dataset-fashion-mnist",
              locate.FASHION_MNIST_URL, "network disabled by the test"):
    assert way in message


def test_download_from_local_files(places, monkeypatch):
  """The download step, served from file:// URLs, checks sizes and SHA-256."""
  monkeypatch.delenv("READINGNOTES_DATA")
  monkeypatch.setattr(locate, "FASHION_MNIST_DEBIAN_DIR", places / "no-debian")
  server = places / "config"
  files = {p.name: (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
           for p in server.iterdir()}
  monkeypatch.setattr(locate, "FASHION_MNIST_FILES", files)
  monkeypatch.setattr(locate, "FASHION_MNIST_URL", server.as_uri() + "/")
  folder = locate.fashion_mnist_dir(cache_dir=places / "cache")
  assert folder == places / "cache" / "downloads" / "fashion-mnist"
  for name in files:
    assert (folder / name).read_bytes() == (server / name).read_bytes()
  assert sorted(p.name for p in folder.iterdir()) == sorted(files)  # No partial files.
  # Already downloaded: found again without the server.
  monkeypatch.setattr(locate, "FASHION_MNIST_URL", (places / "gone").as_uri() + "/")
  assert locate.fashion_mnist_dir(cache_dir=places / "cache") == folder


def test_download_with_wrong_checksum_is_refused(places, monkeypatch):
  monkeypatch.delenv("READINGNOTES_DATA")
  monkeypatch.setattr(locate, "FASHION_MNIST_DEBIAN_DIR", places / "no-debian")
  server = places / "config"
  files = {p.name: (p.stat().st_size, "0" * 64) for p in server.iterdir()}
  monkeypatch.setattr(locate, "FASHION_MNIST_FILES", files)
  monkeypatch.setattr(locate, "FASHION_MNIST_URL", server.as_uri() + "/")
  with pytest.raises(UserError, match="wrong size or SHA-256"):
    locate.fashion_mnist_dir(cache_dir=places / "cache")
  assert not list((places / "cache" / "downloads" / "fashion-mnist").iterdir())
