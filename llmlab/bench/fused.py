"""The fused pieces against what they replace, forward + backward, interleaved in one process (CPU by default):
RMSNorm (llmlab's node vs `F.rms_norm` vs the plain formula), RoPE on q and k at once vs the plain formula on
each, GELU exact vs tanh, and q/k/v as one matmul vs three at each --widths (what fuse_qkv_pays decides).
Each figure is the median of per-round ratios (< 1: the first is faster). Written to bench/fused.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--widths", nargs="+", type=int, default=[128, 256, 512, 768])
    parser.add_argument("--tokens", type=int, default=2048, help="batch x context of each activation")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="bench/fused.json")


def race(contenders: dict, make_input, repeats: int) -> dict:
    """Median ms of forward + backward of each contender and each one's median per-round ratio to the first."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(repeats + 2):
        for name in names[i % len(names):] + names[: i % len(names)]:
            x = make_input()
            start = time.perf_counter()
            outs = contenders[name](x)
            outs = outs if isinstance(outs, list | tuple) else [outs]
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    first = names[0]
    return {name: {"ms": statistics.median(t) * 1000,
                   f"{first}_over_this": statistics.median(a / b for a, b in zip(times[first], t, strict=True))}
            for name, t in times.items()}


def main(args: argparse.Namespace) -> None:
    from llmlab.model.fused import rms_norm, rotate_heads
    from llmlab.model.transformer import apply_rope, fused_linear

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, T = max(1, args.tokens // 128), 128
    report: dict = {"threads": torch.get_num_threads(), "tokens": B * T, "torch": torch.__version__}
    d = 128
    w = torch.randn(d, requires_grad=True)
    report["rms_norm"] = race({
        "fused": lambda x: rms_norm(x, w, 1e-5),
        "F.rms_norm": lambda x: F.rms_norm(x, (d,), w, 1e-5),
        "plain": lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w,
    }, lambda: torch.randn(B, T, d, requires_grad=True), args.repeats)
    H, hd = 4, 32
    angles = torch.outer(torch.arange(float(T)), torch.rand(hd // 2))
    cos, sin = angles.cos(), angles.sin()
    report["rope"] = race({  # q and k of 4 heads each, as the model holds them: (B, T, 8, hd)
        "fused_q_and_k": lambda qk: rotate_heads(qk, cos[:, None], sin[:, None]),
        "plain_each": lambda qk: [apply_rope(t.transpose(1, 2), cos, sin) for t in (qk[:, :, :H], qk[:, :, H:])],
    }, lambda: torch.randn(B, T, 2 * H, hd, requires_grad=True), args.repeats)
    report["gelu"] = race({"exact": lambda x: F.gelu(x), "tanh": lambda x: F.gelu(x, approximate="tanh")},
                          lambda: torch.randn(B, T, 4 * d, requires_grad=True), args.repeats)
    report["qkv"] = {}
    for width in args.widths:
        linears = [torch.nn.Linear(width, width, bias=False) for _ in range(3)]
        report["qkv"][width] = race({"one_matmul": lambda x, ls=linears: fused_linear(x, *ls),
                                     "three": lambda x, ls=linears: [m(x) for m in ls]},
                                    lambda w=width: torch.randn(B, T, w, requires_grad=True), args.repeats)
    for name in ("rms_norm", "rope", "gelu"):
        print(name + ": " + ", ".join(f"{k} {v['ms']:.2f} ms" for k, v in report[name].items()))
    for width, r in report["qkv"].items():
        print(f"qkv d={width}: one matmul / three = {r['three']['one_matmul_over_this']:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
