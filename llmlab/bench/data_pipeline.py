"""Data pipeline: batches/s from the memory-mapped token stream vs the training step's need, tokenizer training and
encoding time per kind, parallel tokenization into shards, and the peak memory of preparing and training on large
corpora.

Batches: `TrainBatches` draws random windows from --tokens random uint16 tokens written to a temporary file and
memory-mapped as llmlab.data.pipeline's `cached_token_stream` does (just written, so from the page cache), including
the `.to(device)` copy; a training step (forward + backward + the trainer's AdamW, shape from conf/model) of the
same batch is timed beside it. headroom = step_ms / data_ms_per_batch: how many times faster data comes than steps
use it.

Tokenizers: --text-mb MB (10^6 characters, ASCII) of the synthetic language, joined as the runner joins it,
each kind trained with `build_tokenizer` into an empty temporary cache, then the documents encoded with
`encode_documents` (the token-stream path). Sentencepiece kinds train on the first --train-mb MB when given
(`trained_on_mb`); the tokenizer itself thins texts over 10M characters to about 10M.

Parallel: a --parallel-mb MB JSONL corpus (documents of ~5 KB) is converted to Arrow once, then tokenized into
shards (`write_shards`, pool start included) with 1 process and with every core, for each of --parallel-kinds.

Memory: for each --memory-mb size, a JSONL corpus is generated under --tmp and `python -m llmlab.prepare` (char
tokenizer) runs in a subprocess whose process tree's resident memory is sampled every 0.2 s (all resident pages,
and the anonymous ones: the rest are file pages of memory maps, which the kernel can drop); then a short training
run on the largest corpus's shards. Every corpus and its shards are deleted afterwards. Written to bench/data.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHAPES = {"tiny": 32, "small": 8, "medium": 2}  # batch per conf/model preset; tiny's is trainer.batch_size's default
KINDS = ("char", "byte", "bpe", "unigram")


def batch_rates(size: str, batch: int, tokens: np.ndarray, args: argparse.Namespace) -> dict:
    from llmlab.bench.scaling import model_config, step_seconds
    from llmlab.config.schema import TrainerConfig
    from llmlab.data.dataset import TrainBatches
    from llmlab.model.transformer import Transformer
    from llmlab.train.optim import build_optimizer

    device = torch.device("cpu")
    cfg = model_config(size, args.vocab)
    batches = TrainBatches(tokens, batch, cfg.context_length, seed=0)
    for _ in range(10):
        batches.next()
    start = time.perf_counter()
    for _ in range(args.batches):
        x, y = batches.next()
        x, y = x.to(device), y.to(device)
    data_ms = (time.perf_counter() - start) * 1000 / args.batches

    torch.manual_seed(0)
    model = Transformer(cfg).to(device).train()
    optimizer = build_optimizer(model, TrainerConfig(optimizer="adamw"), device)
    times = [step_seconds(model, optimizer, *batches.next()) for _ in range(args.warmup + args.steps)]
    step_ms = statistics.median(times[args.warmup:]) * 1000
    return {"batch": batch, "context_length": cfg.context_length, "data_ms_per_batch": data_ms,
            "batches_per_s": 1000 / data_ms, "step_ms": step_ms, "headroom": step_ms / data_ms}


def synthetic_docs(mb: float, seed: int = 1234) -> list[str]:
    """Documents of the synthetic language whose newline-joined text is at most mb x 10^6 characters."""
    from llmlab.data.synthetic import Language, sample_documents

    docs, size, limit, chunk = [], -1, int(mb * 1e6), 0
    while True:
        for doc in sample_documents(Language(), 10_000, seed=seed + chunk)[0]:
            if size + 1 + len(doc) > limit:
                return docs
            docs.append(doc)
            size += 1 + len(doc)
        chunk += 1


def tokenizer_times(kind: str, docs: list[str], train_docs: list[str]) -> dict:
    from omegaconf import OmegaConf

    from llmlab.config.schema import TokenizerConfig
    from llmlab.data.pipeline import encode_documents
    from llmlab.data.tokenizers import _TRAIN_CHARS, build_tokenizer
    from llmlab.store import CONF_DIR

    fields = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "tokenizer" / f"{kind}.yaml"))
    text = "\n".join(train_docs)
    with tempfile.TemporaryDirectory() as cache:  # empty: every run trains
        cfg = TokenizerConfig(**fields, cache_dir=cache)
        start = time.perf_counter()
        tokenizer, cached = build_tokenizer(cfg, text)
        train_s = time.perf_counter() - start
    assert not cached
    start = time.perf_counter()
    ids = encode_documents(tokenizer, docs)
    encode_s = time.perf_counter() - start
    chars = sum(map(len, docs))
    thinned = math.ceil(len(text) / _TRAIN_CHARS) if kind in ("bpe", "unigram") else 1  # sentencepiece's stride
    return {"vocab_size": tokenizer.vocab_size, "train_s": train_s, "encode_s": encode_s,
            "encode_mb_per_s": chars / 1e6 / encode_s, "tokens": len(ids), "chars_per_token": chars / len(ids),
            "trained_on_mb": len(text) / thinned / 1e6,
            "round_trip": tokenizer.decode(ids) == "".join(docs)}  # decode drops the eos between documents


def write_corpus(path: Path, mb: float) -> dict:
    """minimind-style pretraining JSONL ({"text": ...} per line) of about mb x 10^6 characters: documents of ~5 KB
    (40 synthetic-language documents joined by newlines, numbered so no two are equal), written as a stream."""
    pool = synthetic_docs(min(mb, 4.0))
    docs = ["\n".join(pool[i:i + 40]) for i in range(0, len(pool) - 39, 40)]
    chars, count = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while chars < mb * 1e6:
            text = f"{count}. {docs[count % len(docs)]}"
            f.write(json.dumps({"text": text}) + "\n")
            chars, count = chars + len(text), count + 1
    return {"documents": count, "characters": chars, "file_mb": path.stat().st_size / 1e6}


def parallel_rates(kinds: list[str], mb: float, processes: int, tmp: Path) -> dict:
    """Tokenization into shards (write_shards: the pool, reading rows, encoding, writing and hashing shards) with
    one process and with `processes`, per tokenizer kind, on the same Arrow-converted corpus."""
    import shutil

    from llmlab.config.schema import HFDataConfig, TokenizerConfig
    from llmlab.data.hf import open_source
    from llmlab.data.prepared import saved_tokenizer, source_jobs, tokenizer_sample
    from llmlab.data.shards import write_shards
    from llmlab.data.tokenizers import build_tokenizer

    corpus = write_corpus(tmp / "corpus.jsonl", mb)
    start = time.perf_counter()
    data = HFDataConfig(path=str(tmp / "corpus.jsonl"), sample_chars=10_000_000)
    opened = open_source(data, tmp / "cache")
    result = {"corpus": corpus, "arrow_conversion_s": time.perf_counter() - start, "processes": processes}
    shard_docs = max(1, len(opened.train) // (8 * processes))  # 8 parts per process: the pool stays busy to the end
    result["shard_docs"] = shard_docs
    for kind in kinds:
        vocab = {"bpe": 4096, "unigram": 4096}.get(kind, 0)
        tokenizer, _ = build_tokenizer(TokenizerConfig(kind=kind, vocab_size=vocab, cache_dir=str(tmp / "tok")),
                                       tokenizer_sample(data, tmp / "cache"))
        _, tokenizer_dir = saved_tokenizer(tokenizer, tmp / "shards")
        rates = {}
        for n in sorted({1, processes}):
            directory = tmp / "shards" / f"{kind}-{n}"
            jobs = source_jobs(opened, data.text_field, tokenizer_dir, directory, shard_docs)
            start, cpu = time.perf_counter(), cpu_seconds()
            write_shards(jobs, directory, n, progress=False)
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            # cpu: this process and its (reaped) pool; cpu / seconds = the cores it got on a shared machine
            rates[n] = {"seconds": seconds, "mb_per_s": corpus["characters"] / 1e6 / seconds, "cpu_s": cpu,
                        "cores_used": cpu / seconds}
            shutil.rmtree(directory)
        result[kind] = {"vocab_size": tokenizer.vocab_size, **{f"{n}_processes": r for n, r in rates.items()},
                        "speedup": rates[1]["seconds"] / rates[processes]["seconds"]}
        print(f"tokenize {kind}: 1 process {rates[1]['mb_per_s']:.1f} MB/s, {processes} processes "
              f"{rates[processes]['mb_per_s']:.1f} MB/s (x{result[kind]['speedup']:.2f}; cores used "
              f"{rates[1]['cores_used']:.2f} and {rates[processes]['cores_used']:.2f})")
    return result


def cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def tree_memory(pid: int) -> tuple[int, int]:
    """(resident, anonymous resident) bytes of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    rss = anon = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        except OSError:
            continue
        rss += int(status.get("VmRSS", "0 kB").split()[0]) * 1024
        anon += int(status.get("RssAnon", "0 kB").split()[0]) * 1024
    return rss, anon


def peak_memory(command: list[str], cwd: Path) -> dict:
    """Run a command; its process tree's peak resident memory (sampled every 0.2 s) and wall time."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_rss = peak_anon = 0
    while proc.poll() is None:
        rss, anon = tree_memory(proc.pid)
        peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
        time.sleep(0.2)
    output = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss / 2**20,
            "peak_anon_rss_mb": peak_anon / 2**20, "output_tail": output.strip().splitlines()[-3:]}


def memory_profile(sizes: list[float], tmp: Path, train_steps: int) -> dict:
    """Peak memory of `python -m llmlab.prepare` on generated corpora of each size (char tokenizer), and of a short
    training run on the largest one's shards. Each corpus and its shards are deleted before the next."""
    import shutil
    import sys

    results = {}
    for mb in sizes:
        work = tmp / f"mem-{mb:g}"
        work.mkdir()
        corpus = write_corpus(work / "corpus.jsonl", mb)
        args = ["data=hf", f"data.path={work / 'corpus.jsonl'}", "tokenizer=char", f"cache_dir={work / 'cache'}"]
        run = peak_memory([sys.executable, "-m", "llmlab.prepare", *args], work)
        shard_bytes = sum(p.stat().st_size for p in (work / "cache" / "shards").rglob("*.bin"))
        results[f"{mb:g}"] = {"corpus": corpus, "shards_mb": shard_bytes / 1e6, "prepare": run}
        print(f"prepare {mb:g} MB: peak RSS {run['peak_rss_mb']:.0f} MiB (anonymous {run['peak_anon_rss_mb']:.0f}), "
              f"{run['seconds']:.0f} s, shards {shard_bytes / 1e6:.0f} MB")
        if mb == max(sizes):
            train = peak_memory([sys.executable, "-m", "llmlab.run", *args, "+debug=fast", "device=cpu",
                                 "trainer.progress=false", "trainer.threads=1", f"trainer.max_steps={train_steps}",
                                 f"hydra.run.dir={work / 'run'}"], work)
            results[f"{mb:g}"]["train"] = train
            print(f"train {train_steps} steps on the {mb:g} MB shards: peak RSS {train['peak_rss_mb']:.0f} MiB "
                  f"(anonymous {train['peak_anon_rss_mb']:.0f}), {train['seconds']:.0f} s")
        shutil.rmtree(work)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every shape (default: SHAPES)")
    parser.add_argument("--tokens", type=int, default=20_000_000, help="tokens in the memory-mapped stream")
    parser.add_argument("--batches", type=int, default=200, help="timed batches per shape")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per shape")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--text-mb", type=float, default=10.0, help="text encoded, in 10^6 characters")
    parser.add_argument("--train-mb", type=float, default=None, help="sentencepiece trains on this much (all)")
    parser.add_argument("--sections", nargs="+", default=["batches", "tokenizers", "parallel", "memory"],
                        choices=["batches", "tokenizers", "parallel", "memory"])
    parser.add_argument("--parallel-kinds", nargs="+", default=["char", "byte", "bpe"], choices=list(KINDS))
    parser.add_argument("--parallel-mb", type=float, default=100.0, help="corpus tokenized with 1 and all processes")
    parser.add_argument("--processes", type=int, default=None, help="'all processes' (default: every core)")
    parser.add_argument("--memory-mb", nargs="+", type=float, default=[100.0, 500.0, 2000.0],
                        help="corpora prepared in a subprocess whose peak memory is measured")
    parser.add_argument("--train-steps", type=int, default=20, help="training steps on the largest corpus's shards")
    parser.add_argument("--tmp", default=None, help="where the generated corpora go (deleted afterwards)")
    parser.add_argument("--out", default="bench/data.json")


def main(args: argparse.Namespace) -> None:
    from llmlab.data.shards import default_processes

    load = os.getloadavg()[0]  # anything else on the cores slows the steps: a busy machine shows here
    report: dict = {"device": "cpu", "threads": torch.get_num_threads(), "load_avg_1m": load,
                    "cores": default_processes(), "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "batches" in args.sections or "tokenizers" in args.sections:
        report.update(batches_and_tokenizers(args))
    if "parallel" in args.sections:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            report["parallel_tokenization"] = parallel_rates(args.parallel_kinds, args.parallel_mb,
                                                             args.processes or default_processes(), Path(tmp))
    if "memory" in args.sections:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            report["prepare_memory"] = memory_profile(args.memory_mb, Path(tmp), args.train_steps)
    report["load_avg_1m_after"] = os.getloadavg()[0]
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")


def batches_and_tokenizers(args: argparse.Namespace) -> dict:
    from llmlab.config.schema import TrainerConfig

    batches, docs, tokenizers = {}, [], {}
    if "batches" in args.sections:
        batches = batch_section(args)
    if "tokenizers" in args.sections:
        docs = synthetic_docs(args.text_mb)
        train_docs = synthetic_docs(args.train_mb) if args.train_mb else docs  # a prefix of docs
        for kind in args.kinds:
            tokenizers[kind] = r = tokenizer_times(kind, docs, train_docs if kind in ("bpe", "unigram") else docs)
            print(f"tokenizer {kind} (vocab {r['vocab_size']}): train {r['train_s']:.2f} s on "
                  f"{r['trained_on_mb']:.1f} MB, encode {r['encode_s']:.2f} s ({r['encode_mb_per_s']:.1f} MB/s, "
                  f"{r['tokens']:,} tokens), round trip {r['round_trip']}")
    return {"what": "TrainBatches from a memory-mapped uint16 stream vs a forward + backward + AdamW step; "
                    "tokenizer training (build_tokenizer, empty cache) and encode_documents on synthetic text",
            "stream_tokens": args.tokens, "default_trainer_batch": TrainerConfig().batch_size,
            "text_mb": sum(map(len, docs)) / 1e6, "documents": len(docs), "batches": batches,
            "tokenizers": tokenizers}


def batch_section(args: argparse.Namespace) -> dict:
    batches = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.uint16.bin"
        np.random.default_rng(0).integers(0, args.vocab, args.tokens, dtype=np.uint16).tofile(path)
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        for size in args.sizes:
            batches[size] = r = batch_rates(size, args.batch or SHAPES[size], tokens, args)
            print(f"data {size} (batch {r['batch']} x {r['context_length']}): {r['data_ms_per_batch']:.3f} ms/batch "
                  f"({r['batches_per_s']:,.0f}/s), step {r['step_ms']:.0f} ms, headroom x{r['headroom']:,.0f}")
        del tokens
    return batches
