"""FashionGAN's data: the DeepFashion release files, the CCP stand-in, words, batches.

Two sources give the same `FashionSet` (`load_split(config.data, split)`):

- `source="deepfashion"`: the release's files under `data.path` (its `data_release/`
  folder; zhusz/ICCV17-fashionGAN download.sh and the readme):
  `benchmark/ind.mat` (`train_ind`, `test_ind`, `test_set_pair_ind`, 1-based),
  `benchmark/language_original.mat` (`codeJ` word ids per sentence, `engJ` the sentences,
  `cate_new`, `color_`, `sleeve_` 1-based, `gender_` 0/1),
  `test_phase_inputs/sr1_8.mat` (`d`, 8 x 8 x 4 x N, down m(S0)),
  `test_phase_inputs/encode_hn2_rnn_100_2_full.mat` (`hn2`, N x 100, the released d),
  `supervision_signals/G1.h5` (`/b_`, N x 1 x 128 x 128 labels) and, after signing
  DeepFashion's agreement, `supervision_signals/G2.h5` (`/ih` images minus the mean,
  `/b_`, `/ih_mean`; stored with height and width swapped, as ih1/train.lua's
  `permute(1, 2, 4, 3)` undoes). The .h5 files need h5py.
- `source="ccp"`: Clothing Co-Parsing through `readingnotes_jax.data.ccp_fashion`
  (7-class maps, a generated sentence and its attributes per photo), `data.path`
  defaulting to `$READINGNOTES_DATA/ccp`; the vocabulary and the mean image come from its
  train split.

Sentences become word ids with a `Vocabulary` whose id 0 is the unknown word.
`batch(fashion_set, seed, index, batch_size)` is a pure function of (seed, index), as the
other streams of readingnotes_jax.data.pipeline.
"""
from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.io

from readingnotes_jax.data import ccp_fashion, pipeline, tfds_local
from readingnotes_jax.errors import UserError
from readingnotes_jax.fashiongan import compose, model

UNKNOWN = "<unk>"
SOURCES = ("ccp", "deepfashion")
SPLITS = ("train", "test")
RELEASE_SIZE = 128
# (file below data.path, what it is) of the release.
INDICES_FILE = "benchmark/ind.mat"
LANGUAGE_FILE = "benchmark/language_original.mat"
CONSTRAINTS_FILE = "test_phase_inputs/sr1_8.mat"
CODINGS_FILE = "test_phase_inputs/encode_hn2_rnn_100_2_full.mat"
G1_FILE = "supervision_signals/G1.h5"
G2_FILE = "supervision_signals/G2.h5"
_H5_CHUNK = 1024  # Records per read of the .h5 datasets.
_WRONG_STREAM = 1  # Salt of the wrong-pair draws in `batch`.


def tokenize(sentence: str) -> list[str]:
  """Lower-case words of a sentence: runs of letters and digits, joined by - or '
  ("t-shirt"); other characters separate words (complete_demo/script2.m splits on spaces
  after stripping the final periods)."""
  return re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", sentence.lower())


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Words by id; id 0 is `UNKNOWN`, the id of every word not in the list."""
  words: tuple[str, ...]

  def __post_init__(self) -> None:
    if not self.words or self.words[0] != UNKNOWN or len(set(self.words)) != len(self.words):
      raise UserError(f"a vocabulary needs {UNKNOWN!r} first and distinct words, got "
                      f"{self.words[:5]}...")
    object.__setattr__(self, "_ids", {word: k for k, word in enumerate(self.words)})

  @classmethod
  def from_sentences(cls, sentences: Iterable[str]) -> Vocabulary:
    """Every word of `sentences`, most frequent first (ties alphabetical), after `UNKNOWN`."""
    counts = Counter(word for sentence in sentences for word in tokenize(sentence))
    return cls((UNKNOWN, *sorted(counts, key=lambda word: (-counts[word], word))))

  def __len__(self) -> int:
    return len(self.words)

  def unknown_words(self, sentence: str) -> list[str]:
    return [word for word in tokenize(sentence) if word not in self._ids]

  def encode(self, sentence: str) -> np.ndarray:
    """int32 word ids of `sentence`, unknown words as 0.

    Raises:
      UserError: the sentence has no words, or none that the vocabulary knows.
    """
    words = tokenize(sentence)
    if not words:
      raise UserError(f"sentence {sentence!r} has no words: describe the outfit, e.g. 'a "
                      "woman in a blue shirt and black pants'")
    ids = np.array([self._ids.get(word, 0) for word in words], np.int32)
    if not ids.any():
      raise UserError(f"sentence {sentence!r}: no known word (unknown: {', '.join(words)}); "
                      f"use words of the training sentences, e.g. {', '.join(self.words[1:8])}")
    return ids

  def encode_all(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [N, T] zero-padded, lengths int32 [N]) with T the longest sentence."""
    encoded = [self.encode(sentence) for sentence in sentences]
    return _pad(encoded)


def _pad(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  lengths = np.array([len(s) for s in sequences], np.int32)
  ids = np.zeros((len(sequences), max(lengths, default=1)), np.int32)
  for k, sequence in enumerate(sequences):
    ids[k, :len(sequence)] = sequence
  return ids, lengths


def release_vocabulary(sentences: Sequence[str], codes: Sequence[np.ndarray]) -> Vocabulary:
  """The release's words by id (its 1-based ids kept), read off `engJ` and `codeJ`.

  Each id takes the word most often at its positions (ties: the first seen), over the
  sentences with as many words as ids; a word taken by two ids stays with the one where it
  is more frequent; ids left without a word get the placeholder "<id N>".
  complete_demo/script2.m looks words up in its `map.mat` (a MATLAB containers.Map, not
  readable here), which this rebuilds.

  Raises:
    UserError: no sentence has as many words as ids.
  """
  pairs = Counter()
  for sentence, sentence_codes in zip(sentences, codes):
    words = tokenize(sentence)
    if len(words) == len(sentence_codes):
      pairs.update(zip(np.asarray(sentence_codes).astype(np.int64).tolist(), words))
  if not pairs:
    raise UserError(f"{LANGUAGE_FILE}: no sentence of engJ has as many words as its codeJ ids")
  by_id: dict[int, tuple[int, str]] = {}
  for (code, word), count in pairs.most_common():
    by_id.setdefault(code, (count, word))
  owner: dict[str, tuple[int, int]] = {}
  for code, (count, word) in by_id.items():
    if word not in owner or count > owner[word][0]:
      owner[word] = (count, code)
  words = {code: word for word, (_, code) in owner.items()}
  return Vocabulary((UNKNOWN, *(words.get(k, f"<id {k}>") for k in range(1, max(by_id) + 1))))


# The release's files ---------------------------------------------------------


def _load_mat(path: pathlib.Path, names: Sequence[str]) -> dict[str, Any]:
  if not path.is_file():
    raise UserError(f"{path} not found: download the release's data_release folder "
                    "(zhusz/ICCV17-fashionGAN download.sh) and point data.path at it")
  try:
    mat = scipy.io.loadmat(path)
  except (OSError, ValueError, KeyError, TypeError, IndexError, NotImplementedError,
          scipy.io.matlab.MatReadError) as e:  # What scipy raises on truncated / v7.3 files.
    raise UserError(f"{path}: unreadable .mat file ({type(e).__name__}: {e})") from e
  missing = [name for name in names if name not in mat]
  if missing:
    raise UserError(f"{path}: no variable {', '.join(missing)}: expected {', '.join(names)}")
  return {name: mat[name] for name in names}


def read_indices(path: pathlib.Path) -> dict[str, np.ndarray]:
  """ind.mat: 0-based int64 `train`, `test` and `test_pair` (the text provider of each test
  image) from the 1-based `train_ind`, `test_ind`, `test_set_pair_ind`."""
  mat = _load_mat(path, ("train_ind", "test_ind", "test_set_pair_ind"))
  out = {key: np.asarray(mat[name]).astype(np.int64).ravel() - 1 for key, name in
         (("train", "train_ind"), ("test", "test_ind"), ("test_pair", "test_set_pair_ind"))}
  if any(v.size and v.min() < 0 for v in out.values()):
    raise UserError(f"{path}: indices below 1: the release's indices are 1-based")
  return out


def _text(cell: Any) -> str:
  """A MATLAB char array read by scipy (strings, or character codes) as one string."""
  values = np.asarray(cell).ravel()
  if values.dtype.kind == "U":
    return "".join(values.tolist())
  return "".join(chr(int(c)) for c in values)


@dataclasses.dataclass(frozen=True)
class Language:
  """language_original.mat: per record the word ids (1-based, as `codeJ`), the sentence and
  attributes int32 [N, 4] (`model.RELEASE_ATTRIBUTES` order, 0-based as train_te.py)."""
  codes: tuple[np.ndarray, ...]
  sentences: tuple[str, ...]
  attributes: np.ndarray


def read_language(path: pathlib.Path) -> Language:
  mat = _load_mat(path, ("codeJ", "engJ", "cate_new", "color_", "gender_", "sleeve_"))
  codes = tuple(np.asarray(c).astype(np.int64).ravel() for c in mat["codeJ"].ravel())
  sentences = tuple(_text(s) for s in mat["engJ"].ravel())
  columns = [np.asarray(mat[name]).astype(np.int64).ravel() - offset for name, offset in
             (("cate_new", 1), ("color_", 1), ("gender_", 0), ("sleeve_", 1))]
  if len({len(codes), len(sentences), *map(len, columns)}) != 1:
    raise UserError(f"{path}: codeJ, engJ and the attributes have different lengths")
  attributes = np.stack(columns, axis=1).astype(np.int32)
  for k, (name, classes) in enumerate(model.RELEASE_ATTRIBUTES):
    if attributes.size and not 0 <= attributes[:, k].min() <= attributes[:, k].max() < classes:
      raise UserError(f"{path}: {name} values outside the release's {classes} classes")
  empty = [k for k, c in enumerate(codes) if c.size == 0]
  if empty:
    raise UserError(f"{path}: codeJ of record {empty[0] + 1} is empty: use the release's file")
  return Language(codes, sentences, attributes)


def read_spatial_constraints(path: pathlib.Path) -> np.ndarray:
  """sr1_8.mat `d` (8 x 8 x 4 x N) as float32 [N, 8, 8, 4], channels in
  `compose.MERGED_CLASS_NAMES` order (the file's are `compose.RELEASE_MERGED_ORDER`)."""
  d = np.asarray(_load_mat(path, ("d",))["d"], np.float32)
  if d.ndim != 4 or d.shape[:3] != (compose.CONSTRAINT_SIZE, compose.CONSTRAINT_SIZE, 4):
    raise UserError(f"{path}: d has shape {d.shape}, expected 8 x 8 x 4 x N")
  d = d.transpose(3, 0, 1, 2)
  return d[..., np.argsort(compose.RELEASE_MERGED_ORDER)]


def read_codings(path: pathlib.Path) -> np.ndarray:
  """encode_hn2_rnn_100_2_full.mat `hn2`: float32 [N, 100]."""
  hn2 = np.asarray(_load_mat(path, ("hn2",))["hn2"], np.float32)
  if hn2.ndim != 2 or hn2.shape[1] != model.CODING_SIZE:
    raise UserError(f"{path}: hn2 has shape {hn2.shape}, expected N x {model.CODING_SIZE}")
  return hn2


def _h5py():
  try:
    import h5py  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError("reading the release's .h5 files needs h5py: pip install h5py==3.16.0") from e
  return h5py


def _h5_dataset(file, path: pathlib.Path, name: str, ndim: int):
  if name not in file:
    raise UserError(f"{path}: no dataset {name}")
  dataset = file[name]
  if dataset.ndim != ndim:
    raise UserError(f"{path}: {name} has shape {dataset.shape}, expected {ndim} dimensions")
  return dataset


def _read_labels(dataset, path: pathlib.Path, swapped: bool) -> np.ndarray:
  """uint8 [N, H, W] of a `/b_` dataset [N, 1, ., .] (H and W swapped when `swapped`)."""
  if dataset.shape[1] != 1:
    raise UserError(f"{path}: /b_ has shape {dataset.shape}, expected N x 1 x 128 x 128")
  chunks = []
  for start in range(0, dataset.shape[0], _H5_CHUNK):
    chunk = np.asarray(dataset[start:start + _H5_CHUNK, 0])
    if chunk.size and (chunk.min() < 0 or chunk.max() >= compose.NUM_LABELS
                       or (chunk != np.round(chunk)).any()):
      raise UserError(f"{path}: /b_ holds values outside the labels 0..6")
    chunks.append((chunk.transpose(0, 2, 1) if swapped else chunk).astype(np.uint8))
  return np.concatenate(chunks) if chunks else np.zeros((0, *dataset.shape[2:]), np.uint8)


def _open_h5(path: pathlib.Path):
  h5py = _h5py()
  if not path.is_file():
    raise UserError(f"{path} not found: expected the release's {path.name}")
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise UserError(f"{path}: unreadable HDF5 file ({e})") from e


def read_g1(path: pathlib.Path) -> np.ndarray:
  """G1.h5 `/b_`: labels uint8 [N, 128, 128] (sr1/train.lua reads it without permuting)."""
  with _open_h5(path) as file:
    return _read_labels(_h5_dataset(file, path, "/b_", 4), path, swapped=False)


def read_g2(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """G2.h5: (images uint8 [N, 128, 128, 3], labels uint8 [N, 128, 128], mean float32
  [128, 128, 3] in [0, 1]).

  `/ih` [N, 3, W, H] holds the images minus `/ih_mean` (3 x 128 x 128 values, also
  W-major), both permuted back as ih1/train.lua does; images + mean are taken as [0, 1]
  (the generator's tanh range) and stored as uint8.

  Raises:
    UserError: a missing dataset, other shapes, or images + mean outside [-0.05, 1.05].
  """
  with _open_h5(path) as file:
    ih = _h5_dataset(file, path, "/ih", 4)
    size = ih.shape[2]
    if ih.shape[1] != 3 or ih.shape[3] != size:
      raise UserError(f"{path}: /ih has shape {ih.shape}, expected N x 3 x 128 x 128")
    if "/ih_mean" not in file:
      raise UserError(f"{path}: no dataset /ih_mean")
    mean = np.asarray(file["/ih_mean"], np.float32)
    if mean.size != 3 * size * size:
      raise UserError(f"{path}: /ih_mean has {mean.size} values, expected 3 x {size} x {size}")
    mean = mean.reshape(3, size, size).transpose(2, 1, 0)
    chunks = []
    for start in range(0, ih.shape[0], _H5_CHUNK):
      images = np.asarray(ih[start:start + _H5_CHUNK], np.float32).transpose(0, 3, 2, 1) + mean
      if images.size and (images.min() < -0.05 or images.max() > 1.05):
        raise UserError(f"{path}: /ih + /ih_mean spans [{images.min():.3g}, {images.max():.3g}]"
                        ", not [0, 1]: this loader assumes the release's [0, 1] images")
      chunks.append(np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8))
    labels = _read_labels(_h5_dataset(file, path, "/b_", 4), path, swapped=True)
  images = np.concatenate(chunks) if chunks else np.zeros((0, size, size, 3), np.uint8)
  if len(labels) != len(images):
    raise UserError(f"{path}: {len(images)} images but {len(labels)} label maps")
  return images, labels, mean


# The data set in memory ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FashionSet:
  """One split in memory.

  Attributes:
    labels: uint8 [N, S, S], `ccp_fashion.CLASS_NAMES` ids.
    shape_conditions: float32 [N, 8, 8, 4], down m(S0) (`compose.spatial_constraint`, or
      the release's sr1_8.mat).
    words: int32 [N, T] word ids (0-padded), lengths: int32 [N].
    attributes: int32 [N, A], attribute_sizes: A (name, classes) pairs.
    sentences: N sentences; vocabulary: the `Vocabulary` of `words`.
    images: uint8 [N, S, S, 3] RGB, or None (DeepFashion without G2.h5).
    mean_image: float32 [S, S, 3] in [0, 1], the train split's mean, or None.
    codings: float32 [N, 100] precomputed design codings (the release's hn2), or None.
  """
  labels: np.ndarray
  shape_conditions: np.ndarray
  words: np.ndarray
  lengths: np.ndarray
  attributes: np.ndarray
  attribute_sizes: tuple[tuple[str, int], ...]
  sentences: tuple[str, ...]
  vocabulary: Vocabulary
  images: np.ndarray | None = None
  mean_image: np.ndarray | None = None
  codings: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.labels)


def load_deepfashion(root: pathlib.Path, split: str) -> FashionSet:
  """`split` of the release's files under `root` (its data_release folder).

  Images come from `G2_FILE` when present (stage 2 needs them), else `images` is None.
  """
  root = pathlib.Path(root)
  records = read_indices(root / INDICES_FILE)[split]
  language = read_language(root / LANGUAGE_FILE)
  constraints = read_spatial_constraints(root / CONSTRAINTS_FILE)
  codings = read_codings(root / CODINGS_FILE)
  labels = read_g1(root / G1_FILE)
  images = mean = None
  if (root / G2_FILE).is_file():
    images, _, mean = read_g2(root / G2_FILE)
  total = len(language.sentences)
  for name, count in (("sr1_8.mat d", len(constraints)), ("hn2", len(codings)),
                      ("G1.h5 /b_", len(labels))) + ((("G2.h5 /ih", len(images)),)
                                                     if images is not None else ()):
    if count != total:
      raise UserError(f"{root}: {name} has {count} records but language_original.mat "
                      f"{total}: use the files of one release")
  if records.size and records.max() >= total:
    raise UserError(f"{root / INDICES_FILE}: index {records.max() + 1} beyond the {total} "
                    "records")
  words, lengths = _pad([language.codes[r] for r in records])
  return FashionSet(
      labels=labels[records], shape_conditions=constraints[records], words=words,
      lengths=lengths, attributes=language.attributes[records],
      attribute_sizes=model.RELEASE_ATTRIBUTES,
      sentences=tuple(language.sentences[r] for r in records),
      vocabulary=release_vocabulary(language.sentences, language.codes),
      images=None if images is None else images[records], mean_image=mean,
      codings=codings[records])


# What the edit command and the stream need of the training split, written into the workdir
# when training starts (`inference_bytes`), so that a workdir edits photos without the data.
INFERENCE_FILE = "fashiongan_inference.npz"


def inference_bytes(train_set: FashionSet) -> bytes:
  """`INFERENCE_FILE`'s contents: the vocabulary, the attributes, the mean image and the first
  training sentence (the stream's default), as an .npz of plain arrays (no pickles)."""
  buffer = io.BytesIO()
  np.savez(buffer, words=np.array(train_set.vocabulary.words),
           attribute_names=np.array([name for name, _ in train_set.attribute_sizes]),
           attribute_classes=np.array([size for _, size in train_set.attribute_sizes]),
           mean_image=train_set.mean_image, sentence=np.array(train_set.sentences[0]))
  return buffer.getvalue()


def read_inference(path: pathlib.Path) -> FashionSet:
  """A `FashionSet` of no records holding `INFERENCE_FILE` at `path` (`inference_bytes`):
  vocabulary, attribute sizes, mean image, and `sentences` the one saved sentence."""
  try:
    with np.load(path, allow_pickle=False) as saved:
      words, names, classes, mean, sentence = (
          saved[key] for key in ("words", "attribute_names", "attribute_classes",
                                 "mean_image", "sentence"))
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{path}: unreadable ({type(e).__name__}: {e}); it is written when "
                    "training starts: restore it from the training machine") from None
  size = mean.shape[0]
  attributes = tuple((str(name), int(count)) for name, count in zip(names, classes))
  return FashionSet(
      labels=np.zeros((0, size, size), np.uint8),
      shape_conditions=np.zeros((0, compose.CONSTRAINT_SIZE, compose.CONSTRAINT_SIZE,
                                 len(compose.MERGED_CLASS_NAMES)), np.float32),
      words=np.zeros((0, 1), np.int32), lengths=np.zeros((0,), np.int32),
      attributes=np.zeros((0, len(attributes)), np.int32), attribute_sizes=attributes,
      sentences=(str(sentence),), vocabulary=Vocabulary(tuple(str(w) for w in words)),
      images=np.zeros((0, size, size, 3), np.uint8), mean_image=mean.astype(np.float32))


def _records(builder: ccp_fashion.CCPFashion, split: str) -> dict[str, np.ndarray]:
  arrays = pipeline.to_memory(tfds_local.load(builder, split)).arrays
  arrays["sentence"] = [s.decode() if isinstance(s, bytes) else str(s)
                        for s in arrays["sentence"]]
  return arrays


def load_ccp(folder: pathlib.Path, split: str, image_size: int,
             eval_dir: pathlib.Path | None = None) -> FashionSet:
  """`split` of the CCP stand-in at `image_size` (built once into the TFDS cache).

  The vocabulary and the mean image are the train split's; with `eval_dir` the test split
  is every photo of that CCP-layout folder.
  """
  train = _records(ccp_fashion.CCPFashion(source_dir=folder, image_size=image_size), "train")
  vocabulary = Vocabulary.from_sentences(train["sentence"])
  mean = train["image"].mean(axis=0, dtype=np.float64) / 255
  if split == "train":
    arrays = train
  elif eval_dir is not None:
    arrays = _records(ccp_fashion.CCPFashion(source_dir=eval_dir, image_size=image_size,
                                             all_test=True), "test")
  else:
    arrays = _records(ccp_fashion.CCPFashion(source_dir=folder, image_size=image_size), "test")
  words, lengths = vocabulary.encode_all(arrays["sentence"])
  return FashionSet(
      labels=arrays["label"], shape_conditions=compose.spatial_constraint(arrays["label"]),
      words=words, lengths=lengths, attributes=arrays["attributes"].astype(np.int32),
      attribute_sizes=ccp_fashion.ATTRIBUTES, sentences=tuple(arrays["sentence"]),
      vocabulary=vocabulary, images=arrays["image"], mean_image=mean.astype(np.float32))


def _folder(path: str, default: str | None, key: str, what: str) -> pathlib.Path:
  if path:
    folder = pathlib.Path(path).expanduser()
    if not folder.is_dir():
      raise UserError(f"{key}={path} is not a folder: point it at {what}")
    return folder
  root = os.environ.get("READINGNOTES_DATA")
  if default and root and (pathlib.Path(root).expanduser() / default).is_dir():
    return pathlib.Path(root).expanduser() / default
  hint = f", or READINGNOTES_DATA to a folder holding {default}/" if default else ""
  raise UserError(f"{what} not found: set --config.{key} to its folder{hint}")


def load_split(data_config, split: str) -> FashionSet:
  """The `split` ("train" or "test") of `data_config.source`.

  Config keys read: `source` ("ccp" or "deepfashion"), `path`, `image_size` (CCP; the
  release's files are 128 x 128), `eval_dir` (CCP test split from another folder).

  Raises:
    UserError: unknown source or split, missing folders or files, bad files.
  """
  if split not in SPLITS:
    raise UserError(f"split {split!r}: use one of {', '.join(SPLITS)}")
  source = getattr(data_config, "source", None)
  image_size = int(getattr(data_config, "image_size", RELEASE_SIZE))
  path = getattr(data_config, "path", "")
  if source == "ccp":
    eval_dir = getattr(data_config, "eval_dir", "") if split == "test" else ""
    return load_ccp(_folder(path, "ccp", "data.path", "Clothing Co-Parsing"), split,
                    image_size,
                    _folder(eval_dir, None, "data.eval_dir", "a CCP-layout folder")
                    if eval_dir else None)
  if source == "deepfashion":
    if image_size != RELEASE_SIZE:
      raise UserError(f"data.image_size={image_size}: the release's DeepFashion files are "
                      f"{RELEASE_SIZE}x{RELEASE_SIZE}; set it to {RELEASE_SIZE}")
    return load_deepfashion(_folder(path, None, "data.path", "the release's data_release "
                                    "folder"), split)
  raise UserError(f"data.source={source!r}: use one of {', '.join(SOURCES)}")


def batch(fashion_set: FashionSet, seed: int, index: int, batch_size: int
          ) -> dict[str, np.ndarray]:
  """Batch `index` of the training stream: a pure function of (seed, index).

  Element i = index * batch_size + j is record perm_e[i mod N], perm_e drawn from
  (seed, e = i // N) (`pipeline.epoch_permutation`). Its "wrong" pair, the negative the
  discriminators see with this record's text, is record (r + k) mod N with k uniform in
  1..N-1 drawn from (seed, i), never r itself (sr1/train.lua `ind_wrong`).

  Returns:
    labels int32 [B, S, S], shape_condition float32 [B, 8, 8, 4], words int32 [B, T],
    lengths int32 [B], attributes int32 [B, A], wrong_labels, wrong_shape_condition; with
    images, image and wrong_image float32 [B, S, S, 3] in [0, 1] minus the mean image
    (what G_image's tanh output is relative to); with precomputed codings, coding [B, 100].
  """
  count = len(fashion_set)
  if count < 2:
    raise UserError(f"the data set has {count} record(s): a batch needs at least 2 (each "
                    "record's wrong pair is another record)")
  positions = index * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, count)
  records = np.empty_like(positions)
  for epoch in np.unique(epochs):
    in_epoch = epochs == epoch
    records[in_epoch] = pipeline.epoch_permutation(seed, int(epoch), count)[offsets[in_epoch]]
  shifts = np.array([np.random.default_rng([seed, _WRONG_STREAM, int(p)]).integers(1, count)
                     for p in positions])
  wrong = (records + shifts) % count
  out = {"labels": fashion_set.labels[records].astype(np.int32),
         "shape_condition": fashion_set.shape_conditions[records],
         "words": fashion_set.words[records], "lengths": fashion_set.lengths[records],
         "attributes": fashion_set.attributes[records],
         "wrong_labels": fashion_set.labels[wrong].astype(np.int32),
         "wrong_shape_condition": fashion_set.shape_conditions[wrong]}
  if fashion_set.images is not None:
    mean = (fashion_set.mean_image if fashion_set.mean_image is not None
            else np.zeros(fashion_set.images.shape[1:], np.float32))
    for key, rows in (("image", records), ("wrong_image", wrong)):
      out[key] = fashion_set.images[rows].astype(np.float32) / 255 - mean
  if fashion_set.codings is not None:
    out["coding"] = fashion_set.codings[records]
  return out
