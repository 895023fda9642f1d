"""FashionGAN's losses, each returning (loss, metrics) for the trainer.

From the release (zhusz/ICCV17-fashionGAN): sr1/train.lua and ih1/train.lua `fDx` / `fGx`
(torch `nn.BCECriterion`, mean over elements, on the discriminators' sigmoid outputs;
here BCE on logits, the same function computed stably), `cudnn.SpatialCrossEntropyCriterion`
(mean over the B x H x W pixels since cudnn.torch efdbade, 2016-12: `SpatialClassNLLCriterion`
with sizeAverage), `nn.AbsCriterion` (mean), and language/train_te.py (`nn.CrossEntropyLoss`
per attribute, summed).

The discriminators' loss: real + lambda_mismatch x wrong + lambda_fake x fake, where
"wrong" is a real map or image with the condition of another record and this record's
text (config_sr1.lua: lambda_fake 0.9, lambda_mismatch 0.1; `errD` is logged so, and
halved in ih1). The release's backward passes do not scale the terms
(`criterion:backward` of each is passed on unweighted), so the gradients it trains with are
those of real + wrong + fake: `RELEASE_GRADIENT_WEIGHTS`.
"""
import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError

WRONG_WEIGHT = 0.1  # config_sr1.lua / config_ih1.lua lambda_mismatch
FAKE_WEIGHT = 0.9  # lambda_fake
RELEASE_GRADIENT_WEIGHTS = {"wrong_weight": 1.0, "fake_weight": 1.0}
SEGMENTATION_WEIGHT = 100.0  # sr1/train.lua `df_do_seg:mul(100)`
L1_WEIGHT = 100.0  # ih1/train.lua `lambda = 100`


def bce_with_logits(logits: jax.Array, target: float) -> jax.Array:
  """Mean over all elements of -[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))]."""
  logits = logits.astype(jnp.float32)
  return -jnp.mean(target * jax.nn.log_sigmoid(logits)
                   + (1 - target) * jax.nn.log_sigmoid(-logits))


def discriminator_loss(real_logits: jax.Array, wrong_logits: jax.Array,
                       fake_logits: jax.Array, *, wrong_weight: float = WRONG_WEIGHT,
                       fake_weight: float = FAKE_WEIGHT) -> tuple[jax.Array, dict]:
  """BCE(real, 1) + wrong_weight BCE(wrong, 0) + fake_weight BCE(fake, 0), either stage.

  Logits of any shape ([B] for D_shape / D_image, [B, 14, 14] patches), each term a mean.
  """
  real = bce_with_logits(real_logits, 1.0)
  wrong = bce_with_logits(wrong_logits, 0.0)
  fake = bce_with_logits(fake_logits, 0.0)
  loss = real + wrong_weight * wrong + fake_weight * fake
  return loss, {"d_loss": loss, "d_real": real, "d_wrong": wrong, "d_fake": fake}


def segmentation_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over pixels of -log softmax(logits)[label]: logits [B, H, W, L], labels [B, H, W]."""
  if logits.shape[:-1] != labels.shape:
    raise UserError(f"segmentation_cross_entropy: logits {logits.shape} and labels "
                    f"{labels.shape} disagree")
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), -1))


def shape_generator_loss(fake_logits: jax.Array, segmentation_logits: jax.Array,
                         labels: jax.Array, *,
                         segmentation_weight: float = SEGMENTATION_WEIGHT
                         ) -> tuple[jax.Array, dict]:
  """G_shape: BCE(D(fake), 1) + 100 x the pixel-wise cross-entropy to the true labels."""
  gan = bce_with_logits(fake_logits, 1.0)
  cross_entropy = segmentation_cross_entropy(segmentation_logits, labels)
  loss = gan + segmentation_weight * cross_entropy
  return loss, {"g_loss": loss, "g_gan": gan, "g_cross_entropy": cross_entropy}


def image_generator_loss(fake_logits: jax.Array, images: jax.Array, targets: jax.Array, *,
                         l1_weight: float = L1_WEIGHT) -> tuple[jax.Array, dict]:
  """G_image: BCE(D(fake), 1) + 100 x mean |generated - real| (both relative to the mean)."""
  if images.shape != targets.shape:
    raise UserError(f"image_generator_loss: images {images.shape} and targets "
                    f"{targets.shape} disagree")
  gan = bce_with_logits(fake_logits, 1.0)
  l1 = jnp.mean(jnp.abs(images.astype(jnp.float32) - targets.astype(jnp.float32)))
  loss = gan + l1_weight * l1
  return loss, {"g_loss": loss, "g_gan": gan, "g_l1": l1}


def design_coding_loss(logits: dict[str, jax.Array], attributes: jax.Array,
                       names: tuple[str, ...]) -> tuple[jax.Array, dict]:
  """Sum over attributes of the batch-mean cross-entropy, and each one's accuracy.

  `attributes` int [B, A], column k the class of `names[k]` (a key of `logits`).
  """
  if attributes.shape[-1] != len(names) or set(names) != set(logits):
    raise UserError(f"design_coding_loss: attributes {attributes.shape} for {names} do not "
                    f"match the heads {sorted(logits)}")
  loss, metrics = 0.0, {}
  for k, name in enumerate(names):
    log_probs = jax.nn.log_softmax(logits[name].astype(jnp.float32), axis=-1)
    target = attributes[:, k].astype(jnp.int32)
    term = -jnp.mean(jnp.take_along_axis(log_probs, target[:, None], -1))
    metrics[f"loss_{name}"] = term
    metrics[f"accuracy_{name}"] = jnp.mean(jnp.argmax(log_probs, -1) == target)
    loss = loss + term
  metrics["loss"] = loss
  return loss, metrics
