"""TensorBoard's HParams view of a sweep: one experiment record for all its jobs.

TensorBoard shows the columns of one experiment record, taken from whichever run holds one. A job of a multirun
therefore writes only its own session (its settings and final metrics, llmlab.train.summary.log_hparams) and the
sweep writes the experiment: the swept keys first (marked as differing, which the view sorts first and shows),
then the settings every run records, and the final metrics of every job, whatever its stage.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from llmlab.rundir import RunDir
from llmlab.rundir.summary import HPARAM_METRICS
from llmlab.sweep.collect import JobRecord
from llmlab.train.summary import flatten

SHOWN = ("stage.name", "model.n_layers", "model.d_model", "model.n_heads", "trainer.lr", "trainer.batch_size",
         "trainer.max_steps", "trainer.optimizer", "tokenizer.kind", "data.kind", "seed")


def job_settings(job: JobRecord) -> dict:
    """A job's resolved config, flattened, with its overrides (a config group like `arch` names no leaf)."""
    path = RunDir(job.path).config
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
        settings = flatten(tree) if isinstance(tree, dict) else {}
    except (OSError, ValueError, yaml.YAMLError):
        settings = {}
    return {**{k: v for k, v in job.overrides.items() if k not in settings}, **settings}


def write_hparams_experiment(sweep_dir: Path, jobs: list[JobRecord], keys: list[str]) -> Path | None:
    """The experiment record as an event file in sweep_dir itself (TensorBoard's run `.`; the jobs' own are in
    <job>/tb/), rewritten each time the report is; its path, None without jobs that ended."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    ended = [job for job in jobs if job.summary]
    if not ended:
        return None
    settings = [job_settings(job) for job in ended]
    names = [*keys, *(k for k in SHOWN if k not in keys and any(k in s for s in settings))]
    example = {}
    for name in names:  # a value's type decides the column's: the first job that has it
        value = next((s[name] for s in settings if name in s), "")
        example[name] = value if isinstance(value, bool | int | float | str) else str(value)
    metrics = {f"final/{k}": 0.0 for k in HPARAM_METRICS if any(job.summary.get(k) is not None for job in ended)}
    experiment, _, _ = hparams(example, metrics)
    data = plugin_data_pb2.HParamsPluginData.FromString(experiment.value[0].metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in keys  # the view puts differing keys first, and shows them
    experiment.value[0].metadata.plugin_data.content = data.SerializeToString()

    for old in sweep_dir.glob("events.out.tfevents.*"):  # the last report's
        old.unlink()
    writer = SummaryWriter(str(sweep_dir))
    writer.file_writer.add_summary(experiment)
    writer.close()
    return next(sweep_dir.glob("events.out.tfevents.*"), None)
