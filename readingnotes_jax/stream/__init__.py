"""Live video and model output in the browser over WebSocket: `python -m readingnotes_jax.stream`."""
