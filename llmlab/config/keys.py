"""The one list of config keys that do not change what a run studies: where it runs, how fast, how visibly.

A run resumed under other values of these is the same run (llmlab.train.run_dir); a sweep report neither names
its jobs by them nor tells jobs apart by them, unless the sweep itself varies one (llmlab.sweep.collect,
llmlab.store). Hydra's own keys (hydra.*) say only where the files go, and are free too.
"""

from __future__ import annotations

FREE_KEYS = ("out_dir", "device", "cache_dir", "tokenizer.cache_dir", "trainer.progress", "trainer.threads",
             "trainer.resume", "trainer.allow_config_change", "trainer.allow_data_change", "trainer.peak_flops",
             "trainer.compile", "trainer.activation_checkpointing", "monitors", "sweep", "logger")


def is_free(key: str) -> bool:
    """Whether a dotted key (or a whole node: `monitors`) is one of FREE_KEYS or lies under one."""
    return key.startswith("hydra.") or any(key == free or key.startswith(free + ".") for free in FREE_KEYS)
