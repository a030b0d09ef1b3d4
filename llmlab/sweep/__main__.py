"""`python -m llmlab.sweep DIR`: (re)build the report of a sweep directory, finished, running or crashed."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from llmlab.config.errors import ConfigError
from llmlab.sweep.report import check_choices, write_sweep_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.sweep", description=__doc__)
    parser.add_argument("sweep_dir", help="outputs/multirun/<date>/<time>")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-generations", action="store_true")
    parser.add_argument("--prompt", action="append", help="a prompt for the generation comparison (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=8, help="samples per prompt for the generation quality")
    parser.add_argument("--checkpoint", default="latest", help="which checkpoint generates: latest | best | step_N")
    parser.add_argument("--reference", help="the setting others are compared against (default: the sweep's "
                                            "sweep.reference, else the first): a value, or key=value,key=value")
    args = parser.parse_args(argv)
    generations = None if args.no_generations else {
        "prompts": args.prompt or [""], "max_new_tokens": args.max_new_tokens, "seed": args.seed,
        "num_samples": args.num_samples, "checkpoint": args.checkpoint}
    try:
        check_choices(args.sweep_dir, args.reference, None if args.no_generations else args.checkpoint)
        report = write_sweep_report(args.sweep_dir, plots=not args.no_plots, generations=generations,
                                    reference=args.reference)
    except OSError as err:  # no such directory, no jobs in it, or it cannot be written
        print(f"error: {f'{err.filename}: {err.strerror}' if err.filename else err}", file=sys.stderr)
        return 2
    except ConfigError as err:  # a reference that names no setting
        print(f"error: {err}", file=sys.stderr)
        return 2
    statuses = Counter(row["status"] for row in report["jobs"])
    done = statuses.pop("completed", 0)
    print(f"{len(report['jobs'])} jobs ({done} completed), swept: {', '.join(report['swept']) or '(nothing)'}")
    if statuses:
        print("not completed: " + ", ".join(f"{n} {status}" for status, n in statuses.items()))
    if report["summary"]:
        print(report["summary"])
    print(f"report: {args.sweep_dir}/sweep_summary.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
