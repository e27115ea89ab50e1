"""The pipeline: load and check models, channel rewrites, layer rounding, pass selection,
quantize, deploy."""
