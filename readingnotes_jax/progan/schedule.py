"""The progressive-growing schedule, counted in real images shown.

Matches `TrainingSchedule` in train.py of tkarras/progressive_growing_of_gans:
per resolution, `training_kimg` thousand images at a fixed level, then
`transition_kimg` thousand images fading in the next level (lod fractional);
minibatch size and learning rates chosen per resolution from dictionaries.
Phases are numbered 0, 1, 2, ...: the stable start level, then fade and stable
per higher level; the last (stable, final level) lasts until `total_kimg`.
The official code updates lod once per `minibatch_repeats` (4) minibatches;
here it is evaluated at every minibatch.
"""
import dataclasses
import math

from readingnotes_jax.errors import UserError


def parse_resolution_dict(spec: str) -> dict[int, float]:
  """Parses "4:128,8:64" into {4: 128, 8: 64} (config values stay strings so the CLI can set them)."""
  out = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    try:
      res, value = item.split(":")
      out[int(res)] = float(value)
    except ValueError:
      raise UserError(f"bad per-resolution setting {spec!r}: write it as '4:128,8:64'") from None
  return out


@dataclasses.dataclass(frozen=True)
class Stage:
  """What the networks do for one minibatch."""
  phase: int        # 0 = stable at the start level, then (fade, stable) per higher level.
  level: int        # log2 of the network resolution.
  fading: bool      # True while the newest level fades in.
  alpha: float      # weight of the newest level in [0, 1] (1 when not fading).
  batch_size: int   # global minibatch.
  g_lr: float
  d_lr: float

  @property
  def resolution(self) -> int:
    return 2 ** self.level


@dataclasses.dataclass(frozen=True)
class Schedule:
  final_resolution: int
  start_resolution: int = 4
  training_kimg: float = 600.0
  transition_kimg: float = 600.0
  total_kimg: float = 12000.0
  minibatch_base: int = 16
  minibatch: str = ""       # "res:size,..." overrides of minibatch_base.
  g_lr_base: float = 1e-3
  d_lr_base: float = 1e-3
  g_lr: str = ""            # "res:lr,..." overrides.
  d_lr: str = ""
  batch_multiple: int = 1   # global minibatches are rounded down to a multiple of this (#devices).

  def __post_init__(self):
    for name in ("final_resolution", "start_resolution"):
      r = getattr(self, name)
      if r < 4 or r & (r - 1):
        raise UserError(f"{name}={r} is not a power of two >= 4: use 4, 8, 16, ..., 1024")
    if self.start_resolution > self.final_resolution:
      raise UserError(f"start_resolution={self.start_resolution} exceeds the final "
                      f"resolution {self.final_resolution}")

  @property
  def final_level(self) -> int:
    return int(math.log2(self.final_resolution))

  @property
  def start_level(self) -> int:
    return int(math.log2(self.start_resolution))

  @property
  def total_images(self) -> int:
    return int(round(self.total_kimg * 1000))

  @property
  def num_phases(self) -> int:
    return 1 + 2 * (self.final_level - self.start_level)

  def lod(self, images_seen: int) -> float:
    """The official fractional level of detail (0 = final resolution)."""
    kimg = images_seen / 1000.0
    phase_dur = self.training_kimg + self.transition_kimg
    phase_idx = int(math.floor(kimg / phase_dur)) if phase_dur > 0 else 0
    phase_kimg = kimg - phase_idx * phase_dur
    lod = float(self.final_level - self.start_level - phase_idx)
    if self.transition_kimg > 0:
      lod -= max(phase_kimg - self.training_kimg, 0.0) / self.transition_kimg
    return max(lod, 0.0)

  def stage(self, images_seen: int) -> Stage:
    lod = self.lod(images_seen)
    level = self.final_level - int(math.floor(lod))
    fading = lod != math.floor(lod)
    alpha = 1.0 - (lod - math.floor(lod))
    phase = 2 * (level - self.start_level) - (1 if fading else 0)
    res = 2 ** level
    size = int(parse_resolution_dict(self.minibatch).get(res, self.minibatch_base))
    size -= size % self.batch_multiple
    if size <= 0:
      raise UserError(f"minibatch at {res}x{res} is smaller than the {self.batch_multiple} "
                      "devices: raise the minibatch or use fewer devices")
    g_lr = parse_resolution_dict(self.g_lr).get(res, self.g_lr_base)
    d_lr = parse_resolution_dict(self.d_lr).get(res, self.d_lr_base)
    return Stage(phase, level, fading, alpha, size, g_lr, d_lr)
