"""ProGAN's training data, chosen by `config.data`: Fashion-MNIST, MNIST or a folder of images."""
import os
import pathlib
from typing import Any

from readingnotes_jax.data import idx, image_folder, locate, pipeline, tfds_local
from readingnotes_jax.errors import UserError

# Splits up to this many pixels in all are read into memory once.
_IN_MEMORY_PIXELS = 2**28


def load_source(config) -> Any:
  """The random-access source of `config.data` (built into the TFDS cache on first use)."""
  d, m = config.data, config.model
  if d.source == "fashion_mnist":
    builder = idx.MnistIdx(source_dir=locate.fashion_mnist_dir(d.path or None))
  elif d.source == "mnist":
    folder = d.path or os.path.join(os.environ.get("READINGNOTES_DATA", ""), "mnist")
    if not pathlib.Path(folder).is_dir():
      raise UserError("MNIST not found: set data.path to the folder of its IDX .gz files "
                      "or READINGNOTES_DATA to a folder holding mnist/")
    builder = idx.MnistIdx(source_dir=folder)
  elif d.source == "image_folder":
    if not d.path:
      raise UserError("data.source=image_folder needs data.path: the folder of images")
    builder = image_folder.ImageFolder(source_dir=d.path, resolution=m.resolution,
                                       num_channels=m.num_channels, labels=m.label_size > 0)
  else:
    raise UserError(f"data.source={d.source!r}: use fashion_mnist, mnist or image_folder")
  source = tfds_local.load(builder, d.split)
  h, w, c = source[0]["image"].shape
  if len(source) * h * w * c <= _IN_MEMORY_PIXELS:
    source = pipeline.to_memory(source)
  return source


class TrainingData:
  """Real images per resolution: one `ImageStream` per level over one source.

  Every stream has the same record order (a function of the seed), so the
  batch at a given image count is the same whatever the resolution history;
  lower resolutions are 2x2 box means of the padded images, rounded per level,
  as the official dataset_tool.py stores them.
  """

  def __init__(self, config):
    self.config = config
    self.source = load_source(config)
    self._streams: dict[int, pipeline.ImageStream] = {}
    self.stream(config.model.resolution)  # validates resolution and channels now.

  def stream(self, resolution: int) -> pipeline.ImageStream:
    if resolution not in self._streams:
      self._streams[resolution] = pipeline.ImageStream(
          self.source, seed=self.config.seed, resolution=resolution,
          mirror=self.config.data.mirror, num_channels=self.config.model.num_channels)
    return self._streams[resolution]

  def batch(self, start: int, size: int, resolution: int, process_index: int = 0,
            process_count: int = 1) -> dict[str, Any]:
    return self.stream(resolution).batch(start, size, process_index, process_count)

  def eval_reals(self, count: int) -> Any:
    """`count` real images at full resolution, a fixed random sample, half of them mirrored
    when `data.mirror` is on (util_scripts.py `evaluate_metrics`, `misc.apply_mirror_augment`)."""
    stream = pipeline.ImageStream(self.source, seed=self.config.seed + 1,
                                  resolution=self.config.model.resolution,
                                  mirror=self.config.data.mirror,
                                  num_channels=self.config.model.num_channels)
    with stream:
      return stream.batch(0, count)["image"]

  def close(self) -> None:
    for s in self._streams.values():
      s.close()
