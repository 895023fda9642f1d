"""2x nearest-neighbour upsampling and 2x box (average-pool) downsampling, NHWC."""
import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """[N, H, W, C] -> [N, 2H, 2W, C], each pixel repeated in a 2x2 square.

  Matches networks.py `upscale2d` (factor 2) in tkarras/progressive_growing_of_gans.
  """
  n, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
  return x.reshape(n, 2 * h, 2 * w, c)


def downsample_avg_2x(x: jax.Array) -> jax.Array:
  """[N, H, W, C] -> [N, H/2, W/2, C], the mean of each 2x2 square.

  Matches networks.py `downscale2d` (factor 2, 'VALID' average pool) in
  tkarras/progressive_growing_of_gans.
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise UserError(f"downsample_avg_2x needs even height and width, got {h}x{w}: "
                    "pad or resize the input to an even size")
  return jnp.mean(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))
