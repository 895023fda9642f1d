"""New clothes on a photo from a sentence, with a trained FashionGAN workdir.

  python -m readingnotes_jax.fashiongan.edit --workdir runs/ccp_fashiongan --photo P.jpg \
      --text "a woman in a red dress" (--labels P.mat | --segmenter PSPNET_WORKDIR) --out OUT.png

S0, the photo's segmentation, comes from a CCP label file (`--labels`, 59 labels mapped to
FashionGAN's 7 as the training data) or from a PSPNet workdir trained on CCP
(`--segmenter`, through `readingnotes_jax.predictors`). As demo_release/demo_full.lua: the
photo and S0 padded to a centred square at the workdir's size; down m(S0), the sentence's
design coding and noise give G_shape's segmentation; G_image renders it (`--postprocess`:
the demo's hair / face copy and skin balance). Writes OUT.png (the new photo),
OUT_segmentation.png and OUT_side_by_side.png (photo, S0, generated segmentation, new photo).
The vocabulary and the mean image of the training data come from the workdir's
`fashiongan_inference.npz` (written when training starts; the data are not read), or for
workdirs older than that file from the data (`config.data`, or READINGNOTES_DATA). Bad
input: one line on stderr, exit code 2, nothing written.
"""
import argparse
import pathlib
import sys
from collections.abc import Callable, Sequence

import jax
import numpy as np

from readingnotes_jax import predictors
from readingnotes_jax.data import ccp, ccp_fashion, parts, segmentation
from readingnotes_jax import errors
from readingnotes_jax.errors import UserError
from readingnotes_jax.fashiongan import compose, data as fashion_data, model, train
from readingnotes_jax.fashiongan import figures as fashion_figures
from readingnotes_jax.training import figures, mesh as mesh_lib, runner


def _parser() -> argparse.ArgumentParser:
  parser = errors.ArgumentParser(prog="python -m readingnotes_jax.fashiongan.edit",
                   description="Dress the person of a photo as a sentence says.")
  parser.add_argument("--workdir", required=True, help="a finished FashionGAN training workdir")
  parser.add_argument("--photo", required=True, help="the photo (JPEG or PNG)")
  parser.add_argument("--text", required=True, help='e.g. "a woman in a red dress"')
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--labels", help="the photo's CCP label file (.mat, variable groundtruth)")
  source.add_argument("--segmenter", help="a PSPNet workdir trained on CCP")
  parser.add_argument("--out", required=True, help="the new photo (PNG)")
  parser.add_argument("--seed", type=int, default=0, help="noise of both stages")
  parser.add_argument("--postprocess", action="store_true",
                      help="copy hair and face from the photo, balance skin (the demo's)")
  return parser


def label_file(photo: np.ndarray, labels: str) -> np.ndarray:
  """FashionGAN's 7-class map of `photo` from its CCP label file (59 labels mapped)."""
  path = pathlib.Path(labels)
  raw = segmentation.map_labels(ccp.read_label(path), ccp.CCP.LABEL_LUT, path)
  if raw.shape != photo.shape[:2]:
    raise UserError(f"{path}: labels are {raw.shape[0]}x{raw.shape[1]} but the photo is "
                    f"{photo.shape[0]}x{photo.shape[1]}: give the photo's own label file")
  return ccp_fashion.fashion_labels(raw)


def load_segmenter(workdir: str) -> Callable[[np.ndarray], np.ndarray]:
  """predict(photo uint8 [H, W, 3]) -> FashionGAN's 7-class map [H, W], of a PSPNet workdir
  trained on CCP (its 59 labels mapped) or on the 7 classes."""
  predict, class_names, _ = predictors.load("segmenter", "pspnet", workdir)
  if tuple(class_names) == tuple(ccp.CLASS_NAMES):
    return lambda photo: ccp_fashion.fashion_labels(np.asarray(predict(photo)).astype(np.uint8))
  if tuple(class_names) == tuple(ccp_fashion.CLASS_NAMES):
    return lambda photo: np.asarray(predict(photo)).astype(np.uint8)
  raise UserError(f"{workdir}: the segmenter's classes ({len(class_names)}: "
                  f"{', '.join(class_names[:3])}, ...) are not CCP's: train PSPNet with "
                  "experiments/configs/pspnet/ccp_pspnet50.py")


def load_workdir(workdir: str) -> tuple[train.Task, dict]:
  """(task, state on one device) of a finished FashionGAN workdir."""
  config = runner.read_config(workdir, "fashiongan")
  config.num_devices = 1
  saved = pathlib.Path(workdir) / fashion_data.INFERENCE_FILE
  # Workdirs written before the file existed read the training data instead.
  task = train.Task(config, mesh_lib.make_data_mesh(1),
                    fashion_data.read_inference(saved) if saved.is_file() else None)
  state, meta = runner.restore_latest(workdir, runner.abstract_state(task))
  if meta["position"] < task.total:
    phase = train.PHASES[task.phase(meta["position"])]
    raise UserError(f"{workdir} stopped in the {phase} phase (step {meta['position']} of "
                    f"{task.total}): train it to the end first (experiments.train resumes)")
  return task, train.local(state)


def edit(task: train.Task, state, photo: np.ndarray, labels: np.ndarray, text: str, *,
         seed: int = 0, postprocess: bool = False,
         generation: train.Generation | None = None) -> dict[str, np.ndarray]:
  """{"photo", "labels", "generated_labels", "image"} at the workdir's size (uint8); pass
  the same `generation` (`train.Generation`) to edit many photos with one compile."""
  size = task.config.data.image_size
  words = task.train_set.vocabulary.encode(text)
  square, square_labels = ccp_fashion.square_resize(photo, labels, size)
  generation = generation or train.Generation(task.nets, task.config.eval.batch_norm)
  variant = next(iter(task.nets.g_image))
  z = lambda stream: train.noise(seed, 10 + stream, 0, (1, model.NOISE_SIZE))
  generated_labels, images = generation(
      state, words[None].astype(np.int32), np.array([len(words)], np.int32),
      compose.spatial_constraint(square_labels[None]), z(0), z(1),
      train.inference_key(seed, 10, 0), [variant])
  image = images[variant][0] + task.train_set.mean_image
  if postprocess:
    image = compose.demo_postprocess(image, square.astype(np.float32) / 255, square_labels,
                                     generated_labels[0])
  return {"photo": square, "labels": square_labels, "generated_labels": generated_labels[0],
          "image": figures.to_uint8(image, (0.0, 1.0))}


def outputs(out: pathlib.Path) -> dict[str, pathlib.Path]:
  stem = out.with_suffix("")
  return {"image": out, "segmentation": stem.with_name(stem.name + "_segmentation.png"),
          "side_by_side": stem.with_name(stem.name + "_side_by_side.png")}


def main(argv: Sequence[str] | None = None) -> int:
  try:
    args = _parser().parse_args(argv)
    out = pathlib.Path(args.out)
    if out.suffix.lower() != ".png":
      raise UserError(f"--out {out}: give a .png path")
    if not out.parent.is_dir():
      raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if args.seed < 0:
      raise UserError(f"--seed {args.seed}: give a non-negative integer")
    inputs = {pathlib.Path(p).resolve() for p in (args.photo, args.labels) if p}
    for written in outputs(out).values():
      if written.resolve() in inputs:
        raise UserError(f"--out {out} would overwrite the input {written}: choose another path")
    if not args.text.strip():
      raise UserError("--text is empty: describe the clothes, e.g. \"a woman in a red dress\"")
    photo = parts.read_rgb(pathlib.Path(args.photo))
    if args.labels:
      labels = label_file(photo, args.labels)
    elif args.segmenter:
      labels = load_segmenter(args.segmenter)(photo)
    else:
      raise UserError("the photo needs its segmentation: give --labels P.mat (CCP label file) "
                      "or --segmenter WORKDIR (a PSPNet trained on CCP)")
    task, state = load_workdir(args.workdir)
    result = edit(task, state, photo, labels, args.text, seed=args.seed,
                  postprocess=args.postprocess)
  except UserError as e:
    print(f"edit: error: {e}", file=sys.stderr)
    return 2
  paths = outputs(out)
  figures.save_image(result["image"], paths["image"])
  figures.save_image(fashion_figures.colour_labels(result["generated_labels"]),
                     paths["segmentation"])
  panels = [result["photo"], fashion_figures.colour_labels(result["labels"]),
            fashion_figures.colour_labels(result["generated_labels"]), result["image"]]
  figures.save_image(figures.image_grid(np.stack(panels), ncols=4),
                     paths["side_by_side"], scale=max(1, 256 // result["image"].shape[0]))
  print(" ".join(str(p) for p in paths.values()))
  return 0


if __name__ == "__main__":
  jax.config.parse_flags_with_absl()
  sys.exit(main())
