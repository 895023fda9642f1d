"""progan."""
