"""FashionGAN trainer and edit command on generated data: each phase trains only its networks,
the discriminator's loss is real + 0.1 wrong + 0.9 fake of its logits (BCE from NumPy), the
coder is frozen under the GANs, and the edit command's output and bad input.

Data are generated `FashionSet`s (the loaders are tested in test_fashiongan_data.py); the
whole run, resume, devices and processes are the contract suite's (tests/contract)."""
import pathlib
import shutil

import jax
import numpy as np
import pytest

from experiments.configs.fashiongan import ccp_fashiongan
from readingnotes_jax.data import ccp_fashion
from readingnotes_jax.errors import UserError
from readingnotes_jax.fashiongan import compose, data as fashion_data, edit, model, train
from readingnotes_jax.training import mesh as mesh_lib, runner
from readingnotes_jax.training.checkpoint import Checkpointer

SIZE = 64
GARMENTS = (("red", "shirt", "blue", "jeans"), ("black", "t-shirt", "white", "skirt"),
            ("green", "blouse", "black", "pants"), ("blue", "top", "red", "shorts"))
RGB = {"red": (220, 30, 30), "blue": (30, 40, 220), "black": (10, 10, 10),
       "white": (245, 245, 245), "green": (30, 200, 40)}


def _person(i: int) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
  """(photo, labels, sentence, attributes) of generated person `i`: hair, face, upper and
  lower garments in the colours of its sentence, legs below a short garment."""
  upper_colour, upper, lower_colour, lower = GARMENTS[i % len(GARMENTS)]
  labels = np.zeros((SIZE, SIZE), np.uint8)
  left, right = 20 + i % 3, 44 - i % 2
  labels[4:12, left:right] = ccp_fashion.HAIR
  labels[12:20, left + 4:right - 4] = ccp_fashion.FACE
  labels[20:38, left:right] = ccp_fashion.UPPER
  short = lower in ("skirt", "shorts")
  labels[38:50 if short else 62, left:right] = ccp_fashion.LOWER
  if short:
    labels[50:62, left + 2:right - 2] = ccp_fashion.LEGS
  photo = np.full((SIZE, SIZE, 3), 128, np.uint8)
  photo[labels == ccp_fashion.HAIR] = (90, 50, 20)
  photo[(labels == ccp_fashion.FACE) | (labels == ccp_fashion.LEGS)] = (230, 190, 160)
  photo[labels == ccp_fashion.UPPER] = RGB[upper_colour]
  photo[labels == ccp_fashion.LOWER] = RGB[lower_colour]
  attributes = np.array([ccp_fashion.UPPER_GARMENTS.index(upper) + 1,
                         ccp_fashion.COLOURS.index(upper_colour) + 1,
                         ccp_fashion.LOWER_GARMENTS.index(lower) + 1,
                         ccp_fashion.COLOURS.index(lower_colour) + 1], np.int32)
  article = lambda g: "" if g in ccp_fashion.PLURAL_GARMENTS else "a "
  sentence = (f"a woman in a {upper_colour} {upper} and {article(lower)}{lower_colour} "
              f"{lower}")
  return photo, labels, sentence, attributes


def fake_load_split(data_config, split):
  """8 training and 4 test people (`_person`), at 64 px."""
  ids = range(8) if split == "train" else range(8, 12)
  photos, labels, sentences, attributes = zip(*(_person(i) for i in ids))
  train_sentences = [_person(i)[2] for i in range(8)]
  vocabulary = fashion_data.Vocabulary.from_sentences(train_sentences)
  words, lengths = vocabulary.encode_all(sentences)
  labels = np.stack(labels)
  mean = np.stack([_person(i)[0] for i in range(8)]).mean(0) / 255
  return fashion_data.FashionSet(
      labels=labels, shape_conditions=compose.spatial_constraint(labels), words=words,
      lengths=lengths, attributes=np.stack(attributes), attribute_sizes=ccp_fashion.ATTRIBUTES,
      sentences=tuple(sentences), vocabulary=vocabulary, images=np.stack(photos),
      mean_image=mean.astype(np.float32))


@pytest.fixture(scope="module")
def fake_data():
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(fashion_data, "load_split", fake_load_split)
    yield


def _config(**overrides):
  config = ccp_fashiongan.get_config("test")
  config.model.compare_plain = True  # both G_image variants (`:test` trains one).
  config.eval.sentences_per_photo = 2
  for key, value in overrides.items():
    section, name = key.split(".") if "." in key else (None, key)
    (config[section] if section else config)[name] = value
  return config


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


G_EMA_BETA, SHAPE_LR = 0.75, 1e-3


@pytest.fixture(scope="module")
def stepped(fake_data):
  """(task, initial state on the host): one Task, so its jitted steps compile once for the
  step tests below (G_shape at its own learning rate, an average far from G's)."""
  task = train.Task(_config(**{"model.g_ema_beta": G_EMA_BETA,
                               "optimizer.shape_learning_rate": SHAPE_LR}),
                    mesh_lib.make_data_mesh(1))
  return task, jax.device_get(jax.jit(task.init_state)(task.init_key()))


def test_each_phase_trains_only_its_networks(stepped):
  task, state = stepped
  ends = task.ends
  assert [task.phase(p) for p in (0, ends[0] - 1, ends[0], ends[1] - 1, ends[1])] == [0, 0, 1, 1, 2]
  for position, trained in ((0, "coder"), (ends[0], "shape"), (ends[1], "image")):
    new, metrics, info, next_position = task.train_step(state, position, position)
    new = jax.device_get(new)
    assert next_position == position + 1 and info["phase"] == train.PHASES.index(
        {"coder": "design_coding"}.get(trained, trained))
    for part in ("coder", "shape", "image"):
      assert _equal(new[part], state[part]) == (part != trained), (trained, part)
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
    state = new


def test_shape_learning_rate_sizes_the_first_adam_step_of_the_shape_phase_only(stepped):
  """Adam's first step moves each parameter by lr |g| / (|g| + eps) (bias-corrected moments
  of one gradient), the learning rate wherever |g| >> eps: G_shape's largest change is
  `optimizer.shape_learning_rate`, G_image's (the next phase) `optimizer.learning_rate`."""
  task, state = stepped
  assert task.config.optimizer.learning_rate == 2e-4
  for position, part, lr in ((task.ends[0], "shape", SHAPE_LR), (task.ends[1], "image", 2e-4)):
    new, _, info, _ = task.train_step(state, position, position)
    assert info["lr"] == lr
    new = jax.device_get(new)
    before = state[part]["g"] if part == "shape" else state[part]["compositional"]["g"]
    after = new[part]["g"] if part == "shape" else new[part]["compositional"]["g"]
    change = max(float(np.max(np.abs(a - b))) for a, b in
                 zip(jax.tree.leaves(after["params"]), jax.tree.leaves(before["params"])))
    # lr / (1 + eps / |g|): lr within float32 rounding for the largest gradients, far above
    # eps = 1e-8; the change is read as a difference of parameters up to ~1 (BatchNorm
    # scales), each rounded to half an ulp of 1 (2^-24): atol 2^-23.
    np.testing.assert_allclose(change, lr, rtol=1e-5, atol=2.0 ** -23)
    state = new


def test_g_ema_is_the_moving_average_of_g_image_with_its_own_statistics(stepped):
  """model.g_ema_beta: after each image step every G_image's average is params + (average -
  params) x beta, computed here in float64 from the stepped parameters; its BatchNorm running
  averages are updated by a training-mode forward of the new average on that step's batch
  (rebuilt here from the data stream), not G's; the evaluator renders with both (the same
  images as a state whose G holds them, not those of G's own variables, nor of the average's
  parameters with G's statistics). Out-of-range decays are refused."""
  task, state = stepped
  beta = G_EMA_BETA
  as64 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
  average = {v: as64(state["image"][v]["g"]["params"]) for v in task.nets.g_image}
  for position in range(task.ends[1], task.ends[1] + 2):
    before = state
    state, _, _, _ = task.train_step(state, position, position)
    state = jax.device_get(state)
    batch = jax.device_get(task._batch(position, task.config.batch_size,
                                       ("words", "lengths", "labels", "z")))
    d_code = train.design_coding(task.nets, state["coder"]["params"], batch["words"],
                                 batch["lengths"])
    for v in task.nets.g_image:
      params, ema = as64(state["image"][v]["g"]["params"]), state["image"][v]["g_ema"]
      average[v] = jax.tree.map(lambda e, p: p + (e - p) * beta, average[v], params)
      # float32 arithmetic of two updates on values below 2 in magnitude (BatchNorm scales
      # near 1, weights ~0.02): a few roundings of half an ulp of 2 (2^-23) each.
      for got, want in zip(jax.tree.leaves(ema["params"]), jax.tree.leaves(average[v])):
        np.testing.assert_allclose(got, want, rtol=0, atol=2.0 ** -21)
      assert not _equal(ema["params"], params)
      _, updated = task.nets.g_image[v].apply(
          {"params": ema["params"], "batch_stats": before["image"][v]["g_ema"]["batch_stats"]},
          batch["z"], d_code, compose.colour_condition(batch["labels"]),
          compose.region_masks(batch["labels"]), train=True, mutable=["batch_stats"],
          rngs={"dropout": jax.random.fold_in(task.dropout_key, position)})
      # The same float32 forward compiled apart (XLA may order its sums differently): the
      # statistics agree to a few float32 roundings of sums of <= 8 x 32 x 32 terms (batch 8, 64 px).
      for got, want in zip(jax.tree.leaves(ema["batch_stats"]),
                           jax.tree.leaves(updated["batch_stats"])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
      assert not _equal(ema["batch_stats"], state["image"][v]["g"]["batch_stats"])

  # What the evaluator, the figures and the edit command render with (float images: after
  # two steps they are all near the mean image, the same in uint8).
  generation, test = train.Generation(task.nets), task.test_set
  rows = np.arange(4) % len(test)
  variant = next(iter(task.nets.g_image))
  render = lambda s: generation(
      s, test.words[rows], test.lengths[rows], test.shape_conditions[rows],
      train.noise(0, 0, 0, (len(rows), model.NOISE_SIZE)),
      train.noise(0, 1, 0, (len(rows), model.NOISE_SIZE)), train.inference_key(0, 0, 0),
      [variant])[1][variant]
  plain = {v: {k: x for k, x in gan.items() if k != "g_ema"} for v, gan in state["image"].items()}
  with_g = lambda **g: {v: {**gan, "g": {**gan["g"], **{k: state["image"][v]["g_ema"][k]
                                                        for k in g}}}
                        for v, gan in plain.items()}
  rendered = render(state)
  np.testing.assert_array_equal(rendered, render({**state, "image": with_g(params=1,
                                                                           batch_stats=1)}))
  assert not np.array_equal(rendered, render({**state, "image": plain}))
  assert not np.array_equal(rendered, render({**state, "image": with_g(params=1)}))
  for bad in (-0.1, 1.0):
    with pytest.raises(UserError, match="g_ema_beta"):
      train.Task(_config(**{"model.g_ema_beta": bad}), mesh_lib.make_data_mesh(1))


def _bce(logits: np.ndarray, target: float) -> float:
  logits = np.asarray(logits, np.float64)
  p = 1 / (1 + np.exp(-logits))
  return float(-np.mean(target * np.log(p) + (1 - target) * np.log(1 - p)))


def test_shape_discriminator_loss_is_the_papers_weighted_bce(stepped):
  """The D step's three terms are BCE of D on (real map, its condition), (another record's
  map and condition, this text) and G's map, each from a separate train-mode forward
  chained through the BatchNorm statistics; loss = real + 0.1 wrong + 0.9 fake."""
  task, state = stepped
  step = task.ends[0]
  batch = jax.device_get(task._batch(step, task.config.batch_size,  # pylint: disable=protected-access
                                     ("words", "lengths", "labels", "wrong_labels",
                                      "shape_condition", "wrong_shape_condition", "z")))
  nets, gan, coder = task.nets, state["shape"], state["coder"]
  _, metrics, _, _ = task.train_step(state, step, step)
  metrics = jax.device_get(metrics)
  d_code = nets.coder.apply({"params": coder["params"]}, batch["words"], batch["lengths"])[0]
  fake, _ = nets.g_shape.apply(gan["g"], batch["z"], d_code, batch["shape_condition"],
                               train=True, mutable=["batch_stats"])
  one_hot = lambda labels: np.eye(7, dtype=np.float32)[labels]
  stats, logits = gan["d"]["batch_stats"], {}
  for name, x, condition in (("real", one_hot(batch["labels"]), batch["shape_condition"]),
                             ("wrong", one_hot(batch["wrong_labels"]),
                              batch["wrong_shape_condition"]),
                             ("fake", fake, batch["shape_condition"])):
    logits[name], updated = nets.d_shape.apply(
        {"params": gan["d"]["params"], "batch_stats": stats}, x, d_code, condition, train=True,
        mutable=["batch_stats"])
    stats = updated["batch_stats"]
  # The logits here are recomputed outside the jitted step (other fusions): float32 rounding
  # of ~1e-7 relative per layer over D's ~10 layers and G's ~12, far below the 1e-4 bar, while
  # a wrong input, condition or weight changes the terms by > 1e-2.
  want = {name: _bce(logits[name], 1.0 if name == "real" else 0.0) for name in logits}
  for name, value in want.items():
    np.testing.assert_allclose(metrics[f"shape_d_{name}"], value, rtol=1e-4)
  np.testing.assert_allclose(metrics["shape_d_loss"],
                             want["real"] + 0.1 * want["wrong"] + 0.9 * want["fake"], rtol=1e-4)


# The edit command -------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_workdir(fake_data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("fashiongan_run")
  runner.train(_config(), str(workdir), train.make_task)
  return workdir


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
  """A generated person as photo.png and its CCP label file (59 CCP ids)."""
  import PIL.Image  # pylint: disable=import-outside-toplevel
  import scipy.io  # pylint: disable=import-outside-toplevel
  from readingnotes_jax.data import ccp  # pylint: disable=import-outside-toplevel
  folder = tmp_path_factory.mktemp("photo")
  photo, labels, _, _ = _person(1)
  photo, labels = photo[:, 8:56], labels[:, 8:56]  # not square
  raw = np.zeros(labels.shape, np.uint8)
  for label, name in ((ccp_fashion.HAIR, "hair"), (ccp_fashion.FACE, "skin"),
                      (ccp_fashion.UPPER, "t-shirt"), (ccp_fashion.LOWER, "skirt"),
                      (ccp_fashion.LEGS, "skin")):
    raw[labels == label] = ccp.CLASS_NAMES.index(name)
  PIL.Image.fromarray(photo).save(folder / "photo.png")
  scipy.io.savemat(folder / "photo.mat", {"groundtruth": raw})
  scipy.io.savemat(folder / "small.mat", {"groundtruth": raw[:-4]})
  return folder


def test_edit_writes_the_new_photo_its_segmentation_and_a_side_by_side(
    finished_workdir, photo_files, tmp_path, capsys):
  out = tmp_path / "new.png"
  code = edit.main(["--workdir", str(finished_workdir), "--photo", str(photo_files / "photo.png"),
                    "--labels", str(photo_files / "photo.mat"), "--text",
                    "a woman in a red shirt and blue jeans", "--out", str(out), "--postprocess"])
  assert code == 0, capsys.readouterr().err
  import PIL.Image  # pylint: disable=import-outside-toplevel
  sizes = {p.name: PIL.Image.open(p).size for p in sorted(tmp_path.iterdir())}
  assert sizes == {"new.png": (SIZE, SIZE), "new_segmentation.png": (SIZE, SIZE),
                   "new_side_by_side.png": ((4 * (SIZE + 1) + 1) * 4, (SIZE + 2) * 4)}


def test_the_workdir_keeps_what_the_edit_command_needs_of_the_data(
    finished_workdir, photo_files, tmp_path, monkeypatch):
  """fashiongan_inference.npz holds the training split's vocabulary, attributes, mean image and
  first sentence; with it the edit command reads no data and writes what it writes with the
  data (a workdir without the file, as older ones are)."""
  want = fake_load_split(None, "train")
  saved = fashion_data.read_inference(finished_workdir / fashion_data.INFERENCE_FILE)
  assert saved.vocabulary == want.vocabulary and saved.attribute_sizes == want.attribute_sizes
  assert saved.sentences == want.sentences[:1]
  np.testing.assert_array_equal(saved.mean_image, want.mean_image)
  older = tmp_path / "older"
  shutil.copytree(finished_workdir, older)
  (older / fashion_data.INFERENCE_FILE).unlink()
  args = ["--photo", str(photo_files / "photo.png"), "--labels", str(photo_files / "photo.mat"),
          "--text", "a woman in a green blouse and black pants"]
  assert edit.main(["--workdir", str(older), *args, "--out", str(tmp_path / "data.png")]) == 0

  def no_data(data_config, split):
    raise UserError("Clothing Co-Parsing not found")
  monkeypatch.setattr(fashion_data, "load_split", no_data)
  assert edit.main(["--workdir", str(finished_workdir), *args,
                    "--out", str(tmp_path / "saved.png")]) == 0
  for suffix in ("", "_segmentation", "_side_by_side"):
    assert ((tmp_path / f"saved{suffix}.png").read_bytes()
            == (tmp_path / f"data{suffix}.png").read_bytes()), suffix
  assert edit.main(["--workdir", str(older), *args, "--out", str(tmp_path / "x.png")]) == 2


@pytest.mark.parametrize("case", ["no labels", "empty text", "unknown words", "labels of another size",
                                  "stopped workdir", "another trainer",
                                  "segmenter of another trainer", "negative seed",
                                  "out is the photo", "corrupt inference file"])
def test_edit_bad_input_is_one_line_exit_2_and_writes_nothing(
    case, finished_workdir, photo_files, tmp_path, capsys):
  out = tmp_path / "out" / "new.png"
  out.parent.mkdir()
  args = {"--workdir": str(finished_workdir), "--photo": str(photo_files / "photo.png"),
          "--labels": str(photo_files / "photo.mat"), "--text": "a woman in a red skirt",
          "--out": str(out)}
  message = {"no labels": "--labels P.mat", "empty text": "--text is empty",
             "unknown words": "no known word \\(unknown: purple, kimono\\)",
             "labels of another size": "labels are 60x48 but the photo is 64x48",
             "stopped workdir": "stopped in the shape phase",
             "another trainer": "trained by 'pspnet', not fashiongan",
             "segmenter of another trainer": "trained by 'fashiongan', not pspnet",
             "negative seed": "--seed -3: give a non-negative integer",
             "out is the photo": "would overwrite the input .*new.png",
             "corrupt inference file": "fashiongan_inference.npz: unreadable"}[case]
  if case == "no labels":
    del args["--labels"]
  elif case == "empty text":
    args["--text"] = "  "
  elif case == "unknown words":
    args["--text"] = "purple kimono"
  elif case == "labels of another size":
    args["--labels"] = str(photo_files / "small.mat")
  elif case == "stopped workdir":
    # The finished run's workdir cut back to its step-4 checkpoint (in the shape phase): what
    # a run stopped there leaves, without a third FashionGAN run (25 s).
    stopped = tmp_path / "stopped"
    shutil.copytree(finished_workdir, stopped)
    for folder in (stopped / "checkpoints").iterdir():
      if folder.name.isdigit() and int(folder.name) > 4:
        shutil.rmtree(folder)
    assert Checkpointer(stopped / "checkpoints").latest_step() == 4
    args["--workdir"] = str(stopped)
  elif case == "another trainer":
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"trainer": "pspnet"}')
    args["--workdir"] = str(other)
  elif case == "segmenter of another trainer":
    del args["--labels"]
    args["--segmenter"] = str(finished_workdir)
  elif case == "negative seed":
    args["--seed"] = "-3"
  elif case == "corrupt inference file":
    corrupt = tmp_path / "corrupt"
    shutil.copytree(finished_workdir, corrupt)
    (corrupt / fashion_data.INFERENCE_FILE).write_bytes(b"PK\x03\x04 cut short")
    args["--workdir"] = str(corrupt)
  elif case == "out is the photo":
    shutil.copy(photo_files / "photo.png", out)
    args["--photo"] = str(out)
  capsys.readouterr()  # output of the fixtures, not of the command.
  code = edit.main([item for pair in args.items() for item in pair])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("edit: error:"), err
  import re  # pylint: disable=import-outside-toplevel
  assert re.search(message, err[0]), err[0]
  if case == "out is the photo":
    assert list(out.parent.iterdir()) == [out]
    assert out.read_bytes() == (photo_files / "photo.png").read_bytes()
  else:
    assert list(out.parent.iterdir()) == []


# A PSPNet segmenter (experiments/configs/pspnet/ccp_pspnet50.py): the edit command's
# --segmenter and the stream's fashiongan processor ------------------------------------


@pytest.fixture(scope="module")
def segmenter_workdir(tmp_path_factory):
  """PSPNet's `:test` run of ccp_pspnet50 on a CCP-layout tree of generated people (CCP ids)."""
  import PIL.Image  # pylint: disable=import-outside-toplevel
  import scipy.io  # pylint: disable=import-outside-toplevel
  from experiments.configs.pspnet import ccp_pspnet50  # pylint: disable=import-outside-toplevel
  from readingnotes_jax.data import ccp  # pylint: disable=import-outside-toplevel
  from readingnotes_jax.pspnet import train as pspnet_train  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("ccp_tree")
  (root / "photos").mkdir()
  (root / "annotations" / "pixel-level").mkdir(parents=True)
  for i, number in enumerate((1, 2, 3, 4, 801)):
    photo, labels, _, _ = _person(i)
    raw = np.zeros(labels.shape, np.uint8)
    for label, name in ((ccp_fashion.HAIR, "hair"), (ccp_fashion.FACE, "skin"),
                        (ccp_fashion.UPPER, "shirt"), (ccp_fashion.LOWER, "jeans"),
                        (ccp_fashion.LEGS, "skin")):
      raw[labels == label] = ccp.CLASS_NAMES.index(name)
    PIL.Image.fromarray(photo).save(root / "photos" / f"{number:04d}.jpg")
    scipy.io.savemat(root / "annotations" / "pixel-level" / f"{number:04d}.mat",
                     {"groundtruth": raw})
  config = ccp_pspnet50.get_config("test")
  config.data.path = str(root)
  workdir = tmp_path_factory.mktemp("pspnet_ccp_run")
  runner.train(config, str(workdir), pspnet_train.make_task)
  return workdir


def test_edit_with_a_segmenter_uses_its_labels_mapped_to_the_seven_classes(
    finished_workdir, segmenter_workdir, photo_files, tmp_path, capsys):
  """S0 of the side-by-side is the segmenter's prediction with CCP's 59 ids mapped to the 7
  classes (`ccp_fashion.fashion_labels`, tested on its own in tests/data), padded and resized
  as the photo is."""
  import PIL.Image  # pylint: disable=import-outside-toplevel
  from readingnotes_jax import predictors  # pylint: disable=import-outside-toplevel
  from readingnotes_jax.data import parts  # pylint: disable=import-outside-toplevel
  from readingnotes_jax.fashiongan import figures as fashion_figures  # pylint: disable=import-outside-toplevel
  out = tmp_path / "new.png"
  code = edit.main(["--workdir", str(finished_workdir), "--photo", str(photo_files / "photo.png"),
                    "--segmenter", str(segmenter_workdir), "--text", "a woman in a red shirt",
                    "--out", str(out)])
  assert code == 0, capsys.readouterr().err
  photo = parts.read_rgb(photo_files / "photo.png")
  predict, class_names, _ = predictors.load("segmenter", "pspnet", str(segmenter_workdir))
  assert len(class_names) == 59
  raw = np.asarray(predict(photo)).astype(np.uint8)
  _, want = ccp_fashion.square_resize(photo, ccp_fashion.fashion_labels(raw), SIZE)
  side = np.asarray(PIL.Image.open(tmp_path / "new_side_by_side.png").convert("RGB"))
  panel = side[::4, ::4][1:1 + SIZE, 1 + (SIZE + 1):1 + (SIZE + 1) + SIZE]  # the S0 panel
  np.testing.assert_array_equal(panel, fashion_figures.colour_labels(want))


def test_stream_processor_restyles_each_frame_with_the_pages_sentence(
    finished_workdir, segmenter_workdir, photo_files):
  """[frame's square | new photo] + the sentence; the new photo is `edit.edit` of the frame
  with the segmenter's S0 and the page's sentence; a sentence it cannot read is refused and
  the old one kept."""
  from readingnotes_jax.data import parts  # pylint: disable=import-outside-toplevel
  from readingnotes_jax.stream import processors  # pylint: disable=import-outside-toplevel
  processor = processors.load("fashiongan", str(finished_workdir),
                              segmenter=str(segmenter_workdir))
  assert processor.sentence.text == fake_load_split(None, "train").sentences[0]
  processor.sentence.set("a woman in a blue top and red shorts")
  with pytest.raises(UserError, match="unknown: purple, kimono"):
    processor.sentence.set("purple kimono")
  assert processor.sentence.text == "a woman in a blue top and red shorts"
  frame = parts.read_rgb(photo_files / "photo.png")
  out = processor.fn(frame)
  assert out.shape == (256 + 28, 512, 3) and out.dtype == np.uint8
  task, state = edit.load_workdir(str(finished_workdir))
  labels = edit.load_segmenter(str(segmenter_workdir))(frame)
  want = edit.edit(task, state, frame, labels, "a woman in a blue top and red shorts",
                   postprocess=True)
  import cv2  # pylint: disable=import-outside-toplevel
  left = cv2.resize(want["photo"], (256, 256), interpolation=cv2.INTER_AREA)
  right = cv2.resize(want["image"], (256, 256), interpolation=cv2.INTER_LINEAR)
  np.testing.assert_array_equal(out[:256, :256], left)
  # The same jitted program on the same inputs; 1 level of uint8 for float32 rounding at a
  # .5 boundary of the conversion.
  assert np.abs(out[:256, 256:].astype(int) - right.astype(int)).max() <= 1


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
  """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), float64: tr (S_a S_b)^(1/2) as the
  sum of the square roots of the eigenvalues of the symmetric S_a^(1/2) S_b S_a^(1/2) (the
  same as S_a S_b's), which stays exact when a covariance is singular."""
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  w, v = np.linalg.eigh(s_a)
  root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)))
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b) - 2 * trace_root)


def test_evaluator_reports_fid_of_the_inception_features_when_weights_are_given(
    finished_workdir, monkeypatch):
  """With `fid_weights`, `fid` (and `plain_fid`) is the Frechet distance between the features
  of the generated images and of the paired test photos; the Inception network is replaced
  by a stand-in whose features are each image's channel means."""
  from readingnotes_jax.metrics import inception  # pylint: disable=import-outside-toplevel

  def features(batch):
    batch = np.asarray(batch, np.float64)
    return batch.mean((1, 2)), np.zeros((len(batch), 2))

  monkeypatch.setattr(inception, "load_fid_inception", lambda path: (None, None))
  monkeypatch.setattr(inception, "inception_extractor", lambda net, variables: features)
  config = runner.read_config(str(finished_workdir))
  config.fid_weights = "stand-in.npz"
  task = train.Task(config, mesh_lib.make_data_mesh(1))
  state, _ = runner.restore_latest(str(finished_workdir), runner.abstract_state(task))
  evaluator = train.FashionEvaluation(task)
  scores = evaluator.run(state, step=task.total, position=task.total, final=True)
  photos = task.test_set.images[evaluator.pairs[:, 0]]
  scale = lambda images: images.astype(np.float64) / 127.5 - 1  # uint8 -> [-1, 1]
  for prefix, variant in (("", "compositional"), ("plain_", "plain")):
    want = _frechet(features(scale(evaluator.last["images"][variant]))[0],
                    features(scale(photos))[0])
    # float64; scipy's sqrtm of a singular 3 x 3 product (few distinct images here) is good to
    # ~sqrt(2^-52) = 1.5e-8 relative, the reference's eigenvalues to ~1e-15.
    np.testing.assert_allclose(scores[f"{prefix}fid"], want, rtol=1e-6)
  with pytest.raises(Exception, match="eval.batch_norm='median'"):
    train.Generation(task.nets, "median")
