"""FashionGAN's figures (PNG under `workdir/figures/`): loss curves of each phase, and for held-out
photos: photo, sentence, generated segmentation and generated image (several sentences
each), one photo under five sentences, and compositional mapping on / off side by side."""
import pathlib
import textwrap
from typing import Any

import numpy as np

from readingnotes_jax.training import figures

# One colour per label (`ccp_fashion.CLASS_NAMES`).
PALETTE = np.array([[0, 0, 0], [120, 60, 20], [250, 200, 160], [220, 40, 40], [40, 80, 220],
                    [240, 160, 100], [200, 130, 80]], np.uint8)
_LOSSES = {"design coding": ["coder_loss"],
           "shape": ["shape_d_loss", "shape_g_gan", "shape_g_cross_entropy"],
           "image": ["image_d_loss", "image_g_gan", "image_g_l1"]}


def save_loss_curves(rows: list[dict[str, Any]], figdir: pathlib.Path, variants: list[str]) -> None:
  """figures/loss_<phase>.png: each phase's losses over its steps."""
  extra = [f"{v}_image_{k}" for v in variants[1:] for k in ("d_loss", "g_gan", "g_l1")]
  for phase, keys in _LOSSES.items():
    keys = keys + (extra if phase == "image" else [])
    train = [r for r in rows if keys[0] in r]
    if not train:
      continue
    figures.save_curves([r["step"] for r in train],
                        {k: [r.get(k, float("nan")) for r in train] for k in keys},
                        figdir / f"loss_{phase.replace(' ', '_')}.png", xlabel="step",
                        ylabel="loss", title=f"{phase} phase", logy=True)


def colour_labels(labels: np.ndarray) -> np.ndarray:
  """uint8 RGB [..., 3] of 7-class label maps."""
  return PALETTE[labels]


def _wrap(text: str, width: int = 22) -> str:
  return "\n".join(textwrap.wrap(text, width))


def save_panels(panels: list[list[tuple[np.ndarray, str]]], path: pathlib.Path, title: str) -> None:
  """Rows of (uint8 image, caption) panels as one PNG."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  rows, cols = len(panels), max(len(r) for r in panels)
  fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), dpi=100,
                           squeeze=False)
  for r, row in enumerate(panels):
    for c in range(cols):
      ax = axes[r][c]
      ax.axis("off")
      if c < len(row):
        image, caption = row[c]
        ax.imshow(image, interpolation="nearest")
        ax.set_title(_wrap(caption), fontsize=6)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.png")
  fig.savefig(tmp)
  plt.close(fig)
  tmp.replace(path)


def save_evaluation_figures(task, last: dict[str, Any], figdir: pathlib.Path, step: int) -> None:
  """held_out_pairs.png, one_photo_five_sentences.png and (with two G_image variants)
  compositional_vs_plain.png from the evaluator's last generations (`FashionEvaluation.last`)."""
  test = task.test_set
  pairs, variants = last["pairs"], list(last["images"])
  main = variants[0]
  f = task.config.figures
  rows = []
  for photo in range(min(f.num_photos, len(test))):
    row = [(test.images[photo], "photo"), (colour_labels(test.labels[photo]),
                                           test.sentences[photo])]
    for k in np.flatnonzero(pairs[:, 0] == photo)[:f.sentences_per_row]:
      sentence = test.sentences[pairs[k, 1]]
      row += [(colour_labels(last["labels"][k]), sentence), (last["images"][main][k], sentence)]
    rows.append(row)
  save_panels(rows, figdir / "held_out_pairs.png",
              f"held-out photos with other photos' sentences ({main} G_image, step {step}): "
              "photo, its labels, then generated segmentation and image per sentence")
  photo, others = last["five"]["photo"], last["five"]["others"]
  save_panels([[(test.images[photo], "photo")] + [
      (last["five"]["images"][i], test.sentences[o]) for i, o in enumerate(others)],
               [(colour_labels(test.labels[photo]), "its labels")] + [
      (colour_labels(last["five"]["labels"][i]), "generated segmentation")
      for i in range(len(others))]],
              figdir / "one_photo_five_sentences.png",
              f"one held-out photo under {len(others)} other sentences, step {step}")
  if len(variants) > 1:
    rows = []
    for k in range(min(f.num_photos, len(pairs))):
      photo, partner = pairs[k]
      rows.append([(test.images[photo], "photo"),
                   (colour_labels(last["labels"][k]), test.sentences[partner])]
                  + [(last["images"][v][k], v) for v in variants])
    same = ("segmentation and noise" if task.nets.g_image[main].noise
            else "segmentation, no noise")
    save_panels(rows, figdir / "compositional_vs_plain.png",
                f"compositional mapping on / off, same {same}, step {step}")
