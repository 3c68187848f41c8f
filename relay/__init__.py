"""An intermediate gateway without a private key: verifies, multiplies, forwards one partial sum."""
