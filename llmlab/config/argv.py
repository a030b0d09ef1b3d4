"""The command line as typed, before Hydra's override grammar reads it.

Paths, whatever their names: a run or job directory may hold `=` and `,` (a multirun job is named by its
overrides, `model.n_layers=2,seed=1`), which the grammar reads as syntax. A path-valued override that does not
parse as given is quoted, so `python -m llmlab.generate run=outputs/multirun/.../model.n_layers=2,seed=1` works as
typed. One that parses is left alone: `stage.init_from=a,b` under -m still sweeps over two runs.

Free text (a prompt, a system prompt, the text analysed) is always quoted: the grammar would reject a comma or an
apostrophe, strip trailing spaces (`prompt="The "` would become `The`) and read `null`, `[...]` or `${...}`
as values, so the text reaches llmlab character for character as the shell passed it. Quotes typed inside the
value are part of the text; such a key cannot be swept with `a,b`."""

from __future__ import annotations

import re
import sys

# the overrides whose values are paths
PATH_KEYS = frozenset({"run", "out", "compare", "sweep", "stage.init_from", "hydra.run.dir", "hydra.sweep.dir",
                       "cache_dir", "model.path", "trainer.resume", "prompt_file"})
# the overrides whose values are free text, taken literally
TEXT_KEYS = frozenset({"prompt", "system", "text", "trainer.sample_prompt"})


def parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_override(override)
    except HydraException:
        return False
    return True


def quoted(value: str) -> str:
    """value as one Hydra quoted string that composes back to value exactly. In a quoted string a backslash is
    literal unless a quote or the closing quote follows it, and OmegaConf reads `${` as an interpolation and `\\${`
    as its escape, so backslash runs before those are doubled and then the marks escaped."""
    value = re.sub(r"(\\+)(?=\$\{)", r"\1\1", value)
    value = value.replace("${", "\\${")
    value = re.sub(r"(\\+)(?='|$)", r"\1\1", value)
    return "'" + value.replace("'", "\\'") + "'"


def quote_overrides(args: list[str]) -> list[str]:
    """args with every free-text value quoted, and every path value Hydra would misread."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        key = key.lstrip("+~")
        if eq and key in TEXT_KEYS:
            arg = arg[: arg.index("=") + 1] + quoted(value)
        elif eq and value and key in PATH_KEYS and value[0] not in "'\"" and not parses(arg):
            arg = arg[: arg.index("=") + 1] + quoted(value)
        out.append(arg)
    return out


def quote_arguments() -> None:
    """sys.argv with its free-text and misread path overrides quoted (each command's entry, before Hydra)."""
    sys.argv[1:] = quote_overrides(sys.argv[1:])
