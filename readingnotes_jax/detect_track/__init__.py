"""Detect to Track and Track to Detect (Feichtenhofer et al., ICCV 2017)."""
