"""Defaults shared by the Interpretable CNN configs: the authors' release
(zqs1022/interpretableCNN code/tool/main/network_init.m, nets/vgg_vd_16.m, our_cnn_train.m,
showResults.m, computeStability.m)."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "interpretable_cnn"
  c.seed = 0
  c.num_devices = 0                # 0: every visible device; the batch is split over them.
  c.batch_size = 32                # network_init.m: bs=32 for vgg-vd-16.
  c.epochs = 50                    # one category: numel(lr) = 50.
  c.max_steps = 0                  # > 0 overrides ceil(epochs * train images / batch_size).
  c.train_ordinary = True          # also train the ordinary counterpart, side by side.
  c.keep_checkpoints = 3
  c.log_every_steps = 20
  c.checkpoint_every_steps = 500
  c.eval_every_steps = 0           # periodic evaluation (0: only at the end).
  c.evals = ("interpretability",)  # readingnotes_jax.interpretable_cnn.train.EVALUATORS
  c.xla_cpu_ynn = False

  c.data = ml_collections.ConfigDict()
  c.data.source = "ccp"            # ccp | cub | pascal_part (interpretable_cnn/data.py)
  c.data.path = ""                 # data folder; empty: $READINGNOTES_DATA/<default folder>.
  c.data.category = ""             # cub: "" every bird or one class; pascal_part: an animal.
  c.data.negatives_path = ""       # the CamVid folder of the negatives; empty: $READINGNOTES_DATA/camvid.
  c.data.eval_dir = ""             # evaluate on another folder in the source's layout.
  c.data.image_size = 224          # vgg_vd_16: 224 x 224 inputs.
  c.data.augment = True            # left-right mirror with p 0.5 (getImdb.m adds mirrored images).

  c.model = ml_collections.ConfigDict()
  c.model.arch = "vgg16"           # vgg16 | alexnet | resnet
  c.model.width = 64               # conv1's channels (vgg16 64, alexnet 96, resnet 64).
  c.model.layers = 50              # resnet depth.
  c.model.num_classes = 1          # 1: one category against negatives (logistic); K: softmax.
  c.model.interpretable = True     # False: the ordinary network alone.
  c.model.initializer = "gaussian"  # gaussian (release: N(0, 0.01)) | he (from scratch).
  c.model.input_scale = 1.0        # times the input (0-255 minus the mean pixel); vgg16, alexnet.
  c.model.dropout = 0.5
  c.model.dtype = "float32"        # compute dtype; bfloat16 keeps parameters in float32.
  c.model.lowering = ""            # conv lowering: "" (per platform), "xla" or "matmul".

  c.loss = ml_collections.ConfigDict()
  c.loss.formulation = "release"   # release (hand-added gradient, learned beta) | paper (-MI).
  c.loss.filter_weight = 1.0       # paper: lambda; release: times its added x gradient (1).

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr_start = 1e-4      # network_init.m: logspace(-4, -5, 10), then 1e-5.
  c.optimizer.lr_end = 1e-5
  c.optimizer.lr_decay_epochs = 10
  c.optimizer.lr_scale = 1.0       # lrMag: 1 x classes for vgg-vd-16, 30 x for alexnet.
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 32
  c.eval.top_k = 100               # computeStability: patchNumPerPattern = 100.
  c.eval.hit_radius = 0.1          # part_hit_fraction: fraction of the image diagonal.

  c.figures = ml_collections.ConfigDict()
  c.figures.num_filters = 4        # rows of figures/top_images_*.png.
  c.figures.num_images = 6         # images per filter (and rows of activation_maps.png).
  return c


def scratch(c: ml_collections.ConfigDict) -> None:
  """From scratch instead of the release's fine-tuning of ImageNet weights (none are loaded
  here): He initialisation, inputs scaled to about unit variance, the release's learning-rate
  schedule at 100x its rates (logspace(-2, -3) over 10 epochs, then 1e-3)."""
  c.model.initializer = "he"
  c.model.input_scale = 1 / 64
  c.optimizer.lr_start = 1e-2
  c.optimizer.lr_end = 1e-3


def test(c: ml_collections.ConfigDict) -> None:
  """Seconds on a CPU (the contract suite): VGG-16 at width 4 on 32 px images, 6 steps, on CCP
  people against CamVid crops whatever the config's source: the trainer does not depend on
  the source (the builders have their own tests, tests/data/test_parts_builders.py), so
  every config's `:test` is this one run, which the contract suite runs once."""
  c.data.source = "ccp"
  c.data.category = ""
  scratch(c)
  c.model.width = 4
  c.data.image_size = 32
  c.batch_size = 8
  c.max_steps = 6
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.eval_every_steps = 3
  c.eval.batch_size = 8
  c.figures.num_filters = 2
  c.figures.num_images = 2


VARIANTS = {"test": test, "scratch": scratch}
