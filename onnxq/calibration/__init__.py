"""Calibration: one streaming front end that runs the float model and feeds observers, and what
is built on it (per-channel statistics, layer inputs, error estimates, the calibration cache)."""
