"""Semantic segmentation scores from a dataset-level confusion matrix.

Matches hszhao/semseg: `util/util.py` `intersectionAndUnion` (per image: the
intersection, union and target areas per class, pixels labelled `ignore_label`
left out) and `tool/test.py` `cal_acc` (areas summed over the whole data set,
then per class IoU = intersection / (union + 1e-10) and accuracy = intersection /
(target + 1e-10); mIoU and mAcc are plain means over all classes; aAcc = summed
intersection / summed target). A class absent from both ground truth and
predictions therefore scores IoU 0 and accuracy 0 and still counts in the means,
as in semseg (mmsegmentation instead leaves such classes out with a NaN mean).

The areas are read off a confusion matrix (rows: ground truth, columns:
prediction), which sums across batches and devices: intersection = diagonal,
target = row sums, prediction area = column sums, union = target + prediction -
intersection.
"""
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError

def confusion_matrix(pred: np.ndarray | jax.Array, label: np.ndarray | jax.Array,
                     num_classes: int, ignore_label: int = 255) -> np.ndarray | jax.Array:
  """(num_classes, num_classes) pixel counts of (ground truth, prediction) pairs.

  Works on NumPy arrays (int64 counts) and on JAX arrays, also inside `jax.jit`
  (int32 counts: sum per-batch matrices into an int64 NumPy total on the host when
  a data set has more than 2^31 pixels of one cell). Pixels whose label is
  `ignore_label`, or whose label or prediction lies outside [0, num_classes), are
  not counted; predictions are class indices, e.g. an argmax over logits.

  Args:
    pred: predicted class per pixel, any shape.
    label: ground-truth class per pixel, the same shape as `pred`.
    num_classes: K.
    ignore_label: label value left out (255 in semseg).
  """
  if pred.shape != label.shape:
    raise UserError(f"prediction and label shapes differ: {pred.shape} vs {label.shape}; "
                    "resize the prediction to the label size")
  xp = jnp if isinstance(pred, jax.Array) or isinstance(label, jax.Array) else np
  index_dtype = xp.int32 if xp is jnp else np.int64
  pred = xp.reshape(pred, (-1,)).astype(index_dtype)
  label = xp.reshape(label, (-1,)).astype(index_dtype)
  valid = ((label != ignore_label) & (label >= 0) & (label < num_classes) & (pred >= 0)
           & (pred < num_classes))
  index = label * num_classes + pred
  if xp is jnp:
    counts = jnp.bincount(jnp.where(valid, index, 0), weights=valid.astype(jnp.int32),
                          length=num_classes * num_classes)
  else:
    counts = np.bincount(index[valid], minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: np.ndarray | jax.Array) -> dict:
  """semseg's scores from a summed confusion matrix (rows: ground truth).

  Returns a dict of floats: `miou`, `macc`, `aacc`, and the lists
  `iou_per_class`, `acc_per_class` (one value per class, in class order).
  """
  confusion = np.asarray(confusion, np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise UserError(f"a confusion matrix is square (classes x classes); got shape "
                    f"{confusion.shape}")
  intersection = np.diag(confusion)
  target = confusion.sum(axis=1)
  union = target + confusion.sum(axis=0) - intersection
  iou = intersection / (union + 1e-10)
  acc = intersection / (target + 1e-10)
  return {
      "miou": float(iou.mean()),
      "macc": float(acc.mean()),
      "aacc": float(intersection.sum() / (target.sum() + 1e-10)),
      "iou_per_class": iou.tolist(),
      "acc_per_class": acc.tolist(),
  }
