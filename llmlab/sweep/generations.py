"""The same prompts completed by every job, with the same seed and sampling settings, and the quality of what each
job writes (llmlab.sweep.quality) over several samples per prompt, so a rate is not one sample's luck.

Each job's completions are cached in its directory (`generations.json`, keyed by the settings and the
checkpoint), so rebuilding the report after every job costs one round of generation per new job.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import yaml

from llmlab.config.commands import GenerateConfig
from llmlab.config.errors import ConfigError
from llmlab.data.grammar import GrammarChecker
from llmlab.files import write_atomic
from llmlab.rundir import RunDir
from llmlab.sampling import Completion, completions
from llmlab.sweep.collect import JobRecord
from llmlab.sweep.quality import quality
from llmlab.train import checkpoint as ckpt

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = ("",)  # "" = the start of a document
QUALITY = ("distinct_1", "distinct_2", "repeat_4gram", "mean_tokens", "ended", "grammatical", "names_copied",
           "valid_documents")


def job_checkpoint(job: JobRecord, which: str):
    """The job's verified checkpoint `which` (latest | best | step_N), or None (with a warning) when it has none."""
    try:
        found, _, _ = ckpt.select_checkpoint(RunDir(job.path).checkpoints, which)
    except ConfigError as err:  # damaged, or no such checkpoint: its row says what it reached, no completions
        if RunDir(job.path).checkpoints.is_dir():
            log.warning(f"{job.name}: no generations ({err})")
        return None
    return found


def cached(job: JobRecord, key: str, expected: int) -> list[Completion] | None:
    try:
        record = json.loads(RunDir(job.path).generations.read_text(encoding="utf-8"))
        if record.get("key") != key or len(record["completions"]) != expected:
            return None
        return [Completion(str(c["text"]), int(c["tokens"]), bool(c["ended"])) for c in record["completions"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none yet, older or unreadable: generate
        return None


def job_generations(job: JobRecord, settings: GenerateConfig) -> tuple[str, list[Completion]] | None:
    """(checkpoint name, completions: num_samples per prompt) for a job with a checkpoint, cached by settings."""
    checkpoint = job_checkpoint(job, settings.checkpoint)
    if checkpoint is None:
        return None
    key = json.dumps({**asdict(settings), "run": checkpoint.name}, sort_keys=True)
    expected = len(settings.prompts) * settings.num_samples
    found = cached(job, key, expected)
    if found is not None:
        return checkpoint.name, found
    try:
        found = completions(GenerateConfig(**{**asdict(settings), "run": str(checkpoint)}))
    except ConfigError as err:  # a checkpoint that will not load: no completions, the rest of the report stands
        log.warning(f"{job.name}: no generations ({err})")
        return None
    try:  # the report's own cache, the only file it writes into a job's directory
        write_atomic(RunDir(job.path).generations,
                     json.dumps({"key": key, "completions": [asdict(c) for c in found]}, indent=1))
    except OSError as err:  # a read-only sweep: generate again next time
        log.warning(f"{job.name}: generations not cached ({err.strerror})")
    return checkpoint.name, found


def embedded_language(job: JobRecord) -> bool:
    """Whether the job trained on the embedded language (then its grammar can judge the samples)."""
    try:
        config = yaml.safe_load(RunDir(job.path).config.read_text(encoding="utf-8"))
        return config["data"]["kind"] == "synthetic"  # documents of the language (only pretraining takes them)
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False


def compare_generations(sweep_dir, jobs: list[JobRecord], labels: dict[str, str] | None = None,
                        prompts: list[str] | tuple[str, ...] = DEFAULT_PROMPTS, max_new_tokens: int = 120,
                        temperature: float = 0.8, top_k: int = 50, top_p: float = 1.0, seed: int = 0,
                        device: str = "cpu", num_samples: int = 8, checkpoint: str = "latest"
                        ) -> tuple[list[dict], list[dict], list[dict]]:
    """(every sample; side by side: the first sample per prompt of each job; quality: one row per job over all
    its samples). The report writes them as generation_comparison.csv and generation_quality.csv."""
    settings = GenerateConfig(run="", prompts=list(prompts), max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=seed, device=device, num_samples=num_samples,
                              checkpoint=checkpoint)
    side_by_side, every_sample, scores = [], [], []
    grammar = GrammarChecker()
    for job in jobs:
        found = job_generations(job, settings)
        if found is None:
            continue
        name, samples = found
        label = (labels or {}).get(job.name, job.name)
        for i, sample in enumerate(samples):
            row = {"job": label, "checkpoint": name, "prompt": prompts[i // num_samples],
                   "sample": i % num_samples, "completion": sample.text}
            every_sample.append(row)
            if i % num_samples == 0:
                side_by_side.append(row)
        scores.append({"job": label, "dir": job.name, "checkpoint": name,
                       **quality(samples, grammar if embedded_language(job) else None)})
    return every_sample, side_by_side, scores
