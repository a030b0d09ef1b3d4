"""The same prompts completed by every job's latest checkpoint, with the same seed and sampling settings.

Each job's completions are cached in its directory (`generations.json`, keyed by the settings and the
checkpoint), so rebuilding the report after every job costs one generation per new job.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict

from llmlab.config.commands import GenerateConfig
from llmlab.config.errors import ConfigError
from llmlab.files import write_atomic
from llmlab.sampling import complete
from llmlab.sweep.collect import JobRecord
from llmlab.train import checkpoint as ckpt

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = ("",)  # "" = the start of a document


def job_generations(job: JobRecord, settings: GenerateConfig) -> tuple[str, list[str]] | None:
    """(checkpoint name, completions) for a job with a checkpoint, from its cache when the settings match."""
    try:
        checkpoint, _ = ckpt.newest_intact(job.path / "checkpoints")
    except ConfigError:  # every checkpoint of this job is damaged: its row says what it reached, no completions
        return None
    if checkpoint is None:
        return None
    key = json.dumps({**asdict(settings), "run": checkpoint.name}, sort_keys=True)
    cache = job.path / "generations.json"
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: generate again
        cached = None
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("completions"), list) \
            and len(cached["completions"]) == len(settings.prompts):
        return checkpoint.name, cached["completions"]
    try:
        completions = complete(GenerateConfig(**{**asdict(settings), "run": str(checkpoint)}))
    except ConfigError as err:  # a checkpoint that will not load: no completions, the rest of the report stands
        log.warning(f"{job.name}: no generations ({err})")
        return None
    try:  # the report's own cache, the only file it writes into a job's directory
        write_atomic(cache, json.dumps({"key": key, "completions": completions}, indent=1))
    except OSError as err:  # a read-only sweep: generate again next time
        log.warning(f"{job.name}: generations not cached ({err.strerror})")
    return checkpoint.name, completions


def compare_generations(sweep_dir, jobs: list[JobRecord], labels: dict[str, str] | None = None,
                        prompts: list[str] | tuple[str, ...] = DEFAULT_PROMPTS, max_new_tokens: int = 120,
                        temperature: float = 0.8, top_k: int = 50, top_p: float = 1.0, seed: int = 0,
                        device: str = "cpu") -> list[dict]:
    """Rows {job, checkpoint, prompt, completion}; also written as generation_comparison.csv."""
    settings = GenerateConfig(run="", prompts=list(prompts), max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=seed, device=device)
    rows = []
    for job in jobs:
        found = job_generations(job, settings)
        if found is None:
            continue
        checkpoint, completions = found
        label = (labels or {}).get(job.name, job.name)
        rows += [{"job": label, "checkpoint": checkpoint, "prompt": p, "completion": c}
                 for p, c in zip(prompts, completions, strict=True)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["job", "checkpoint", "prompt", "completion"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(sweep_dir / "generation_comparison.csv", buffer.getvalue())
    return rows
