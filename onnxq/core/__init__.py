"""Numeric core: schemes, configuration, quantization math, observers, weight and feature
parameters, rounding and scale decomposition."""
