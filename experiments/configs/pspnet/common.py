"""Defaults shared by the PSPNet configs: hszhao/semseg's `config/<data set>/*.yaml`
(TRAIN and TEST sections) and `tool/train.py` / `tool/test.py`."""
import ml_collections

MULTI_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "pspnet"
  c.seed = 0
  c.num_devices = 0                # 0: every visible device; the batch is split over them.
  c.batch_size = 16                # global batch (semseg: 16 over 8 GPUs, SyncBN).
  c.epochs = 100
  c.max_steps = 0                  # > 0 overrides epochs * (train images // batch_size).
  c.keep_checkpoints = 3
  c.log_every_steps = 20
  c.checkpoint_every_steps = 1000
  c.eval_every_steps = 0           # periodic validation (0: only at the end).
  c.evals = ("segmentation",)      # readingnotes_jax.pspnet.train.EVALUATORS
  # XLA:CPU only: dots and convolutions through YNNPACK (nn.conv.enable_xla_cpu_ynn). On the
  # AMD EPYC PSPNet-50 ran about as fast either way (benchmarks/pspnet_step.py at commit
  # 8ea047c, before the factorized head, ratios to torch with / without: float32 train
  # 0.82 / 0.83, inference 0.93 / 0.89; bfloat16 train 1.23 / 1.29, inference 1.42 / 1.46),
  # so it stays off.
  c.xla_cpu_ynn = False

  c.data = ml_collections.ConfigDict()
  c.data.source = "ade20k"         # ade20k | voc2012 | cityscapes | camvid | ccp
  c.data.path = ""                 # data folder; empty: $READINGNOTES_DATA/<default folder>.
  c.data.sbd_path = ""             # voc2012: SBD's benchmark_RELEASE/dataset folder.
  c.data.use_sbd = False           # voc2012: train on train_aug (VOC + SBD, 10,582 images).
  c.data.train_split = "train"
  c.data.val_split = "val"
  c.data.crop_size = 473           # train_h = train_w; (size - 1) % 8 == 0.
  c.data.image_scale = 1.0         # < 1: train on a downscaled copy (runlocal configs).

  c.model = ml_collections.ConfigDict()
  c.model.layers = 50
  c.model.width = 64               # ResNet base width (64: semseg); the heads scale with it.
  c.model.bins = (1, 2, 3, 6)
  c.model.dropout = 0.1
  c.model.use_aux = True
  c.model.factorized_head = True   # cls conv at the pyramid's bin size (same function);
                                   # False: semseg's order, upsample then convolve.
  c.model.dtype = "float32"        # compute dtype; bfloat16 keeps parameters in float32.
  c.model.lowering = ""            # conv lowering: "" (per platform), "xla" or "matmul".
  # Backbone weights loaded before the first step (semseg: initmodel/resnet50_v2.pth or
  # resnet101_v2.pth, ImageNet; nn.resnet_weights lists the other sources); empty: from
  # scratch. A resumed run keeps its checkpoint's weights.
  c.model.backbone_init = ""

  c.loss = ml_collections.ConfigDict()
  c.loss.aux_weight = 0.4
  c.loss.ignore_label = 255

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.base_lr = 0.01
  c.optimizer.power = 0.9
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.new_lr_multiplier = 10.0  # ppm, cls, aux.

  c.eval = ml_collections.ConfigDict()
  c.eval.base_size = 512           # long side at scale 1.0 (2048 for Cityscapes).
  c.eval.crop_size = 0             # test_h = test_w; 0: data.crop_size.
  c.eval.scales = (1.0,)           # multi-scale: MULTI_SCALES (the `:ms` variants).
  c.eval.flip = True               # semseg's net_process averages the mirrored crop.
  c.eval.batch_size = 8            # crops per network call.
  c.eval.periodic_images = 100     # images of the periodic validation (0: all).

  c.figures = ml_collections.ConfigDict()
  c.figures.num_examples = 4       # rows of figures/predictions.png.
  return c


def ms(c: ml_collections.ConfigDict) -> None:
  """The six-scale evaluation of semseg's `_ms` results."""
  c.eval.scales = MULTI_SCALES


def test(c: ml_collections.ConfigDict) -> None:
  """Seconds on a CPU (the contract suite): ResNet-14 at width 8, 17x17 crops, 4 steps."""
  c.model.layers = 14
  c.model.width = 8
  c.data.crop_size = 17
  c.data.image_scale = 1.0
  c.batch_size = 8
  c.max_steps = 4
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.eval_every_steps = 2
  c.eval.crop_size = 17
  c.eval.base_size = 24
  c.eval.scales = (1.0,)
  c.eval.flip = False
  c.eval.batch_size = 8
  c.eval.periodic_images = 2
  c.figures.num_examples = 1


VARIANTS = {"ms": ms, "test": test}
