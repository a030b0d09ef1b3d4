"""Where a run's scalars and text go: one interface (Sink), fanned out by MetricSinks to every sink the run has.

The trainer logs through the run's sinks; monitors log through their own fan-out (the same TensorBoard and W&B
sinks, with monitors.jsonl in place of metrics.jsonl). Only llmlab/sinks/ knows a writer's API.
"""

from llmlab.sinks.base import JsonlSink, MetricSinks, Sink

__all__ = ["JsonlSink", "MetricSinks", "Sink"]
