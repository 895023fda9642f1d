"""readingnotes_jax: JAX/Flax reimplementations of the reading notes' vision systems."""
