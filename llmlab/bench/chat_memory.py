"""Chat data's memory against the file's size: `python -m llmlab.bench chat-memory [--mb 4 16 32] [--out FILE]`.

For each --mb size a JSONL file of conversations (minimind's `conversations` format, short random turns) is
written under --tmp; then, each in a fresh process, the file is encoded for SFT as `data=chat` does: `store`, the
records read a line at a time into an on-disk store (llmlab/data/chat_store.py, what a run does now), and `lists`,
every record parsed into Python objects and encoded into lists (what a run did before). A process reports its peak
resident memory (ru_maxrss) less that of the same process right after its imports, and the seconds it took. The
files are deleted afterwards. Written to bench/chat_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the cat sat on a mat and then ran far away from home to see the big sea while it rained all day "
         "so we stayed in and read").split()

CHILD = """
import json, resource, sys, time
from pathlib import Path
from llmlab.config.schema import ChatDataConfig
from llmlab.data.chat import load_conversations
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.post_training import encode_files, encode_items
from llmlab.data.tokenizers import CharTokenizer
way, path, tmp, alphabet = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
template = ChatTemplate(CharTokenizer.train(alphabet))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if way == "store":
    train, val, _ = encode_files(ChatDataConfig(paths=[path]), template, 512, tmp)
    n = len(train) + len(val)
else:
    records = load_conversations([path])
    items, _ = encode_items(template, records, 512)
    n = len(items)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"samples": n, "seconds": seconds, "peak_mb": (peak - base) / 1024}))
"""


def write_conversations(path: Path, mb: float, seed: int = 0) -> int:
    """JSONL conversations until the file holds mb x 10^6 bytes; how many records."""
    rng, size, n, limit = random.Random(seed), 0, 0, int(mb * 1e6)
    with path.open("w") as f:
        while size < limit:
            turns = [{"role": role, "content": " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))}
                     for role in ("user", "assistant") * rng.randint(1, 3)]
            line = json.dumps({"conversations": turns}) + "\n"
            f.write(line)
            size, n = size + len(line), n + 1
    return n


def measure(way: str, path: Path, tmp: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", CHILD, way, str(path), str(tmp), " ".join(WORDS)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mb", type=float, nargs="+", default=[4, 16, 32], help="file sizes, 10^6 bytes")
    parser.add_argument("--ways", nargs="+", default=["store", "lists"], choices=["store", "lists"])
    parser.add_argument("--tmp", default=None, help="where the files are written (default: the system's temp)")
    parser.add_argument("--out", default="bench/chat_memory.json")


def main(args: argparse.Namespace) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for mb in args.mb:
            path = Path(tmp) / f"chat_{mb:g}mb.jsonl"
            records = write_conversations(path, mb)
            for way in args.ways:
                got = measure(way, path, Path(tmp))
                row = {"file_mb": path.stat().st_size / 1e6, "records": records, "way": way, **got,
                       "peak_per_file_mb": got["peak_mb"] / (path.stat().st_size / 1e6)}
                rows.append(row)
                print(json.dumps(row))
            path.unlink()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"rows": rows, "python": platform.python_version(), "machine": platform.machine(),
              "load_average_at_end": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.write_text(json.dumps(record, indent=1))
    print(f"written: {out}")
    return record
