"""Experiments: sweep specifications, sweeps, tables, plots and the demo."""
