"""Defaults shared by the FashionGAN configs: the authors' release (zhusz/ICCV17-fashionGAN
sr1/config_sr1.lua, sr1/train.lua, ih1/train.lua, language/train_te.py)."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "fashiongan"
  c.seed = 0
  c.num_devices = 0                # 0: every visible device; batches split over them.
  c.batch_size = 4                 # config_sr1.lua batchSize (both GAN phases).
  c.keep_checkpoints = 3
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.eval_every_steps = 0           # periodic evaluation (0: at the end of each phase).
  c.evals = ("fashion",)           # readingnotes_jax.fashiongan.train.EVALUATORS
  # XLA:CPU only: dots and reductions through YNNPACK, convolutions through XLA's own
  # kernels (nn.conv.enable_xla_cpu_ynn). benchmarks/fashiongan_step.py, runlocal sizes,
  # float32, idle 2-core Sapphire Rapids: G_image 0.98 -> 0.59 s (XLA:CPU's default hands
  # convolutions to YNNPACK, whose kernel gradients at 32 x 32 ran at 35-60 GFLOP/s against
  # XLA's 250-300; dots alone made the BatchNorm reductions 10-30x slower).
  c.xla_cpu_ynn = True
  c.xla_cpu_ynn_types = "individual_dot,reduce"
  # The standard FID Inception weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth or
  # an .npz of it); empty: $READINGNOTES_FID_WEIGHTS, else no FID (SWD only).
  c.fid_weights = ""

  c.steps = ml_collections.ConfigDict()
  c.steps.design_coding = 100000   # train_te.py: batch 1, lr 0.01, 0.001 after 50k.
  c.steps.shape = 25000            # the paper: 25k iterations for G_shape.
  c.steps.image = 25000

  c.data = ml_collections.ConfigDict()
  c.data.source = "deepfashion"    # deepfashion | ccp (fashiongan/data.py)
  c.data.path = ""                 # data folder; empty: $READINGNOTES_DATA/<default folder>.
  c.data.eval_dir = ""             # ccp: evaluate on every photo of another CCP-layout folder.
  c.data.image_size = 128          # config_sr1.lua win_size.

  c.coder = ml_collections.ConfigDict()
  c.coder.batch_size = 1           # train_te.py bsz.
  c.coder.learning_rate = 0.01     # optim.SGD(lr=0.01), then 0.001:
  c.coder.decay_step = 50000

  c.model = ml_collections.ConfigDict()
  c.model.features = 64            # ngf = ndf.
  c.model.image_generator = "encoder_decoder"  # encoder_decoder (ih1) | unet (ih1_skip, the demo's).
  c.model.compositional = False    # paper 3.3: each region rendered under its own mask.
  c.model.compare_plain = False    # with compositional: also train the plain G_image alongside.
  c.model.image_noise = True       # G_image sees z (the release); False: zeros instead.
  c.model.g_ema_beta = 0.0         # > 0: evaluate a moving average of G_image (not the release).
  c.model.dtype = "float32"        # compute dtype; bfloat16 keeps parameters in float32.

  c.loss = ml_collections.ConfigDict()
  c.loss.wrong_weight = 0.1        # config_sr1.lua lambda_mismatch (the release's backward: 1).
  c.loss.fake_weight = 0.9         # lambda_fake (the release's backward: 1).
  c.loss.segmentation_weight = 100.0  # sr1/train.lua df_do_seg:mul(100).
  c.loss.l1_weight = 100.0         # ih1/train.lua lambda.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 2e-4  # optimStateG / optimStateD.
  c.optimizer.shape_learning_rate = 0.0  # > 0: G_shape / D_shape's own (CPU runs).
  c.optimizer.beta1 = 0.5
  c.optimizer.beta2 = 0.999

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 50
  c.eval.sentences_per_photo = 3   # test pairs: each photo with others' sentences.
  c.eval.batch_norm = "running"    # generators at inference: running | per_sample (the demo's).

  c.figures = ml_collections.ConfigDict()
  c.figures.num_photos = 6         # rows of figures/held_out_pairs.png.
  c.figures.sentences_per_row = 3
  return c


def test(c: ml_collections.ConfigDict) -> None:
  """Seconds on a CPU (the contract suite): 64 px at width 4, 3 steps of the coder and of
  G_shape and 1 of G_image, on CCP whatever the config's source (the release-file readers
  have their own tests, tests/fashiongan/test_fashiongan_data.py), so every config's `:test`
  is this one run. One G_image step: from its second step on, the losses of 8 devices and 1
  device differ by 1e-3 (seen at width 8), beyond the contract's 1e-4 bar for float
  rounding (see LOSSES_ONLY in tests/contract/test_contract.py). The compositional G_image
  only: the plain one goes through the same loop over variants (tests/fashiongan run both),
  and a second variant doubles the image step's compile in each of the contract's runs."""
  c.xla_cpu_ynn = False
  c.data.source = "ccp"
  c.data.image_size = 64
  c.model.features = 4
  c.model.compositional = True
  c.model.compare_plain = False
  c.model.g_ema_beta = 0.9         # the contract's exact resume covers the average.
  c.batch_size = 8
  c.coder.batch_size = 8
  c.coder.learning_rate = 0.1
  c.coder.decay_step = 2
  c.steps.design_coding = 3
  c.steps.shape = 3
  c.steps.image = 1
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.eval.batch_size = 8
  c.eval.sentences_per_photo = 2
  c.figures.num_photos = 2
  c.figures.sentences_per_row = 2


VARIANTS = {"test": test}
