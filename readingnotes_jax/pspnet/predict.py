"""PSPNet inference from a training workdir: semseg's test-time prediction of one image."""
from collections.abc import Callable

import numpy as np

from readingnotes_jax.pspnet import data as pspnet_data
from readingnotes_jax.pspnet import inference, train
from readingnotes_jax.training import runner


def load_segmenter(workdir: str, *, scales: tuple[float, ...] | None = None,
                   flip: bool | None = None
                   ) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[str, ...], np.ndarray]:
  """(predict(image uint8 [H, W, 3] RGB) -> int32 [H, W] labels, class_names, palette).

  Uses the latest checkpoint and `config.json` of a workdir written by
  experiments.train; `scales` and `flip` default to the config's `eval` ones
  (semseg `tool/test.py`: sliding windows, flips, scales).
  """
  config = runner.read_config(workdir, "pspnet")
  if scales is not None:
    config.eval.scales = tuple(scales)
  if flip is not None:
    config.eval.flip = flip
  model = train.build_model(config)
  state, _ = runner.restore_latest(workdir, train.abstract_state(config, model))
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  probability_fn = inference.make_probability_fn(model, flip=config.eval.flip)
  predictor = train.make_predictor(config, probability_fn, variables, 1)
  ds = pspnet_data.dataset(config)
  return predictor, ds.class_names, ds.palette
