"""Defaults shared by the ProGAN configs: the official code's settings (train.py, loss.py, config.py
of tkarras/progressive_growing_of_gans)."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "progan"
  c.seed = 1000
  c.num_devices = 0  # 0: every visible device.
  c.keep_checkpoints = 3
  c.log_every_steps = 50
  # XLA:CPU only: dots and convolutions through YNNPACK (nn.conv.enable_xla_cpu_ynn); on the
  # AMD EPYC a float32 step at 32 px, 512 maps ran 1.33x faster (benchmarks/progan_step.py).
  c.xla_cpu_ynn = True
  c.checkpoint_every_steps = 1000
  c.eval_every_steps = 0           # evaluations run at the end of each phase (and of the run).
  c.evals = ("swd", "ms_ssim", "fid")  # readingnotes_jax.progan.evaluation.EVALUATORS
  # The standard FID Inception weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth
  # or its .npz); empty: $READINGNOTES_FID_WEIGHTS, else FID is skipped with a log line.
  c.fid_weights = ""

  c.data = ml_collections.ConfigDict()
  c.data.source = "fashion_mnist"  # fashion_mnist | mnist | image_folder
  c.data.path = ""                 # folder of the data; empty: READINGNOTES_DATA, Debian, download.
  c.data.split = "train"
  c.data.mirror = False

  c.model = ml_collections.ConfigDict()
  c.model.resolution = 32
  c.model.num_channels = 1
  c.model.latent_size = 512
  c.model.label_size = 0           # > 0: AC-GAN conditioning on the data's labels.
  c.model.fmap_base = 8192
  c.model.fmap_decay = 1.0
  c.model.fmap_max = 512
  c.model.mbstd_group_size = 4
  # True: D pools before bias and LReLU (official TF default, networks.py conv2d_downscale2d);
  # False: after them, as the paper's Theano networks.
  c.model.fused_scale = True
  c.model.dtype = "float32"        # compute dtype; bfloat16 keeps parameters in float32.
  c.model.lowering = ""            # conv lowering: "" (per platform), "xla" or "matmul".

  c.schedule = ml_collections.ConfigDict()
  c.schedule.start_resolution = 4
  c.schedule.training_kimg = 600.0
  c.schedule.transition_kimg = 600.0
  c.schedule.total_kimg = 12000.0
  # config.py preset-v2-1gpu (the TF release's): 4 at 1024 and wherever the dictionary is silent.
  # The paper's runs (v1 preset, Appendix A.1) used 16 up to 128 px, then 14, 6, 3 at 256-1024.
  c.schedule.minibatch_base = 4
  c.schedule.minibatch = "4:128,8:128,16:128,32:64,64:32,128:16,256:8,512:4"
  c.schedule.g_lr_base = 0.001
  c.schedule.d_lr_base = 0.001
  c.schedule.g_lr = "1024:0.0015"
  c.schedule.d_lr = "1024:0.0015"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.99
  c.optimizer.eps = 1e-8

  c.loss = ml_collections.ConfigDict()
  c.loss.wgan_lambda = 10.0
  c.loss.wgan_target = 1.0
  c.loss.wgan_epsilon = 0.001
  c.loss.cond_weight = 1.0
  c.g_ema_beta = 0.999

  c.eval = ml_collections.ConfigDict()
  c.eval.num_images = 16384        # official SWD protocol.
  c.eval.ms_ssim_pairs = 10000     # official MS-SSIM protocol.
  c.eval.batch_size = 256
  c.eval.fid_images = 50000        # official FID protocol (Inception at 299 px: accelerators).
  c.eval.fid_batch_size = 50

  c.figures = ml_collections.ConfigDict()
  c.figures.grid_size = 64
  return c


def runlocal(c: ml_collections.ConfigDict) -> None:
  """All seven phases of a 4 -> 32 px run on a 2-core CPU in minutes (narrow networks)."""
  c.model.latent_size = 64      # nf(0), as the paper's latent is nf(0) = 512.
  c.model.fmap_base = 256       # widths 64, 64, 32, 16 at 4, 8, 16, 32 px.
  c.model.fmap_max = 64
  c.schedule.training_kimg = 8.0
  c.schedule.transition_kimg = 8.0
  c.schedule.total_kimg = 64.0    # 8k images per phase, 16k in the last (stable 32 px).
  c.schedule.minibatch_base = 32
  c.schedule.minibatch = ""
  # The paper's EMA beta (0.999, a ~700-step half-life) would average over a third of
  # this 2,000-step run; 0.99 keeps the EMA's horizon (~70 steps) short of a phase.
  c.g_ema_beta = 0.99
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
  c.eval.num_images = 1024
  c.eval.ms_ssim_pairs = 500
  c.eval.fid_images = 1024


def test(c: ml_collections.ConfigDict) -> None:
  """Seconds on a CPU (the contract suite): 8 -> 16 px, 16 steps of 8 images, tiny nets."""
  runlocal(c)
  c.xla_cpu_ynn = False
  c.model.resolution = 16
  c.schedule.start_resolution = 8
  c.model.latent_size = 16
  c.model.fmap_base = 32
  c.model.fmap_max = 8
  c.schedule.training_kimg = 0.032
  c.schedule.transition_kimg = 0.032
  c.schedule.total_kimg = 0.128
  c.schedule.minibatch = "8:8,16:8"
  c.log_every_steps = 1
  c.checkpoint_every_steps = 3
  c.eval.num_images = 32
  c.eval.ms_ssim_pairs = 4
  c.eval.fid_images = 16
  c.eval.fid_batch_size = 8
  c.eval.batch_size = 32
  c.figures.grid_size = 4


VARIANTS = {"runlocal": runlocal, "test": test}
