"""The run directory as a product: its layout (RunDir) and its final summary (RunSummary, metrics.json)."""

from llmlab.rundir.layout import CONFIG_FILE, RunDir
from llmlab.rundir.summary import METRICS, RunSummary, read_summary

__all__ = ["CONFIG_FILE", "METRICS", "RunDir", "RunSummary", "read_summary"]
