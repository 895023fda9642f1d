"""interpretable_cnn."""
