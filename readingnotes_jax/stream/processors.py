"""Per-frame processors: what a model does to each frame before it is encoded.

A processor is a function RGB uint8 (H, W, 3) -> RGB uint8 (H', W', 3) with a
name. Each is registered by name with a setup function that receives the
`--checkpoint` folder (or None) and returns the per-frame function, so a new
model is a few lines:

  @register("mymodel")
  def _mymodel(checkpoint):
    predict = load(checkpoint)           # once, at server start
    return lambda frame: draw(frame, predict(frame))

Setup runs once at server start; the frame function runs on the pipeline
thread, one frame at a time. A frame function with a `sentence` attribute (a
`Sentence`) takes text from the page: the viewer's {"type": "text"} message sets
it for the next frames (fashiongan: the outfit to dress the person in).
"""
import dataclasses
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from readingnotes_jax import predictors
from readingnotes_jax.errors import UserError

FrameFn = Callable[[np.ndarray], np.ndarray]
Setup = Callable[..., FrameFn]  # (checkpoint: str | None, **options) -> frame function

# Legend layout (pixels): box at (MARGIN, MARGIN), one ROW per class, a SWATCH
# square at PAD from the row's top-left, the class name after it.
LEGEND_MARGIN = 8
LEGEND_PAD = 4
LEGEND_ROW = 18
LEGEND_SWATCH = 12
LEGEND_MAX_ROWS = 10

_SETUPS: dict[str, Setup] = {}


class Sentence:
  """The text a processor uses for the next frames; `set` checks it first (`check` raises
  UserError naming what is wrong) and keeps the old text when the check fails."""

  def __init__(self, text: str, check: Callable[[str], object]):
    check(text)
    self.text, self._check = text, check

  def set(self, text: str) -> None:
    self._check(text)
    self.text = text


@dataclasses.dataclass(frozen=True)
class Processor:
  """A named per-frame function; `sentence` when it takes text from the page."""
  name: str
  fn: FrameFn
  sentence: Sentence | None = None


def register(name: str) -> Callable[[Setup], Setup]:
  """Registers a setup function `(checkpoint: str | None, **options) -> frame function`
  under `name`."""

  def decorator(setup: Setup) -> Setup:
    _SETUPS[name] = setup
    return setup

  return decorator


def names() -> list[str]:
  """The registered processor names."""
  return sorted(_SETUPS)


def load(name: str, checkpoint: str | None = None, **options) -> Processor:
  """Runs the setup of processor `name` (loading its model from `checkpoint`; `options`
  such as fashiongan's `segmenter` go to the setup)."""
  if name not in _SETUPS:
    raise UserError(f"unknown model {name!r}: use one of {names()}")
  fn = _SETUPS[name](checkpoint, **options)
  return Processor(name, fn, getattr(fn, "sentence", None))


@register("none")
def _none(checkpoint: str | None) -> FrameFn:
  del checkpoint
  return lambda frame: frame


def blend_labels(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray,
                 alpha: float = 0.5) -> np.ndarray:
  """Paints each pixel's class colour over the frame with opacity `alpha`.

  Labels outside [0, len(palette)) (void / ignore, e.g. 255) leave the pixel as is.
  """
  if labels.shape != frame.shape[:2]:
    raise ValueError(f"label map {labels.shape} does not match frame {frame.shape[:2]}")
  valid = (labels >= 0) & (labels < len(palette))
  colours = palette[np.where(valid, labels, 0)].astype(np.float32)
  mixed = np.rint((1.0 - alpha) * frame.astype(np.float32) + alpha * colours).astype(np.uint8)
  return np.where(valid[..., None], mixed, frame)


def classes_by_area(labels: np.ndarray, num_classes: int) -> list[int]:
  """The classes present in `labels`, largest area first (ties: lower index first)."""
  counts = np.bincount(labels[(labels >= 0) & (labels < num_classes)].ravel(),
                       minlength=num_classes)
  present = np.flatnonzero(counts)
  return [int(c) for c in present[np.argsort(-counts[present], kind="stable")]]


def draw_legend(frame: np.ndarray, classes: Sequence[int], class_names: Sequence[str],
                palette: np.ndarray) -> np.ndarray:
  """Draws a legend box in the top-left corner: a colour swatch and the name per class.

  At most LEGEND_MAX_ROWS classes are listed; the box darkens the frame under it
  to half brightness so white text stays readable.
  """
  frame = frame.copy()
  rows = list(classes)[:LEGEND_MAX_ROWS]
  if not rows:
    return frame
  font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
  text_width = max(cv2.getTextSize(class_names[c], font, scale, 1)[0][0] for c in rows)
  x0 = y0 = LEGEND_MARGIN
  x1 = min(frame.shape[1], x0 + 3 * LEGEND_PAD + LEGEND_SWATCH + text_width)
  y1 = min(frame.shape[0], y0 + len(rows) * LEGEND_ROW + LEGEND_PAD)
  frame[y0:y1, x0:x1] //= 2
  for i, c in enumerate(rows):
    top = y0 + LEGEND_PAD + i * LEGEND_ROW
    left = x0 + LEGEND_PAD
    frame[top:top + LEGEND_SWATCH, left:left + LEGEND_SWATCH] = palette[c]
    cv2.putText(frame, class_names[c], (left + LEGEND_SWATCH + LEGEND_PAD, top + LEGEND_SWATCH - 1),
                font, scale, (255, 255, 255), 1, cv2.LINE_AA)
  return frame


def segmentation_overlay(predict: Callable[[np.ndarray], np.ndarray], class_names: Sequence[str],
                         palette: np.ndarray, alpha: float = 0.5) -> FrameFn:
  """A frame function that blends `predict(frame)`'s label map over the frame, with a legend."""
  palette = np.asarray(palette, np.uint8)
  if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < len(class_names):
    raise UserError(f"palette of shape {palette.shape} does not give an RGB colour to each of "
                    f"{len(class_names)} classes: the checkpoint's class metadata is broken")

  def overlay(frame: np.ndarray) -> np.ndarray:
    labels = np.asarray(predict(frame))
    blended = blend_labels(frame, labels, palette, alpha)
    return draw_legend(blended, classes_by_area(labels, len(class_names)), class_names, palette)

  return overlay


@register("pspnet")
def _pspnet(checkpoint: str | None) -> FrameFn:
  """PSPNet scene parsing (readingnotes_jax.pspnet) as a colour overlay with a legend."""
  if checkpoint is None:
    raise UserError("--model pspnet needs --checkpoint DIR (a PSPNet training workdir)")
  predict, class_names, palette = predictors.load("segmenter", "pspnet", checkpoint)
  return segmentation_overlay(predict, class_names, palette)


class _Restyle:
  """fashiongan's frame function: [the frame's centred square | the person dressed as
  `sentence.text` says], each `PANEL` pixels high, the sentence written under them."""
  PANEL = 256

  def __init__(self, restyler):
    self.restyler = restyler
    self.sentence = Sentence(restyler.default_text, restyler.check_text)

  def __call__(self, frame: np.ndarray) -> np.ndarray:
    text = self.sentence.text
    result = self.restyler.restyle(frame, text)
    size = (self.PANEL, self.PANEL)
    panels = [cv2.resize(result[k], size, interpolation=cv2.INTER_AREA if k == "photo"
                         else cv2.INTER_LINEAR) for k in ("photo", "image")]
    out = np.zeros((self.PANEL + 28, 2 * self.PANEL, 3), np.uint8)
    out[:self.PANEL] = np.concatenate(panels, axis=1)
    cv2.putText(out, text[:70], (6, self.PANEL + 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    return out


@register("fashiongan")
def _fashiongan(checkpoint: str | None, segmenter: str | None = None) -> FrameFn:
  """FashionGAN (readingnotes_jax.fashiongan): the streamed person in the outfit a sentence
  typed in the page describes; the person's segmentation from a PSPNet CCP `segmenter`."""
  if checkpoint is None:
    raise UserError("--model fashiongan needs --checkpoint DIR (a FashionGAN training workdir)")
  if segmenter is None:
    raise UserError("--model fashiongan needs --segmenter DIR (a PSPNet workdir trained on "
                    "CCP: experiments/configs/pspnet/ccp_pspnet50.py) for each frame's person")
  return _Restyle(predictors.load("restyler", "fashiongan", checkpoint, segmenter=segmenter))


@register("detect_track")
def _detect_track(checkpoint: str | None) -> FrameFn:
  """D&T (readingnotes_jax.detect_track): each frame's detections with track ids carried from
  the previous frames by the RoI tracker (`detect_track.predict.OnlineTracker`)."""
  if checkpoint is None:
    raise UserError("--model detect_track needs --checkpoint DIR (a D&T training workdir)")
  from readingnotes_jax.detect_track import figures  # pylint: disable=import-outside-toplevel
  tracker = predictors.load("tracker", "detect_track", checkpoint)

  def draw(frame: np.ndarray) -> np.ndarray:
    tracked = tracker.update(frame)
    return figures.draw_tracks(frame, tracked.boxes, tracked.ids.tolist())

  return draw
