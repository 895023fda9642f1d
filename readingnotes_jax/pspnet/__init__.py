"""pspnet."""
