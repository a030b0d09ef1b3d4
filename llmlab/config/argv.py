"""Paths on the command line, whatever their names: a run or job directory may hold `=` and `,` (a multirun job
is named by its overrides, `model.n_layers=2,seed=1`), which Hydra's override grammar reads as syntax. Before
Hydra sees the command line, a path-valued override that does not parse as given is quoted, so
`python -m llmlab.generate run=outputs/multirun/.../model.n_layers=2,seed=1` works as typed. One that parses is
left alone: `stage.init_from=a,b` under -m still sweeps over two runs."""

from __future__ import annotations

import sys

# the overrides whose values are paths
PATH_KEYS = frozenset({"run", "out", "compare", "sweep", "stage.init_from", "hydra.run.dir", "hydra.sweep.dir",
                       "cache_dir", "model.path", "trainer.resume"})


def parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_override(override)
    except HydraException:
        return False
    return True


def quoted(value: str) -> str:
    """value as one Hydra quoted string: its quotes and interpolation marks escaped (a backslash is literal there
    unless a quote follows it)."""
    return "'" + value.replace("'", "\\'").replace("${", "\\${") + "'"


def quote_paths(args: list[str]) -> list[str]:
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and value and key.lstrip("+~") in PATH_KEYS and value[0] not in "'\"" and not parses(arg):
            arg = f"{key}={quoted(value)}"
        out.append(arg)
    return out


def quote_path_arguments() -> None:
    """sys.argv with its path-valued overrides quoted where Hydra would misread them (each command's entry)."""
    sys.argv[1:] = quote_paths(sys.argv[1:])
