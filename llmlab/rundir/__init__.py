"""The run directory as a product: its layout (RunDir) and its final summary (RunSummary, metrics.json)."""

from llmlab.rundir.layout import CONFIG_FILE, RunDir

__all__ = ["CONFIG_FILE", "RunDir"]
