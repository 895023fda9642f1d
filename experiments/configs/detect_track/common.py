"""Defaults shared by the D&T configs: feichtenhofer/Detect-Track's prototxts and solvers
(`models/rfcn_prototxts/ResNet-101L_ILSVRCvid_*`), `rfcn_config.m` and py-R-FCN's test
settings (see readingnotes_jax/detect_track/model.py and train.py)."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "detect_track"
  c.seed = 0
  c.num_devices = 0                # 0: every visible device; the batch is split over them.
  c.batch_size = 1                 # frame pairs per pass (the official: one pair per GPU).
  c.keep_checkpoints = 3
  c.log_every_steps = 20
  c.checkpoint_every_steps = 5000
  c.eval_every_steps = 0           # periodic evaluation (0: at the end of each phase).
  c.evals = ("tracking",)          # readingnotes_jax.detect_track.train.EVALUATORS
  c.init_from = ""                 # a workdir whose latest weights start this run.

  c.data = ml_collections.ConfigDict()
  c.data.source = "mot"            # mot (MOTChallenge sequences, person) | imagenet_vid
  c.data.path = ""                 # mot: folder of sequences ($READINGNOTES_DATA/mot15 if
                                   # empty); imagenet_vid: the ILSVRC2015 folder.
  c.data.train_sequences = ("PETS09-S2L1",)   # mot
  c.data.eval_sequence = "TUD-Stadtmitte"     # mot
  c.data.train_split = "train"     # imagenet_vid
  c.data.eval_split = "val"        # imagenet_vid
  c.data.eval_dir = ""             # any MOTChallenge sequence folder (overrides the above).
  c.data.det_split = ""            # imagenet_vid: DET images for every other detector pass.
  c.data.det_per_class = 2000      # DET images kept per class (imdb_sample_cls.m).
  c.data.detector_frames_per_video = 0  # detector pairs start at this many spaced frames
                                   # of each video (imdb_sample_frames.m: 30); 0: all.
  c.data.tau = 1                   # pairs (t, t + tau); D&T trains with tau = 1.
  c.data.train_scales = (600,)     # short side, one drawn per pair (cfg.TRAIN.SCALES).
  c.data.max_size = 1000           # long side at most (cfg.TRAIN.MAX_SIZE).
  c.data.image_size = (608, 1008)  # canvas (height, width), multiples of 16.
  c.data.flip = True               # horizontal flips of whole pairs.
  c.data.max_boxes = 64            # ground-truth slots per frame (padding).

  c.model = ml_collections.ConfigDict()
  c.model.num_classes = 1          # person (30 for ImageNet VID).
  c.model.layers = 101
  c.model.width = 64
  c.model.head_features = 0        # conv_new_1 / rpn_conv channels; 0: 8 * width (512).
  c.model.anchor_scales = (8, 16, 32)
  c.model.anchor_ratios = (0.5, 1.0, 2.0)
  c.model.num_rois = 300
  c.model.pre_nms_rois = 6000
  c.model.rpn_min_size = 16.0
  c.model.rpn_batch_size = 256
  c.model.ohem_rois = 128
  c.model.test_nms_iou = 0.3
  c.model.max_detections_per_class = 100
  c.model.frozen_stages = 1        # conv1 and res2.
  c.model.frozen_bn = True
  c.model.stride_in_1x1 = True     # MSRA Caffe ResNets; False for torchvision's weights.
  # ImageNet weights loaded into the backbone before the first step (nn.resnet_weights:
  # torchvision-layout .pth / .npz, with stride_in_1x1=False); empty: from scratch.
  c.model.backbone_init = ""
  c.model.max_displacement = 8
  c.model.correlation_method = ""  # "": nn.correlation.default_method; or one of METHODS.
  c.model.dtype = "float32"
  c.model.lowering = ""

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4

  # solver_120k160k_lr1_3.prototxt
  c.detector = ml_collections.ConfigDict(
      dict(base_lr=1e-3, step_size=120_000, iterations=160_000, iter_size=2))
  # solver_160k240k_lr1_4.prototxt
  c.dt = ml_collections.ConfigDict(
      dict(base_lr=1e-4, step_size=160_000, iterations=240_000, iter_size=4))

  c.eval = ml_collections.ConfigDict()
  c.eval.scale = 600               # test short side (cfg.TEST.SCALES).
  c.eval.batch_size = 2            # frame pairs per call.
  c.eval.periodic_frames = 0       # frames of a periodic evaluation (0: all).
  c.eval.track_score = 0.5         # tube boxes at least this score are MOT tracks,
  c.eval.track_iou = 0.3           # cut where consecutive boxes overlap less.

  c.figures = ml_collections.ConfigDict()
  c.figures.strip_frames = 4
  c.figures.video_fps = 10
  return c


def test(c: ml_collections.ConfigDict) -> None:
  """Seconds on a CPU (the contract suite): ResNet-14 at width 8 on a 64 x 96 canvas, 6
  passes, 8 pairs a pass (the contract's 8 devices)."""
  c.model.layers = 14
  c.model.width = 8
  c.model.head_features = 16
  c.model.anchor_scales = (1, 2)
  c.model.num_rois = 16
  c.model.pre_nms_rois = 64
  c.model.rpn_batch_size = 32
  c.model.ohem_rois = 8
  c.model.rpn_min_size = 2.0
  c.model.frozen_stages = 0
  c.model.frozen_bn = False
  c.model.max_detections_per_class = 8
  c.data.train_scales = (64,)
  c.data.max_size = 96
  c.data.image_size = (64, 96)
  c.data.max_boxes = 8
  c.eval.scale = 64
  c.eval.batch_size = 8
  c.batch_size = 8
  # 6 passes over the phases the config trains (a phase of 0 iterations stays skipped).
  both = bool(c.detector.iterations and c.dt.iterations)
  c.detector.update(iterations=(3 if both else 6) if c.detector.iterations else 0, iter_size=1)
  c.dt.update(iterations=(3 if both else 6) if c.dt.iterations else 0, iter_size=1)
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2


def vid(c: ml_collections.ConfigDict, layers: int, phase: str) -> None:
  """The paper's ImageNet VID runs (`phase` "detector": R-FCN, or "dt": D&T from it)."""
  c.data.source = "imagenet_vid"
  c.model.num_classes = 30
  c.model.layers = layers
  if phase == "detector":
    c.dt.iterations = 0
    c.data.det_split = "det_train"  # 'VID+DETtrain16sample' of script_Detect_ILSVRC_vid_*.m
    c.data.detector_frames_per_video = 30
  else:
    c.detector.iterations = 0
