"""FashionGAN on Clothing Co-Parsing (the stand-in for DeepFashion here: labels mapped to the
7 classes, a sentence per photo from its garments and their measured colours; photos
0801-0900 held out), both stages and the design coder.

  python -m experiments.train --config experiments/configs/fashiongan/ccp_fashiongan.py \\
      --workdir runs/ccp_fashiongan
  python -m experiments.evaluate --config experiments/configs/fashiongan/ccp_fashiongan.py \\
      --workdir runs/ccp_fashiongan [--config.data.eval_dir=/other/ccp_like_folder]
  python -m readingnotes_jax.fashiongan.edit --workdir runs/ccp_fashiongan --photo P.jpg \\
      --labels P.mat --text "a woman in a red dress" --out out.png

`:runlocal` trains all three on a 2-core CPU within 30 minutes (see `runlocal`); add
`--config.model.compare_plain=True` to train the plain G_image beside the compositional one
(section 3.3 on / off on the same batches; G_image's phase then takes twice as long).
"""
from experiments.configs import variants
from experiments.configs.fashiongan.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "ccp"
  c.model.compositional = True
  c.model.compare_plain = True
  return variants.apply(c, arg, {**VARIANTS, "runlocal": runlocal})


def runlocal(c) -> None:
  """64 x 64, networks at a quarter width (ngf = ndf = 16), batch 16: the coder 3000 steps of
  32 sentences (SGD 0.1, 0.01 from step 2500), then 1200 steps of G_shape at Adam 1e-3 and 500
  of G_image at the release's 2e-4 (compositional only: the plain one beside it doubled the
  phase, 24.5 of the 36 minutes on a 2-core AMD EPYC); everything else as the release. Why
  these (each measured on the held-out photos):
  - G_shape at 1e-3: its logits layer has no BatchNorm and starts at the release's N(0,
    (0.02/16)^2), so at 2e-4 it needs most of a CPU budget to grow; after 600 steps at 2e-4
    the generated maps were one garment blob (cross-entropy 0.30 per pixel, category
    accuracy 0.24), after 1200 at 1e-3 they separate the garments (0.15, shape IoU 0.92,
    category accuracy 0.66 against 0.61 for the real maps).
  - the release's encoder-decoder G_image (ih1), not the demo's U-Net: the text joins it at
    16 x 16 over the whole decoder, where the U-Net gets it at its 1 x 1 bottleneck beside
    skips that carry the condition. On the true segmentations with the BatchNorm running
    averages: colour accuracy 0.41 after 200 and after 400 steps against the U-Net's 0.27
    and 0.16; 1e-3 made both worse (0.12 at 200 steps for the encoder-decoder).
  - G_image evaluated through a moving average of its parameters (beta 0.98, about the last
    50 steps): the raw G_image's colour accuracy swings with where the GAN is when training
    stops (one G_image retrained from this run's coder and G_shape, read every 50 steps from
    150 to 500: 0.28-0.44, 0.283 at the end), the average's stayed at 0.40-0.44 from step 300
    on (beta 0.99: 0.39-0.43 from 350; 0.995 had not caught up by 500: 0.30). The average
    keeps BatchNorm statistics of its own (G's describe the raw parameters): with G's, the
    full run gave 0.428 (plain G_image 0.152); with its own, 0.471 (plain 0.256), SWD 118
    -> 91, for 3 more minutes (19 min 36 s in all).
  - G_image without noise (`model.image_noise=False`: zeros for z, so the image depends on
    the sentence and the segmentation alone; the L1 term, 100 x, pays for nothing z could
    add). One run of each on an NVIDIA H200, this config with the plain G_image off,
    colour accuracy at step 500: 0.566 without noise, 0.410 with the release's z; also
    tried there: the text layer drawn at N(0, 0.02^2) instead of the release's
    N(0, (0.02/16)^2) 0.430, the text code tiled over the 16 x 16 join as well 0.446. The
    full run on a 2-core AMD EPYC: 0.550, the plain G_image 0.498 (with noise, on a
    Sapphire Rapids: 0.471 / 0.256).
  """
  c.data.image_size = 64
  c.model.features = 16
  c.batch_size = 16
  c.coder.batch_size = 32
  c.coder.learning_rate = 0.1
  c.coder.decay_step = 2500
  c.optimizer.shape_learning_rate = 1e-3
  c.steps.design_coding = 3000
  c.steps.shape = 1200
  c.steps.image = 500
  c.model.g_ema_beta = 0.98
  c.model.image_noise = False
  c.model.compare_plain = False
  c.log_every_steps = 10
  c.checkpoint_every_steps = 200
