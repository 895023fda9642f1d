"""FashionGAN's data: vocabulary, the release's file formats (tiny generated files), the
batch stream, the CCP stand-in (59 -> 7 mapping, skin split, sentences) and real CCP photos."""
import pathlib
import types

import numpy as np
import PIL.Image
import pytest
import scipy.io

from readingnotes_jax.data import ccp, ccp_fashion, segmentation, tfds_local
from readingnotes_jax.errors import UserError
from readingnotes_jax.fashiongan import compose, data

_RNG = np.random.default_rng(0)
CCP_ID = {name: k for k, name in enumerate(ccp.CLASS_NAMES)}


# Words -----------------------------------------------------------------------


def test_tokenize_and_vocabulary():
  assert data.tokenize("The lady was wearing a RED t-shirt, and jeans.") == [
      "the", "lady", "was", "wearing", "a", "red", "t-shirt", "and", "jeans"]
  vocabulary = data.Vocabulary.from_sentences(["a woman in a red dress", "a woman in jeans"])
  # Most frequent first (a: 3, in / woman: 2), ties alphabetical.
  assert vocabulary.words == ("<unk>", "a", "in", "woman", "dress", "jeans", "red")
  np.testing.assert_array_equal(vocabulary.encode("A woman in a green dress"), [1, 3, 2, 1, 0, 4])
  assert vocabulary.unknown_words("a woman in a green kimono") == ["green", "kimono"]
  ids, lengths = vocabulary.encode_all(["red dress", "a woman in jeans"])
  np.testing.assert_array_equal(ids, [[6, 4, 0, 0], [1, 3, 2, 5]])
  np.testing.assert_array_equal(lengths, [2, 4])


@pytest.mark.parametrize("sentence, message", [
    ("", "has no words"), (" ... ", "has no words"),
    ("purple kimono", r"no known word \(unknown: purple, kimono\)")])
def test_bad_sentences_are_one_line_errors(sentence, message):
  vocabulary = data.Vocabulary.from_sentences(["a woman in a red dress"])
  with pytest.raises(UserError, match=message) as error:
    vocabulary.encode(sentence)
  assert "\n" not in str(error.value)


def test_release_vocabulary_from_engj_and_codej():
  sentences = ["the lady wore a red dress", "a man in a blue shirt", "the lady", "bad line"]
  codes = [np.array([5, 2, 9, 1, 3, 4]), np.array([1, 6, 7, 1, 8, 10]), np.array([5, 2]),
           np.array([11])]  # The last has 2 words for 1 id: skipped.
  vocabulary = data.release_vocabulary(sentences, codes)
  assert vocabulary.words == ("<unk>", "a", "lady", "red", "dress", "the", "man", "in", "blue",
                              "wore", "shirt")
  np.testing.assert_array_equal(vocabulary.encode("the lady wore a blue dress"),
                                [5, 2, 9, 1, 8, 4])


# The release's files ---------------------------------------------------------

N = 5
SIZE = 8


def _cell(items):
  cell = np.empty((len(items), 1), object)
  for k, item in enumerate(items):
    cell[k, 0] = item
  return cell


@pytest.fixture(name="release", scope="module")
def release_fixture(tmp_path_factory):
  """A data_release folder with N = 5 records of SIZE x SIZE, in the release's layouts."""
  root = tmp_path_factory.mktemp("data_release")
  for sub in ("benchmark", "test_phase_inputs", "supervision_signals"):
    (root / sub).mkdir()
  scipy.io.savemat(root / data.INDICES_FILE, {
      "train_ind": np.array([[1, 3, 4]], float), "test_ind": np.array([[5], [2]], float),
      "test_set_pair_ind": np.array([[1], [4]], float)})
  sentences = ["a lady in a red dress", "a man in a blue shirt", "a lady in red", "a man",
               "a lady in a blue dress"]
  vocab = {"a": 1, "lady": 2, "in": 3, "red": 4, "dress": 5, "man": 6, "blue": 7, "shirt": 8}
  codes = [np.array([[vocab[w]] for w in s.split()], float) for s in sentences]
  scipy.io.savemat(root / data.LANGUAGE_FILE, {
      "codeJ": _cell(codes), "engJ": _cell([np.array([s]) for s in sentences]),
      "cate_new": np.array([[1], [19], [2], [3], [1]], float),
      "color_": np.array([[5], [6], [5], [1], [17]], float),
      "gender_": np.array([[0], [1], [0], [1], [0]], float),
      "sleeve_": np.array([[1], [2], [3], [4], [1]], float)})
  # sr1_8.mat d: 8 x 8 x 4 x N, channels hair, face, body, background; value = record +
  # channel / 10 + row / 100 + column / 1000 to trace the axes.
  r, c, ch, n = np.meshgrid(*(np.arange(s) for s in (8, 8, 4, N)), indexing="ij")
  scipy.io.savemat(root / data.CONSTRAINTS_FILE, {"d": n + ch / 10 + r / 100 + c / 1000})
  scipy.io.savemat(root / data.CODINGS_FILE,
                   {"hn2": np.arange(N * 100, dtype=float).reshape(N, 100)})
  return root


@pytest.fixture(name="release_h5", scope="module")
def release_h5_fixture(release):
  """G1.h5 and G2.h5 for the same 5 records (written with h5py)."""
  h5py = pytest.importorskip("h5py", reason="h5py not installed: pip install h5py==3.16.0")
  root = release
  labels = _RNG.integers(0, 7, (N, SIZE, SIZE))
  images = _RNG.integers(0, 256, (N, SIZE, SIZE, 3)).astype(np.float64) / 255
  mean = images.mean(axis=0)
  with h5py.File(root / data.G1_FILE, "w") as f:
    f["/b_"] = labels[:, None].astype(np.float64)  # N x 1 x H x W, as sr1/train.lua reads it.
  with h5py.File(root / data.G2_FILE, "w") as f:  # W and H swapped (ih1/train.lua permutes).
    f["/ih"] = (images - mean).transpose(0, 3, 2, 1).astype(np.float32)
    f["/ih_mean"] = mean.transpose(2, 1, 0).astype(np.float32)
    f["/b_"] = labels.transpose(0, 2, 1)[:, None].astype(np.float64)
  return root, labels, images, mean


def test_read_release_mat_files(release):
  root = release
  indices = data.read_indices(root / data.INDICES_FILE)
  np.testing.assert_array_equal(indices["train"], [0, 2, 3])
  np.testing.assert_array_equal(indices["test"], [4, 1])
  np.testing.assert_array_equal(indices["test_pair"], [0, 3])
  language = data.read_language(root / data.LANGUAGE_FILE)
  assert language.sentences[1] == "a man in a blue shirt"
  np.testing.assert_array_equal(language.codes[1], [1, 6, 3, 1, 7, 8])
  np.testing.assert_array_equal(language.attributes[:, 0], [0, 18, 1, 2, 0])  # cate_new - 1
  np.testing.assert_array_equal(language.attributes[:, 2], [0, 1, 0, 1, 0])  # gender_ as is
  np.testing.assert_array_equal(language.attributes[:, 3], [0, 1, 2, 3, 0])  # sleeve_ - 1
  constraints = data.read_spatial_constraints(root / data.CONSTRAINTS_FILE)
  assert constraints.shape == (N, 8, 8, 4)
  # Record 3, row 2, column 5: channels background, hair, face, body = file channels 3, 0, 1, 2.
  np.testing.assert_allclose(constraints[3, 2, 5], 3 + np.array([3, 0, 1, 2]) / 10 + 0.025,
                             atol=1e-6)
  np.testing.assert_array_equal(data.read_codings(root / data.CODINGS_FILE)[2, :3],
                                [200, 201, 202])


def test_read_release_h5_files(release_h5):
  root, labels, images, mean = release_h5
  np.testing.assert_array_equal(data.read_g1(root / data.G1_FILE), labels)
  got_images, got_labels, got_mean = data.read_g2(root / data.G2_FILE)
  np.testing.assert_array_equal(got_labels, labels)
  np.testing.assert_allclose(got_mean, mean, atol=1e-7)
  # uint8 from (ih + mean) in [0, 1]: the float32 round trip moves values by < 1e-6 x 255.
  np.testing.assert_array_equal(got_images, np.rint(images * 255).astype(np.uint8))


def test_load_deepfashion(release_h5):
  root, labels, images, mean = release_h5
  train = data.load_deepfashion(root, "train")
  np.testing.assert_array_equal(train.labels, labels[[0, 2, 3]])
  np.testing.assert_array_equal(train.images, np.rint(images[[0, 2, 3]] * 255))
  np.testing.assert_array_equal(train.words, [[1, 2, 3, 1, 4, 5], [1, 2, 3, 4, 0, 0],
                                              [1, 6, 0, 0, 0, 0]])
  np.testing.assert_array_equal(train.lengths, [6, 4, 2])
  np.testing.assert_array_equal(train.codings[:, 0], [0, 200, 300])
  assert train.sentences[2] == "a man" and train.attribute_sizes[1] == ("colour", 17)
  assert train.vocabulary.words[1:9] == ("a", "lady", "in", "red", "dress", "man", "blue",
                                         "shirt")
  test = data.load_deepfashion(root, "test")
  assert len(test) == 2 and test.sentences[0] == "a lady in a blue dress"


def test_bad_release_files(tmp_path):
  scipy.io.savemat(tmp_path / "ind.mat", {"train_ind": np.array([[1]])})
  with pytest.raises(UserError, match="no variable test_ind, test_set_pair_ind"):
    data.read_indices(tmp_path / "ind.mat")
  (tmp_path / "broken.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage")
  with pytest.raises(UserError, match="unreadable .mat file"):
    data.read_codings(tmp_path / "broken.mat")
  with pytest.raises(UserError, match="not found"):
    data.read_language(tmp_path / "language_original.mat")
  scipy.io.savemat(tmp_path / "sr1_8.mat", {"d": np.zeros((8, 8, 3, 2))})
  with pytest.raises(UserError, match="8 x 8 x 4 x N"):
    data.read_spatial_constraints(tmp_path / "sr1_8.mat")


def test_bad_release_h5_files(tmp_path):
  h5py = pytest.importorskip("h5py", reason="h5py not installed: pip install h5py==3.16.0")
  with h5py.File(tmp_path / "G1.h5", "w") as f:
    f["/b_"] = np.full((2, 1, 4, 4), 9.0)
  with pytest.raises(UserError, match="outside the labels 0..6"):
    data.read_g1(tmp_path / "G1.h5")
  with h5py.File(tmp_path / "G2.h5", "w") as f:
    f["/ih"] = np.full((1, 3, 4, 4), 200.0, np.float32)
    f["/ih_mean"] = np.zeros((3, 4, 4), np.float32)
    f["/b_"] = np.zeros((1, 1, 4, 4))
  with pytest.raises(UserError, match="not \\[0, 1\\]"):
    data.read_g2(tmp_path / "G2.h5")


# The batch stream ------------------------------------------------------------


def _fashion_set(count=5, size=4):
  labels = _RNG.integers(0, 7, (count, size, size)).astype(np.uint8)
  vocabulary = data.Vocabulary.from_sentences(["a woman in a red dress"])
  words, lengths = vocabulary.encode_all(["a woman in a red dress"] * count)
  return data.FashionSet(
      labels=labels, shape_conditions=compose.spatial_constraint(labels), words=words,
      lengths=lengths, attributes=np.arange(count)[:, None].astype(np.int32),
      attribute_sizes=(("record", count),), sentences=("a woman in a red dress",) * count,
      vocabulary=vocabulary, images=_RNG.integers(0, 256, (count, size, size, 3), np.uint8),
      mean_image=np.full((size, size, 3), 0.25, np.float32))


def test_batch_is_a_function_of_seed_and_index():
  fashion_set = _fashion_set()
  first = data.batch(fashion_set, 3, 2, 4)
  again = data.batch(fashion_set, 3, 2, 4)
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  # Positions 8..11 of the stream: batch 4 of size 2 holds positions 8, 9.
  halves = data.batch(fashion_set, 3, 4, 2)
  np.testing.assert_array_equal(halves["labels"], first["labels"][:2])
  np.testing.assert_array_equal(halves["wrong_labels"], first["wrong_labels"][:2])
  assert not np.array_equal(data.batch(fashion_set, 4, 2, 4)["attributes"], first["attributes"])


def test_batch_epochs_wrong_pairs_and_images():
  fashion_set = _fashion_set()
  epoch = np.concatenate([data.batch(fashion_set, 0, i, 1)["attributes"][:, 0] for i in range(5)])
  assert sorted(epoch) == [0, 1, 2, 3, 4]  # Each record once per epoch.
  out = data.batch(fashion_set, 0, 0, 64)
  records = out["attributes"][:, 0]
  wrong = np.array([np.flatnonzero((fashion_set.labels == w).all(axis=(1, 2)))[0]
                    for w in out["wrong_labels"]])
  assert np.all(wrong != records) and len(set(wrong)) == 5
  np.testing.assert_array_equal(out["wrong_shape_condition"], fashion_set.shape_conditions[wrong])
  np.testing.assert_allclose(out["image"], fashion_set.images[records] / 255 - 0.25, atol=1e-7)
  assert out["image"].dtype == np.float32 and out["labels"].dtype == np.int32
  assert "coding" not in out
  with pytest.raises(UserError, match="at least 2"):
    data.batch(_fashion_set(count=1), 0, 0, 2)


# The CCP stand-in ------------------------------------------------------------


def test_every_ccp_label_maps_to_one_class():
  assert ccp_fashion.CCP_TO_FASHION.shape == (59,)
  assert set(ccp_fashion.CCP_TO_FASHION[np.arange(59) != CCP_ID["skin"]]) <= set(range(7))
  expected = {"null": 0, "hair": 1, "hat": 1, "sunglasses": 2, "shirt": 3, "scarf": 3,
              "dress": 4, "skirt": 4, "bag": 4, "belt": 4, "shoes": 5, "stockings": 5,
              "bracelet": 6, "gloves": 6}
  assert {name: int(ccp_fashion.CCP_TO_FASHION[CCP_ID[name]]) for name in expected} == expected


def _person(right_arm_joined=False):
  """A 40 x 30 CCP map: hair, face and neck, upper clothes from row 13, a left arm, a skirt
  (rows 25-30), legs (rows 31-37) and shoes; optionally a right arm joined to the neck."""
  raw = np.zeros((40, 30), np.uint8)
  raw[2:7, 12:19] = CCP_ID["hair"]
  raw[6:13, 13:18] = CCP_ID["skin"]  # Face (touches the hair).
  raw[13:25, 8:23] = CCP_ID["shirt"]
  raw[13:15, 14:17] = CCP_ID["skin"]  # Neck, inside the face's columns.
  raw[14:27, 5:8] = CCP_ID["skin"]  # Left arm, alone.
  raw[25:31, 9:22] = CCP_ID["skirt"]
  raw[31:38, 11:14] = raw[31:38, 16:19] = CCP_ID["skin"]
  raw[38:40, 10:14] = raw[38:40, 16:20] = CCP_ID["shoes"]
  if right_arm_joined:
    raw[13, 17:25] = CCP_ID["skin"]  # Shoulder from the neck ...
    raw[13:27, 23:25] = CCP_ID["skin"]  # ... down the right arm.
  return raw


def test_skin_split_by_adjacency_and_position():
  raw = _person()
  want = ccp_fashion.CCP_TO_FASHION[np.where(raw == CCP_ID["skin"], 0, raw)].copy()
  want[6:13, 13:18] = want[13:15, 14:17] = ccp_fashion.FACE
  want[14:27, 5:8] = ccp_fashion.ARMS  # Centroid row 20.5 above the skirt's middle, 28.
  want[31:38, 11:14] = want[31:38, 16:19] = ccp_fashion.LEGS
  np.testing.assert_array_equal(ccp_fashion.fashion_labels(raw), want)


def test_neck_joined_to_an_arm_goes_with_the_arm():
  raw = _person(right_arm_joined=True)
  got = ccp_fashion.fashion_labels(raw)
  assert np.all(got[6:13, 13:18] == ccp_fashion.FACE)
  # The piece below the face's top-of-shirt cut (row 13) reaches columns 14-24, wider than
  # the face (13-17): neck, shoulder and arm are one arm.
  assert np.all(got[13:15, 14:17] == ccp_fashion.ARMS)
  assert np.all(got[13:27, 23:25] == ccp_fashion.ARMS)


def test_skin_without_hair_or_lower_garment():
  """No hair: the highest sizeable skin component is the face; no lower garment: legs are
  below the person's middle row."""
  raw = np.zeros((20, 10), np.uint8)
  raw[1:4, 3:6] = CCP_ID["skin"]
  raw[4:10, 2:8] = CCP_ID["shirt"]
  raw[5:9, 0:2] = CCP_ID["skin"]  # Centroid 7 < middle (1 + 18) / 2 = 9.5.
  raw[12:18, 4:6] = CCP_ID["skin"]
  got = ccp_fashion.fashion_labels(raw)
  assert np.all(got[1:4, 3:6] == ccp_fashion.FACE)
  assert np.all(got[5:9, 0:2] == ccp_fashion.ARMS) and np.all(got[12:18, 4:6] == ccp_fashion.LEGS)


@pytest.mark.parametrize("rgb, name", [
    ((0, 0, 0), "black"), ((60, 60, 60), "black"), ((128, 128, 128), "grey"),
    ((255, 255, 255), "white"), ((200, 20, 20), "red"), ((255, 182, 193), "pink"),
    ((240, 100, 180), "pink"), ((255, 140, 0), "orange"), ((250, 220, 30), "yellow"),
    ((30, 160, 60), "green"), ((20, 40, 200), "blue"), ((40, 50, 80), "blue"),
    ((120, 40, 160), "purple"), ((110, 60, 20), "brown"), ((230, 210, 170), "beige")])
def test_colour_names(rgb, name):
  assert ccp_fashion.colour_name(rgb) == name


def test_describe_names_the_largest_garments_and_their_colours():
  raw = np.zeros((20, 10), np.uint8)
  photo = np.zeros((20, 10, 3), np.uint8)
  raw[2:8, 2:8], photo[2:8, 2:8] = CCP_ID["shirt"], (20, 40, 200)
  raw[2:4, 8:10] = CCP_ID["blouse"]  # Smaller than the shirt.
  raw[8:16, 2:8], photo[8:16, 2:8] = CCP_ID["pants"], (10, 10, 10)
  photo[8, 2] = (255, 255, 255)  # One odd pixel: the median ignores it.
  sentence, attributes = ccp_fashion.describe(raw, photo)
  assert sentence == "a woman in a blue shirt and black pants"
  upper, lower = ccp_fashion.UPPER_GARMENTS, ccp_fashion.LOWER_GARMENTS
  colours = ccp_fashion.COLOURS
  np.testing.assert_array_equal(attributes, [upper.index("shirt") + 1, colours.index("blue") + 1,
                                             lower.index("pants") + 1, colours.index("black") + 1])
  raw[:], photo[:] = 0, 0
  raw[5:15, 3:7], photo[5:15, 3:7] = CCP_ID["dress"], (255, 140, 0)
  sentence, attributes = ccp_fashion.describe(raw, photo)
  assert sentence == "a woman in an orange dress"
  np.testing.assert_array_equal(attributes, [0, 0, lower.index("dress") + 1,
                                             colours.index("orange") + 1])
  raw, photo = np.zeros((40, 20), np.uint8), np.zeros((40, 20, 3), np.uint8)
  raw[0, 0] = CCP_ID["dress"]  # 1 pixel of 800: below MIN_GARMENT_FRACTION (4 pixels).
  assert ccp_fashion.describe(raw, photo)[0] == "a woman"


def test_square_resize_pads_and_samples_centres():
  photo = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(4, 2, 3) * 10
  labels = np.array([[1, 2], [3, 4], [5, 6], [0, 1]], np.uint8)
  image, label = ccp_fashion.square_resize(photo, labels, 2)
  # Padded to 4 x 4: photo columns [1, 0, 1, 0] (mirrored), labels [0, a, b, 0].
  padded = photo[:, [1, 0, 1, 0]].astype(np.float64)
  want = padded.reshape(2, 2, 2, 2, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(image, want, atol=0.5 + 1e-9)  # uint8 rounding.
  np.testing.assert_array_equal(label, [[3, 0], [0, 0]])  # Centres at rows / columns 1, 3.


def _write_ccp(root: pathlib.Path, numbers, height=48, width=32, bad=()):
  (root / "annotations" / "pixel-level").mkdir(parents=True)
  (root / "photos").mkdir()
  for number in numbers:
    raw = np.zeros((height, width), np.uint8)
    photo = np.full((height, width, 3), 128, np.uint8)
    raw[2:6, 12:20] = CCP_ID["hair"]
    raw[6:11, 13:19] = CCP_ID["skin"]
    raw[11:26, 8:24], photo[11:26, 8:24] = CCP_ID["t-shirt"], (250, 220, 30)
    raw[26:40, 10:22], photo[26:40, 10:22] = CCP_ID["jeans"], (40, 50, 80)
    raw[40:46, 11:21] = CCP_ID["skin"]
    PIL.Image.fromarray(photo).save(root / "photos" / f"{number:04d}.jpg", format="PNG")
    if number in bad:
      raw = raw[:-1]
    scipy.io.savemat(root / "annotations" / "pixel-level" / f"{number:04d}.mat",
                     {"groundtruth": raw})


@pytest.fixture(name="ccp_tree", scope="module")
def ccp_tree_fixture(tmp_path_factory):
  root = tmp_path_factory.mktemp("fashiongan_ccp")
  _write_ccp(root / "ccp", [1, 2, 3, 801])
  _write_ccp(root / "bad", [1], bad=(1,))
  return root


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("READINGNOTES_CACHE", str(tmp_path_factory.getbasetemp() / "tfds_cache"))


def test_ccp_stand_in_split(ccp_tree):
  train = data.load_ccp(ccp_tree / "ccp", "train", 16)
  assert len(train) == 3 and train.images.shape == (3, 16, 16, 3)
  assert train.sentences == ("a woman in a yellow t-shirt and blue jeans",) * 3
  np.testing.assert_array_equal(train.words[0], train.vocabulary.encode(train.sentences[0]))
  np.testing.assert_allclose(train.mean_image, train.images.mean(axis=0) / 255, atol=1e-6)
  np.testing.assert_array_equal(train.shape_conditions, compose.spatial_constraint(train.labels))
  assert train.attribute_sizes == ccp_fashion.ATTRIBUTES
  assert set(np.unique(train.labels)) == {0, 1, 2, 3, 4, 5}  # Feet skin below the jeans: legs.
  test = data.load_ccp(ccp_tree / "ccp", "test", 16)
  assert len(test) == 1 and test.vocabulary == train.vocabulary
  config = types.SimpleNamespace(source="ccp", path=str(ccp_tree / "ccp"), image_size=16,
                                 eval_dir=str(ccp_tree / "ccp"))
  assert len(data.load_split(config, "test")) == 4  # Every photo of eval_dir.


def test_ccp_and_config_errors(ccp_tree):
  with pytest.raises(UserError, match="label is 47x32 but photo .* is 48x32"):
    data.load_ccp(ccp_tree / "bad", "train", 16)
  for values, message in [({"source": "mnist"}, "data.source='mnist'"),
                          ({"source": "deepfashion", "image_size": 64}, "128x128"),
                          ({"source": "deepfashion", "path": ""}, "data_release"),
                          ({"source": "ccp", "path": str(ccp_tree / "none")}, "not a folder")]:
    with pytest.raises(UserError, match=message):
      data.load_split(types.SimpleNamespace(**values), "train")
  with pytest.raises(UserError, match="split 'val'"):
    data.load_split(types.SimpleNamespace(source="ccp"), "val")


# Real CCP photos ---------------------------------------------------------------


@pytest.fixture(name="real_ccp", scope="module")
def real_ccp_fixture(data_dir):
  root = data_dir / "ccp"
  if not (root / "photos" / "0017.jpg").is_file():
    pytest.skip(f"{root} lacks CCP's photos")
  return root


@pytest.mark.parametrize("number", [1, 17, 401])
def test_real_ccp_records(real_ccp, number):
  pair = segmentation.Pair(real_ccp / "photos" / f"{number:04d}.jpg",
                           real_ccp / "annotations" / "pixel-level" / f"{number:04d}.mat")
  record = ccp_fashion.record(pair, 64)
  label = record["label"]
  assert record["image"].shape == (64, 64, 3) and label.shape == (64, 64)
  rows = lambda c: np.flatnonzero((label == c).any(axis=1))
  # Head above clothes above legs; every class but background present.
  assert set(np.unique(label)) == set(range(7))
  assert rows(ccp_fashion.HAIR)[0] < rows(ccp_fashion.FACE).mean() < rows(ccp_fashion.UPPER).mean()
  assert rows(ccp_fashion.UPPER).mean() < rows(ccp_fashion.LEGS).mean()
  # The sentence names the largest upper and lower garments of CCP's labels.
  raw = ccp.read_label(pair.label)
  counts = np.bincount(raw.ravel(), minlength=59)
  largest = lambda names: max(names, key=lambda g: counts[CCP_ID[g]])
  sentence = record["sentence"]
  assert largest(ccp_fashion.UPPER_GARMENTS) in sentence.split()
  assert largest(ccp_fashion.LOWER_GARMENTS) in sentence.split()
  upper, upper_colour, lower, lower_colour = record["attributes"]
  assert sentence.split()[4:6] == [ccp_fashion.COLOURS[upper_colour - 1],
                                   ccp_fashion.UPPER_GARMENTS[upper - 1]]
  assert ccp_fashion.LOWER_GARMENTS[lower - 1] == sentence.split()[-1]


def test_real_ccp_colours_seen_by_eye(real_ccp):
  """Photo 0001: a black jacket (CCP: vest) over a black skirt; 0017: a dark red blouse and
  skirt (looked at)."""
  for number, sentence in ((1, "a woman in a black vest and a black skirt"),
                           (17, "a woman in a red blouse and a red skirt")):
    pair = segmentation.Pair(real_ccp / "photos" / f"{number:04d}.jpg",
                             real_ccp / "annotations" / "pixel-level" / f"{number:04d}.mat")
    assert ccp_fashion.record(pair, 16)["sentence"] == sentence


def test_real_ccp_builder_on_a_handful(real_ccp, tmp_path):
  """CCPFashion over links to 3 real photos (2 train, 1 test), then the stream."""
  for sub in ("photos", "annotations/pixel-level"):
    (tmp_path / "ccp" / sub).mkdir(parents=True)
  for number in (1, 17, 801):
    for sub, ext in (("photos", "jpg"), ("annotations/pixel-level", "mat")):
      (tmp_path / "ccp" / sub / f"{number:04d}.{ext}").symlink_to(
          real_ccp / sub / f"{number:04d}.{ext}")
  builder = ccp_fashion.CCPFashion(source_dir=tmp_path / "ccp", image_size=32)
  assert len(tfds_local.load(builder, "test")) == 1
  train = data.load_ccp(tmp_path / "ccp", "train", 32)
  assert len(train) == 2 and train.sentences[1] == "a woman in a red blouse and a red skirt"
  out = data.batch(train, 0, 0, 2)
  assert out["image"].shape == (2, 32, 32, 3) and out["shape_condition"].shape == (2, 8, 8, 4)
