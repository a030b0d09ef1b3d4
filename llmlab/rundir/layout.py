"""The run directory's layout: the one place that names every file and folder a run writes and later commands read.

```
<run>/
  .hydra/overrides.yaml, .hydra/hydra.yaml   Hydra's record of the command (a multirun's job says so there)
  .lock                                      the writer's lock (llmlab.train.run_dir)
  config_resolved.yaml                       the fully resolved config (checksummed in every checkpoint manifest)
  dataset_stats.json                         per source: documents, tokens, split, baselines
  metrics.jsonl, metrics.json                one line per logged step; the final summary (llmlab.rundir.summary)
  monitors.jsonl                             the monitors' scalars, one line per capture (llmlab.sinks)
  val_windows.json                           per-window losses of the whole validation split
  samples.txt, alerts.jsonl                  the periodic samples; what the monitors warned of
  tokenizer/, checkpoints/                   the run's tokenizer; step_N/, best/, latest (llmlab.train.checkpoint)
  monitors/<name>/history.jsonl              each monitor's record, beside its figures
  plots/<name>.png, tb/                      the figures drawn at the end; TensorBoard's event files
  analysis/, evaluation/<checkpoint>.json    what `llmlab.analyze` and `llmlab.evaluate` add
  generations.json                           a sweep report's cache of the job's samples
```

Nothing here imports torch: the sweep report, the chat page and the model card read run directories without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from llmlab.config.errors import ConfigError
from llmlab.files import sha256_file

CONFIG_FILE = "config_resolved.yaml"
CHECKPOINTS = "checkpoints"
TOKENIZER = "tokenizer"
MANIFEST = "manifest.json"  # inside each checkpoint (llmlab.train.checkpoint writes it)


@dataclass(frozen=True)
class RunDir:
    """A run directory by its root; every path a run or a later command uses in it is a property or method here."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir:
        """The run a checkpoint directory (<run>/checkpoints/<name>) belongs to."""
        return cls(Path(checkpoint).parent.parent)

    @classmethod
    def containing(cls, path: str | Path) -> RunDir:
        """The run that `path` (a run directory, its checkpoints/ or one checkpoint in it) is part of."""
        path = Path(path).resolve()
        if (path / MANIFEST).is_file():
            return cls.of_checkpoint(path)
        if path.name == CHECKPOINTS and not (path / CHECKPOINTS).is_dir():
            return cls(path.parent)
        return cls(path)

    @staticmethod
    def checkpoints_of(path: str | Path) -> Path:
        """Where the checkpoints are, given a run directory or its checkpoints/ directory itself."""
        path = Path(path)
        return path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path

    # what the run writes as it starts
    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def dataset_stats(self) -> Path:
        return self.root / "dataset_stats.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    # what it writes as it trains
    @property
    def metrics_log(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def monitors_log(self) -> Path:
        return self.root / "monitors.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def samples(self) -> Path:
        return self.root / "samples.txt"

    @property
    def alerts(self) -> Path:
        return self.root / "alerts.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def monitors(self) -> Path:
        return self.root / "monitors"

    def monitor(self, name: str) -> Path:
        return self.monitors / name

    def monitor_history(self, name: str) -> Path:
        return self.monitor(name) / "history.jsonl"

    # what it writes as it ends
    @property
    def summary(self) -> Path:
        return self.root / "metrics.json"

    @property
    def val_windows(self) -> Path:
        return self.root / "val_windows.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"

    # what later commands add
    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    def evaluation(self, name: str) -> Path:
        """One result per checkpoint (and choice of data): evaluating another never overwrites it."""
        return self.root / "evaluation" / f"{name}.json"

    @property
    def generations(self) -> Path:
        return self.root / "generations.json"

    # Hydra's record of the command
    @property
    def hydra_overrides(self) -> Path:
        return self.root / ".hydra" / "overrides.yaml"

    @property
    def hydra_config(self) -> Path:
        return self.root / ".hydra" / "hydra.yaml"

    def verified_config(self, recorded_sha256: str | None, checkpoint: Path) -> dict:
        """config_resolved.yaml as a dict, checked against the checksum the checkpoint recorded; {} without the
        file; ConfigError when it changed since the checkpoint was written."""
        if not self.config.is_file():
            return {}
        if recorded_sha256 and sha256_file(self.config) != recorded_sha256:
            raise ConfigError(f"{self.config} has changed since checkpoint {checkpoint} was written")
        return yaml.safe_load(self.config.read_text()) or {}
