"""Objectives: the loss a batch gives, side by side. The trainer is the same loop for every stage; a stage picks
its objective: next-token (pretraining, SFT), DPO (preference pairs), GRPO (sampled rollouts and their rewards).
Each loss is a mean over what `targets_in` counts, and the trainer weighs micro-batches by those counts."""

from llmlab.train.objectives.base import NextTokenObjective, Objective, with_auxiliary
from llmlab.train.objectives.dpo import DPOObjective, sequence_logps
from llmlab.train.objectives.grpo import GRPOObjective, RolloutBatch, completion_logps

__all__ = ["DPOObjective", "GRPOObjective", "NextTokenObjective", "Objective", "RolloutBatch", "completion_logps",
           "sequence_logps", "with_auxiliary"]
