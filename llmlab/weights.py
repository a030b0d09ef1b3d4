"""Checks on a weight file before anything is built from it: is it a safetensors file at all, does it hold the
tensors (names, shapes, float dtypes) the declared model needs, and does that model fit in memory.

A checkpoint manifest or a config.json declares a model's sizes; trusting them blindly means allocating whatever
they say (64 layers of width 8192: 200 GB) before reading a byte of weights. Here safetensors reads and validates
the file's header only, the tensors a model needs come from a one-layer copy of it on the meta device (all layers
are alike; a meta layer still costs ~35 kB of Python objects, so the declared n_layers is never built), and are
compared with the header lazily, layer by layer (a declared 10**7 layers stops at the first one the file lacks).
Every refusal is one ConfigError line, quick, with no tensor allocated.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig
from llmlab.model.lora import ADAPTER_SUFFIXES, apply_lora
from llmlab.model.transformer import Transformer

MAX_HEADER_BYTES = 100_000_000  # what safetensors accepts as a header; also the bound on an index file
FLOAT_DTYPES = ("F32", "BF16", "F16", "F64")  # what a weight may be stored as (copied into fp32 on load)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header describes it."""

    dtype: str
    shape: tuple[int, ...]
    file: Path


@dataclass(frozen=True)
class Expected:
    """A tensor a model needs: stored under any one of names (tied weights are stored once), with this shape."""

    names: tuple[str, ...]
    shape: tuple[int, ...]
    required: bool = True


def _short(name: object) -> str:
    """A tensor name fit for a one-line message (a crafted header may hold anything)."""
    text = str(name)
    return text if len(text) <= 100 and text.isprintable() else repr(text[:100]) + "..."


def _shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def read_header(path: Path, prefix: str = "") -> dict[str, TensorInfo]:
    """The tensors of a safetensors file, once safetensors has validated its header (size, JSON, dtypes, offsets
    covering the file exactly); ConfigError naming the file otherwise. Loads no tensor."""
    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            return {name: TensorInfo(s.get_dtype(), tuple(s.get_shape()), path) for name, s in slices.items()}
    except (SafetensorError, OSError) as e:
        what = "is not a valid safetensors file" if isinstance(e, SafetensorError) else "cannot be read"
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise ConfigError(f"{prefix}{path} {what} ({reason})") from None


def check_tensors(found: dict[str, TensorInfo], expected: Iterable[Expected], declared: str, source: str,
                  prefix: str = "", strict: bool = True) -> None:
    """ConfigError unless every required tensor of `expected` is in `found` as floats of its shape (and, strict,
    found holds nothing else). Lazy: stops at the first problem, so a declared model far larger than the file
    is never enumerated. declared names what declares the model ("the model in .../manifest.json"); source
    names the file(s) for a missing or extra tensor."""
    known = set()
    for entry in expected:
        known.update(entry.names)
        present = [n for n in entry.names if n in found]
        if not present and entry.required:
            raise ConfigError(f"{prefix}{source}: no tensor {entry.names[0]}, which {declared} needs "
                              f"({_shape(entry.shape)})")
        for name in present:
            info = found[name]
            if info.dtype not in FLOAT_DTYPES:
                raise ConfigError(f"{prefix}{info.file}: tensor {name} is {info.dtype}; expected floating-point "
                                  f"weights ({', '.join(FLOAT_DTYPES)})")
            if info.shape != entry.shape:
                raise ConfigError(f"{prefix}{info.file}: tensor {name} is {_shape(info.shape)}, but {declared} "
                                  f"needs {_shape(entry.shape)}")
    if strict:
        extra = [n for n in found if n not in known]
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise ConfigError(f"{prefix}{source}: tensor {_short(extra[0])}{more} is not part of {declared}")


# ---- the llmlab Transformer's tensors, from one meta-device layer of it ------------------------------------
def _templates(cfg: ModelConfig) -> tuple[ModelConfig, list[bool]]:
    """The config of a model whose blocks are one of each kind cfg has (a dense block, then a MoE block: as
    many as cfg has kinds, whatever n_layers and model.moe.every say), and which kinds those are (True: MoE)."""
    kinds = sorted({cfg.moe.is_moe(i) for i in (0, cfg.moe.every - 1) if i < cfg.n_layers})
    if True not in kinds:  # no block is MoE (a dense model, or every > n_layers)
        return dataclasses.replace(cfg, n_layers=1, moe=dataclasses.replace(cfg.moe, experts=0)), kinds
    every = 2 if kinds == [False, True] else 1  # block 1 of 2 is the MoE one
    return dataclasses.replace(cfg, n_layers=len(kinds), moe=dataclasses.replace(cfg.moe, every=every)), kinds


def _template_of(cfg: ModelConfig, layer: int, kinds: list[bool]) -> int:
    return kinds.index(cfg.moe.is_moe(layer))


def _one_layer(cfg: ModelConfig, lora: bool) -> Transformer:
    """Transformer(cfg) with one block of each kind (dense, MoE), on the meta device; lora: with (cfg.lora.rank)
    adapters on every linear."""
    with torch.device("meta"):
        model = Transformer(_templates(cfg)[0])
        if lora and cfg.lora.rank:
            apply_lora(model, cfg.lora.rank, cfg.lora.alpha, 0.0, ["all"])
    return model


def model_tensors(cfg: ModelConfig, adapters: bool = False, layers: Iterable[int] | None = None
                  ) -> Iterator[Expected]:
    """Transformer(cfg)'s state dict in its order, each tied tensor once under all its names; blocks.0's entries
    repeated for each of layers (default: all). adapters: the LoRA adapters apply_lora may add instead, none
    required (which ones it adds is checked where the adapters load)."""
    state = _one_layer(cfg, adapters).state_dict(keep_vars=True)  # Parameters: a tied one is one object twice
    names: dict[int, list[str]] = {}
    for name, tensor in state.items():
        if not adapters or name.endswith(ADAPTER_SUFFIXES):
            names.setdefault(id(tensor), []).append(name)
    entries = [Expected(tuple(n), tuple(state[n[0]].shape), not adapters) for n in names.values()]
    kinds = _templates(cfg)[1]
    blocks = [[e for e in entries if e.names[0].startswith(f"blocks.{j}.")] for j in range(len(kinds))]
    inside = [e for block in blocks for e in block]
    start = entries.index(inside[0]) if inside else len(entries)
    yield from entries[:start]
    for i in range(cfg.n_layers) if layers is None else layers:
        j = _template_of(cfg, i, kinds)
        template = f"blocks.{j}."
        for e in blocks[j]:
            yield dataclasses.replace(e, names=tuple(f"blocks.{i}.{n.removeprefix(template)}" for n in e.names))
    yield from entries[start + len(inside):]


def check_model_file(found: dict[str, TensorInfo], cfg: ModelConfig, declared: str, source: str, prefix: str = "",
                     adapters: bool = False) -> None:
    """check_tensors for Transformer(cfg): found holds exactly its tensors, or (adapters) only LoRA adapters of
    its layers (those of the layers the file names, so a forged n_layers is not enumerated)."""
    layers = None
    if adapters:
        named = {int(m[1]) for name in found if (m := re.match(r"blocks\.(\d{1,9})\.", name))}
        layers = sorted(i for i in named if i < cfg.n_layers)
    check_tensors(found, model_tensors(cfg, adapters, layers), declared, source, prefix)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def parameter_count(cfg: ModelConfig) -> int:
    """Elements of Transformer(cfg)'s parameters and buffers (the RoPE tables), plus (lora.rank > 0) at most its
    adapters: a meta model of one block per kind (dense, MoE), each counted as often as cfg has it."""
    model = _one_layer(cfg, lora=True)
    outside = _numel(model) - sum(_numel(b) for b in model.blocks)
    moe_layers = cfg.n_layers // cfg.moe.every if cfg.moe.experts else 0  # blocks every, 2 * every, ...
    counts = {False: cfg.n_layers - moe_layers, True: moe_layers}  # arithmetic: a forged n_layers costs nothing
    return outside + sum(_numel(block) * counts[kind] for block, kind in zip(model.blocks, _templates(cfg)[1],
                                                                              strict=True))


# ---- memory ----------------------------------------------------------------------------------------------
def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of the kernel's MemAvailable (else physical memory),
    a cgroup memory limit less its usage, and an address-space rlimit less what is mapped. None if unknown."""
    known = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                known.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not known:
        try:
            known.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # "max" or a huge number: no limit
            known.append(max(limit - usage, 0))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        mapped = _read_int("/proc/self/statm")
        known.append(max(soft - (mapped or 0) * resource.getpagesize(), 0))
    return min(known) if known else None


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_memory(cfg: ModelConfig, what: str) -> None:
    """ConfigError naming `what` when Transformer(cfg) in fp32 would not fit in the memory available."""
    need = 4 * parameter_count(cfg)
    available = available_memory()
    if available is not None and need > available:
        raise ConfigError(
            f"{what}: a model of model.n_layers={cfg.n_layers}, model.d_model={cfg.d_model}, "
            f"model.vocab_size={cfg.vocab_size}, model.context_length={cfg.context_length} needs {_size(need)} in "
            f"fp32, more than the {_size(available)} of memory available")
