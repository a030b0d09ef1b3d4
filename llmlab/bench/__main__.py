"""`python -m llmlab.bench <name> [options]`: run a benchmark, write its JSON (bench/<name>.json)."""

from __future__ import annotations

import argparse
import sys

from llmlab.bench import (
    analyze_memory,
    chat_memory,
    circuits,
    compile_pays,
    config_error,
    data_pipeline,
    fused,
    generation,
    gpu,
    moe,
    monitors,
    muon_step,
    scaling,
    soak,
    threads,
    time_to_loss,
    vs_transformers,
)

BENCHMARKS = {"monitors": monitors, "soak": soak, "analyze-memory": analyze_memory, "gpu": gpu,
              "vs-transformers": vs_transformers, "generation": generation,
              "data": data_pipeline, "scaling": scaling, "moe": moe, "circuits": circuits,
              "compile-pays": compile_pays, "config-error": config_error, "fused": fused, "threads": threads,
              "muon-step": muon_step, "time-to-loss": time_to_loss, "chat-memory": chat_memory}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmlab.bench", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True)
    for name, module in BENCHMARKS.items():
        module.add_arguments(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    BENCHMARKS[args.name].main(args)


if __name__ == "__main__":
    sys.exit(main())
