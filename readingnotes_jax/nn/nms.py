"""Box overlap and greedy non-maximum suppression on device, with fixed-size outputs.

`nms` is Faster R-CNN's greedy NMS (rbgirshick/py-faster-rcnn `lib/nms/py_cpu_nms.py`, the
same rule as its `nms_kernel.cu` and as the MATLAB `functions/nms/nms.m` D&T and R-FCN
call): boxes are visited in descending score order, and a box is dropped when its IoU
with an already kept box is > the threshold; widths and heights are pixel-inclusive
(x2 - x1 + 1). Ties in score keep the lower index first (a stable sort).

Static shapes: the kept boxes come back as `max_output` indices plus a validity mask, so
the function jits once per (number of boxes, max_output). The loop picks the first box
still alive in score order and suppresses against it, `max_output` times: O(max_output *
N) work and O(N) memory, never the N x N IoU matrix (N = 6000 pre-NMS RPN proposals
would make that 144 MB per image).
"""
import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError


def box_area(boxes: jax.Array, *, inclusive: bool = True) -> jax.Array:
  """Areas of [..., 4] corner boxes (x1, y1, x2, y2); inclusive: (x2 - x1 + 1)(y2 - y1 + 1)."""
  one = 1.0 if inclusive else 0.0
  return (boxes[..., 2] - boxes[..., 0] + one) * (boxes[..., 3] - boxes[..., 1] + one)


def pairwise_iou(boxes1: jax.Array, boxes2: jax.Array, *, inclusive: bool = True) -> jax.Array:
  """IoU of [N, 4] x [M, 4] corner boxes -> [N, M] (R-CNN's `boxoverlap` when inclusive).

  Pairs with no intersection (or a degenerate union) give 0.
  """
  one = 1.0 if inclusive else 0.0
  width = (jnp.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
           - jnp.maximum(boxes1[:, None, 0], boxes2[None, :, 0]) + one)
  height = (jnp.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
            - jnp.maximum(boxes1[:, None, 1], boxes2[None, :, 1]) + one)
  intersection = jnp.maximum(width, 0) * jnp.maximum(height, 0)
  union = (box_area(boxes1, inclusive=inclusive)[:, None]
           + box_area(boxes2, inclusive=inclusive)[None, :] - intersection)
  positive = intersection > 0
  return jnp.where(positive, intersection / jnp.where(positive, union, 1), 0)


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float, max_output: int,
        valid: jax.Array | None = None, *, inclusive: bool = True) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS with a fixed number of outputs.

  Args:
    boxes: [N, 4] corner boxes (x1, y1, x2, y2).
    scores: [N] scores.
    iou_threshold: a box is suppressed by a kept box when their IoU is > this.
    max_output: number of output slots (static); NMS stops after that many kept boxes,
      which are the first `max_output` boxes a full NMS keeps.
    valid: [N] bool, boxes to consider (default all).
    inclusive: pixel-inclusive widths (Faster R-CNN's +1).

  Returns:
    (indices [max_output] int32 into `boxes`, kept [max_output] bool): the kept boxes in
    descending score order, then unused slots (kept False, index 0).
  """
  if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
    raise UserError(f"nms needs boxes [N, 4] and scores [N], got {boxes.shape} and "
                    f"{scores.shape}")
  if max_output < 1:
    raise UserError(f"nms: max_output must be positive, got {max_output}")
  n = boxes.shape[0]
  alive = jnp.ones(n, bool) if valid is None else valid.astype(bool)
  order = jnp.argsort(jnp.where(alive, scores, -jnp.inf), descending=True, stable=True)
  sorted_boxes, alive = boxes[order], alive[order]
  positions = jnp.arange(n)

  def keep_next(i, state):
    alive, kept_positions, kept = state
    first = jnp.argmax(alive)  # the highest-scoring box still alive
    found = alive[first]
    iou = pairwise_iou(sorted_boxes[first][None], sorted_boxes, inclusive=inclusive)[0]
    suppressed = (iou > iou_threshold) | (positions == first)
    alive = alive & ~(suppressed & found)
    return alive, kept_positions.at[i].set(first), kept.at[i].set(found)

  state = (alive, jnp.zeros(max_output, jnp.int32), jnp.zeros(max_output, bool))
  _, kept_positions, kept = jax.lax.fori_loop(0, max_output, keep_next, state)
  return jnp.where(kept, order[kept_positions], 0).astype(jnp.int32), kept
