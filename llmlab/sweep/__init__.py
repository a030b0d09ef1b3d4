"""Sweeps: turn a multirun directory into one comparison (tables, plots, generations). `python -m llmlab.sweep DIR`."""
