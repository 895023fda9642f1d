"""Interpretable VGG-16 and its ordinary counterpart on Clothing Co-Parsing people vs CamVid.

The real data here (../shared/data): people photos of CCP (positives, parts from the
pixel labels: hair, face, clothes, shoes, bag, belt; photos 0701-0900 held out) against
square CamVid street crops without people (negatives), the release's single-category
setting (network_init.m: VGG-16, batch 32, lr logspace(-4, -5) over 10 epochs then 1e-5,
50 epochs, the release's filter loss on conv6's and fc7's inputs), for an accelerator:

  python -m experiments.train --config experiments/configs/interpretable_cnn/ccp_vgg16.py \
      --workdir runs/ccp_vgg16
  python -m experiments.evaluate --config experiments/configs/interpretable_cnn/ccp_vgg16.py \
      --workdir runs/ccp_vgg16 [--config.data.eval_dir=/other/ccp_like_folder]

The release fine-tunes ImageNet's VGG-16; no weights are loaded here, so this trains from
scratch (common.scratch: He initialisation, unit-variance inputs, the release's learning-rate
schedule at 100x its rates).

`:runlocal` trains both networks together on a 2-core CPU within 30 minutes and reports, on
the 200 held-out photos (and as many held-out CamVid crops), location instability and
accuracy of both (see the docstring of `runlocal`):

  READINGNOTES_DATA=../shared/data python -m experiments.train \
      --config experiments/configs/interpretable_cnn/ccp_vgg16.py:runlocal --workdir /tmp/icnn_runlocal
"""
from experiments.configs import variants
from experiments.configs.interpretable_cnn.common import VARIANTS, base_config, scratch


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "ccp"
  scratch(c)
  return variants.apply(c, arg, {**VARIANTS, "runlocal": runlocal})


def runlocal(c) -> None:
  """A VGG-16 a quarter as wide (conv1_1 16 channels, conv6 128, fc 1024) on 96 px images,
  from scratch, both networks side by side: 15 epochs of the 1,400 training images (657 steps
  of 32), learning rate logspace(1e-2, 1e-3) over them; everything else as the release
  (filter loss, masks, SGD, mirroring) except the filter loss's weight: 300 times the
  release's added gradient. From scratch at this width the release's 1e-5 scale makes that
  gradient ~3e-3 of the task's (norms of the two gradients on conv1_1-conv5_3 at
  initialisation, one batch); x300 makes them comparable (1 gives location instability
  0.0657 against the ordinary network's 0.0635, 300 gives 0.0624: see the README)."""
  c.loss.filter_weight = 300.0
  c.model.width = 16
  c.data.image_size = 96
  c.epochs = 15
  c.optimizer.lr_decay_epochs = 15
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100
  c.eval_every_steps = 219
  c.eval.batch_size = 50
