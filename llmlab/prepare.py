"""`python -m llmlab.prepare [run overrides]`: tokenize a run's data=hf or data=mix sources into token shards ahead
of training, with every core; resumable (run it again after an interruption and it continues part by part).

It takes the same overrides as `python -m llmlab.run` and trains the same tokenizer (or takes model=hf's), so the
run that follows finds its shards prepared and only verifies them. It writes no run directory.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from llmlab.config.errors import ConfigError, exit_on_config_error
from llmlab.config.schema import HFDataConfig, MixDataConfig
from llmlab.data.prepared import PreparedSource, prepare_sources, tokenizer_sample
from llmlab.data.tokenizers import Tokenizer, build_tokenizer
from llmlab.files import disk_full


def run_tokenizer(cfg) -> Tokenizer:
    """The tokenizer a new run of this config trains (or model=hf's own)."""
    if cfg.model.path:
        from llmlab.interop.hf_import import pretrained_tokenizer

        return pretrained_tokenizer(cfg.model)
    return build_tokenizer(cfg.tokenizer, tokenizer_sample(cfg.data, Path(cfg.cache_dir)))[0]


def prepare(overrides: list[str]) -> list[PreparedSource]:
    # imported here: the tokenizing processes import this module again, and need neither Hydra nor torch
    from llmlab.store import compose_run_config

    cfg = compose_run_config(overrides, out_dir=".")
    if not isinstance(cfg.data, HFDataConfig | MixDataConfig) or cfg.data.kind not in ("hf", "mix"):
        raise ConfigError(f"data={cfg.data.kind}: python -m llmlab.prepare tokenizes data=hf or data=mix for "
                          "pretraining; other data is encoded when the run starts")
    return prepare_sources(cfg.data, run_tokenizer(cfg), Path(cfg.cache_dir))


def stop_on_sigterm(signum, frame) -> None:
    """A scheduler's SIGTERM ends preparation as Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        with exit_on_config_error():
            prepared = prepare(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt as why:  # the parts written are whole and kept; the one being written is removed
        print(f"error: stopped by {str(why) or 'SIGINT'}; every part written so far is kept, none half-written: "
              "run the same command again to continue", file=sys.stderr)
        sys.exit(130)
    except OSError as err:
        if (full := disk_full(err)) is None:
            raise
        print(f"error: {full.filename}: {full.strerror}; free some space and run the same command again to "
              "continue (every part written so far is kept, none half-written)", file=sys.stderr)
        sys.exit(1)
    for p in prepared:
        s = p.stats
        print(f"{p.name}: {s['train_documents']:,} train / {s['val_documents']:,} validation documents, "
              f"{s['train_tokens']:,} / {s['val_tokens']:,} tokens in {len(p.train.paths) + len(p.val.paths)} shards "
              f"at {p.directory}")
    print(f"prepared in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
