"""FashionGAN from a training workdir, for the stream (`predictors.load("restyler", ...)`)."""
import dataclasses
from collections.abc import Callable

import numpy as np

from readingnotes_jax.fashiongan import edit, train


@dataclasses.dataclass(frozen=True)
class Restyler:
  """`restyle(photo uint8 [H, W, 3], text)` -> `edit.edit`'s dict; `check_text(text)` raises
  UserError for a sentence the vocabulary cannot read (naming the unknown words);
  `default_text`: the first training sentence."""
  restyle: Callable[[np.ndarray, str], dict[str, np.ndarray]]
  check_text: Callable[[str], object]
  default_text: str


def load_restyler(workdir: str, *, segmenter: str, seed: int = 0,
                  postprocess: bool = True) -> Restyler:
  """A finished FashionGAN workdir with a PSPNet CCP `segmenter` workdir for the photos' S0
  (`edit.load_segmenter`); one compile for every call; `postprocess`: the demo's hair, face
  and skin handling (`compose.demo_postprocess`)."""
  segment = edit.load_segmenter(segmenter)
  task, state = edit.load_workdir(workdir)
  generation = train.Generation(task.nets, task.config.eval.batch_norm)

  def restyle(photo: np.ndarray, text: str) -> dict[str, np.ndarray]:
    return edit.edit(task, state, photo, segment(photo), text, seed=seed,
                     postprocess=postprocess, generation=generation)

  return Restyler(restyle, task.train_set.vocabulary.encode, task.train_set.sentences[0])
