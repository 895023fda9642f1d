"""ProGAN's normalization layers: pixelwise feature normalization and minibatch stddev."""
import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError


def pixel_norm(x: jax.Array, epsilon: float = 1e-8) -> jax.Array:
  """x / sqrt(mean(x**2 over the last axis) + epsilon), statistics in float32.

  Matches networks.py `pixel_norm` in tkarras/progressive_growing_of_gans
  (there over the NCHW channel axis; here the last axis, which is the channel
  axis of NHWC maps and the feature axis of [N, D] latents). Paper section 4.2.
  """
  x32 = x.astype(jnp.float32)
  scale = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + epsilon)
  return (x32 * scale).astype(x.dtype)


def minibatch_stddev(x: jax.Array, group_size: int = 4) -> jax.Array:
  """Appends the average within-group standard deviation as one feature map.

  Matches networks.py `minibatch_stddev_layer` in tkarras/progressive_growing_of_gans
  (paper section 3), in NHWC: the group size is min(group_size, N); sample n
  belongs to group n mod (N / group size) (the official reshape to
  [G, M, ...]); per group, the standard deviation over the G members of every
  feature (sqrt(variance + 1e-8)), averaged over H, W and C, is appended as a
  constant channel to each member. Statistics are computed in float32.

  Args:
    x: [N, H, W, C] features; N divisible by min(group_size, N).
    group_size: samples per group.

  Returns:
    [N, H, W, C + 1] in the dtype of `x`.
  """
  n, h, w, c = x.shape
  group = min(group_size, n)
  if group < 1 or n % group:
    raise UserError(f"minibatch_stddev: batch {n} is not divisible by group size "
                    f"{group}: use a batch that is a multiple of {group}")
  y = x.astype(jnp.float32).reshape(group, n // group, h, w, c)
  y = y - jnp.mean(y, axis=0, keepdims=True)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [M, H, W, C]
  y = jnp.mean(y, axis=(1, 2, 3))  # [M]
  y = jnp.tile(y, group).astype(x.dtype)  # [N]: sample n gets y[n mod M]
  y = jnp.broadcast_to(y[:, None, None, None], (n, h, w, 1))
  return jnp.concatenate([x, y], axis=-1)
