"""Benchmarks: measured side by side in one process, written to JSON. `python -m llmlab.bench <name>`."""
