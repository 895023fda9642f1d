"""FashionGAN's losses against NumPy from torch's criteria, and a few release-style Adam steps.

torch: BCECriterion -mean(t log p + (1 - t) log(1 - p)) with p = sigmoid(logit);
SpatialClassNLLCriterion (cudnn's SpatialCrossEntropyCriterion) and CrossEntropyLoss the
mean of -log softmax at the target; AbsCriterion mean |x - y|.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.fashiongan import compose, losses, model
from numerics_testlib import EPS32, assert_within_reference

_RNG = np.random.default_rng(0)


def _bce(logits, target, dtype):
  x = logits.astype(dtype)
  p = 1 / (1 + np.exp(-x))
  return -np.mean(target * np.log(p) + (1 - target) * np.log1p(-p))


def _log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_discriminator_loss_against_torch_bce():
  real, wrong, fake = (_RNG.standard_normal(shape).astype(np.float32) * 3
                       for shape in ((4,), (4,), (4,)))
  loss, metrics = losses.discriminator_loss(real, wrong, fake)
  for key, logits, target in (("d_real", real, 1.0), ("d_wrong", wrong, 0.0),
                              ("d_fake", fake, 0.0)):
    assert_within_reference(metrics[key], _bce(logits, target, np.float32),
                            _bce(logits, target, np.float64), ulps=4, err_msg=key)
  want = [_bce(real, 1.0, d) + 0.1 * _bce(wrong, 0.0, d) + 0.9 * _bce(fake, 0.0, d)
          for d in (np.float32, np.float64)]
  assert_within_reference(loss, *want, ulps=4, err_msg="d_loss")
  release, _ = losses.discriminator_loss(real, wrong, fake, **losses.RELEASE_GRADIENT_WEIGHTS)
  np.testing.assert_allclose(release, metrics["d_real"] + metrics["d_wrong"] + metrics["d_fake"],
                             rtol=4 * EPS32)


def test_bce_is_finite_for_saturated_logits():
  """log(1 - sigmoid(40)) = -40 (torch would clamp the log at -100; float32 sigmoid is 1)."""
  np.testing.assert_allclose(losses.bce_with_logits(jnp.array([40.0, -40.0]), 0.0),
                             np.mean([40 + np.log1p(np.exp(-40)), np.log1p(np.exp(-40))]),
                             rtol=1e-6)


def test_patch_discriminator_terms_average_every_patch():
  patches = _RNG.standard_normal((2, 14, 14)).astype(np.float32)
  _, metrics = losses.discriminator_loss(patches, patches, patches)
  assert_within_reference(metrics["d_real"], _bce(patches, 1.0, np.float32),
                          _bce(patches, 1.0, np.float64), ulps=4, err_msg="patches")


def test_shape_generator_loss_against_numpy():
  logits = _RNG.standard_normal((2, 6, 5, 7)).astype(np.float32) * 2
  labels = _RNG.integers(0, 7, (2, 6, 5))
  fake = _RNG.standard_normal((2,)).astype(np.float32)
  loss, metrics = losses.shape_generator_loss(fake, logits, labels)

  def ce(dtype):
    log_p = _log_softmax(logits.astype(dtype))
    return -np.mean(np.take_along_axis(log_p, labels[..., None], -1))

  assert_within_reference(metrics["g_cross_entropy"], ce(np.float32), ce(np.float64), ulps=4,
                          err_msg="cross entropy")
  want = [_bce(fake, 1.0, d) + 100 * ce(d) for d in (np.float32, np.float64)]
  assert_within_reference(loss, *want, ulps=4, err_msg="g_loss")
  with pytest.raises(UserError, match="disagree"):
    losses.segmentation_cross_entropy(logits, labels[:, :5])


def test_image_generator_loss_against_numpy():
  images, targets = (_RNG.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32) for _ in range(2))
  fake = _RNG.standard_normal((2, 14, 14)).astype(np.float32)
  loss, metrics = losses.image_generator_loss(fake, images, targets)
  l1 = [np.mean(np.abs(images.astype(d) - targets.astype(d))) for d in (np.float32, np.float64)]
  assert_within_reference(metrics["g_l1"], *l1, ulps=4, err_msg="l1")
  want = [_bce(fake, 1.0, d) + 100 * v for d, v in zip((np.float32, np.float64), l1)]
  assert_within_reference(loss, *want, ulps=4, err_msg="g_loss")


def test_design_coding_loss_against_numpy():
  names = ("category", "colour")
  logits = {"category": _RNG.standard_normal((3, 5)).astype(np.float32),
            "colour": _RNG.standard_normal((3, 4)).astype(np.float32)}
  attributes = np.array([[0, 3], [4, 1], [2, 2]])
  loss, metrics = losses.design_coding_loss(logits, attributes, names)

  def ce(dtype):
    return sum(-np.mean(_log_softmax(logits[n].astype(dtype))[np.arange(3), attributes[:, k]])
               for k, n in enumerate(names))

  assert_within_reference(loss, ce(np.float32), ce(np.float64), ulps=4, err_msg="loss")
  np.testing.assert_allclose(metrics["accuracy_colour"],
                             np.mean(np.argmax(logits["colour"], -1) == attributes[:, 1]))
  with pytest.raises(UserError, match="do not match"):
    losses.design_coding_loss(logits, attributes, ("category", "sleeve"))


def test_adam_steps_reduce_the_shape_cross_entropy():
  """G_shape steps as sr1/train.lua's `fGx` on 2 synthetic maps: Adam 2e-4, beta1 0.5, the
  release's init, loss BCE(D(fake), 1) + 100 x cross-entropy (D fixed at its init here; the
  alternating D steps are the trainer's)."""
  G = model.ShapeGenerator(size=64, features=4)
  D = model.ShapeDiscriminator(size=64, features=4)
  labels = np.zeros((2, 64, 64), np.int32)
  labels[:, 8:20, 24:40] = 1
  labels[:, 12:20, 28:36] = 2
  labels[0, 20:40, 20:44], labels[0, 40:60, 24:40] = 3, 4
  labels[1, 20:50, 22:42], labels[1, 50:62, 26:38] = 3, 5
  condition = jnp.asarray(compose.spatial_constraint(labels))
  d = jnp.asarray(_RNG.standard_normal((2, 100)), jnp.float32)
  z = jnp.asarray(_RNG.standard_normal((2, 80)), jnp.float32)
  key_g, key_d = jax.random.split(jax.random.key(7))
  g_vars = model.initialize(G, key_g, z, d, condition, train=True)
  d_vars = model.initialize(D, key_d, jax.nn.one_hot(labels, 7), d, condition, train=True)
  adam = optax.adam(2e-4, b1=0.5)

  @jax.jit
  def step(g_vars, opt_state):
    def loss_fn(params):
      logits, stats = G.apply({"params": params, "batch_stats": g_vars["batch_stats"]}, z, d,
                              condition, train=True, mutable=["batch_stats"])
      fake_logits, _ = D.apply(d_vars, logits, d, condition, train=True,
                               mutable=["batch_stats"])
      loss, metrics = losses.shape_generator_loss(fake_logits, logits, labels)
      return loss, (metrics["g_cross_entropy"], stats)

    grads, (cross_entropy, stats) = jax.grad(loss_fn, has_aux=True)(g_vars["params"])
    updates, opt_state = adam.update(grads, opt_state)
    return {"params": optax.apply_updates(g_vars["params"], updates), **stats}, opt_state, \
        cross_entropy

  opt_state = adam.init(g_vars["params"])
  cross_entropy = []
  for _ in range(6):
    g_vars, opt_state, value = step(g_vars, opt_state)
    cross_entropy.append(float(value))
  # Logits start near 0 (kernels N(0, 0.00125^2)): the cross-entropy starts near log 7.
  assert abs(cross_entropy[0] - np.log(7)) < 0.05
  assert np.all(np.diff(cross_entropy) < 0), cross_entropy
  assert cross_entropy[-1] < cross_entropy[0] - 0.01, cross_entropy
