"""The one exception a user's mistake becomes, and the small checks that raise it."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class ConfigError(ValueError):
    """A user's config or input mistake: printed as one line, never as a traceback."""


def check_finite(name: str, value: float) -> None:
    if value is None or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")


def check_positive(name: str, value: float) -> None:
    if value is not None and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number > 0, got {value}")
    if value is None or value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


# numpy's generators take [0, 2**32); derived seeds (seed * 1_000_003 + epoch) stay within torch's 64 bits
SEED_LIMIT = 2**32


def check_seed(name: str, value: int) -> None:
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{name} must be an integer in [0, {SEED_LIMIT - 1}], got {value}")


def check_choice(name: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {'|'.join(allowed)}, got {value!r}")


def first_few(items: list[str], n: int, sep: str = ", ") -> str:
    """The first n items for a one-line message, and how many more there are."""
    return sep.join(items[:n]) + (f"{sep}and {len(items) - n} more" if len(items) > n else "")


def find_config_error(exc: BaseException) -> ConfigError | None:
    """OmegaConf wraps errors raised in __post_init__; dig ours out of the chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConfigError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def exit_on_config_error() -> Iterator[None]:
    """For the commands: a ConfigError ends the process with one line on stderr and exit code 2."""
    try:
        yield
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
