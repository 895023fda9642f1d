"""Trained models by name, for the stream and notebooks: each paper's `predict.py` loader.

Entries name "module:function" so a paper is imported only when its model is
asked for. A new paper adds its loader here:

- "generator": `load(workdir) -> (generate(latents) -> images NHWC in [-1, 1], latent_size)`;
- "segmenter": `load(workdir) -> (predict(image uint8 HWC) -> labels HW, class_names, palette)`;
- "restyler": `load(workdir, segmenter=DIR) -> Restyler` (restyle(photo, text), check_text,
  default_text: a person's photo dressed as a sentence says);
- "tracker": `load(workdir) -> OnlineTracker` (update(frame uint8 HWC) -> Tracked ids, boxes,
  scores: the frame's detections with track ids carried from the previous frames).
"""
import importlib
from typing import Any

from readingnotes_jax.errors import UserError

LOADERS: dict[str, dict[str, str]] = {
    "generator": {"progan": "readingnotes_jax.progan.predict:load_generator"},
    "segmenter": {"pspnet": "readingnotes_jax.pspnet.predict:load_segmenter"},
    "restyler": {"fashiongan": "readingnotes_jax.fashiongan.predict:load_restyler"},
    "tracker": {"detect_track": "readingnotes_jax.detect_track.predict:load_tracker"},
}


def load(kind: str, name: str, workdir: str, **options: Any) -> Any:
  """The `kind` model of paper `name` from a training workdir (see the module docstring)."""
  loaders = LOADERS.get(kind, {})
  if name not in loaders:
    raise UserError(f"no {kind} named {name!r}: choose from {', '.join(sorted(loaders))}")
  module, function = loaders[name].split(":")
  return getattr(importlib.import_module(module), function)(workdir, **options)
