"""End to end with a real model: the ProGAN generator module's latent walk through the server."""
import cv2
import numpy as np
import pytest
from websockets.sync.client import connect

from readingnotes_jax.stream.server import read_stamp
from readingnotes_jax.stream.sources import generator_source
from stream_testlib import running


def test_progan_generator_walk_streams_to_a_viewer():
  jax = pytest.importorskip("jax")
  model = pytest.importorskip("readingnotes_jax.progan.model")
  generator = model.Generator(resolution=16, num_channels=1, latent_size=16, fmap_base=32,
                              fmap_max=8)
  # Random parameters of the right shapes (compiling `init` is slow on CPU; the walk,
  # conversion and streaming are under test here, not the initialisation).
  shapes = jax.eval_shape(generator.init, jax.random.key(0), np.zeros((1, 16), np.float32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
  apply = jax.jit(generator.apply)
  source = generator_source("progan", lambda z: apply(params, z), 16, batch_size=4)
  with running([source]) as server, connect(f"ws://127.0.0.1:{server.port}/ws",
                                            max_size=None) as ws:
    frames = []
    while len(frames) < 6:  # the first batch waits for the jit compile
      message = ws.recv(timeout=60)
      if isinstance(message, bytes):
        frames.append(message)
  seqs = [read_stamp(m)["seq"] for m in frames]
  assert seqs == list(range(1, 7))
  for message in frames:
    image = cv2.imdecode(np.frombuffer(message, np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert image.shape == (256, 256, 3)  # 16 px zoomed by 16, grey repeated to RGB
    assert np.abs(image[..., 0] - image[..., 1]).max() <= 8
