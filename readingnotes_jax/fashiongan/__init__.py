"""fashiongan."""
