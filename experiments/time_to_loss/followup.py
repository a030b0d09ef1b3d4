"""Runs made after the benchmark (QK-norm with +recipe=short), summarised like a contender of the benchmark's JSON:
per N, each seed's whole-split loss, the mean with its 95% t-interval, the mean wall-clock and its ratio to the
benchmark's reference. Not side by side with the reference: the ratio is only as good as the loads were alike.
`python experiments/time_to_loss/followup.py BENCH.json OUT.json NAME RUN_DIR ...` (run dirs hold metrics.json)"""

import json
import sys
from pathlib import Path

from llmlab.bench.time_to_loss import interval


def main(bench: str, out: str, name: str, run_dirs: list[str]) -> None:
    summary = json.loads(Path(bench).read_text())["summary"]
    by_steps: dict[int, list[dict]] = {}
    for run_dir in run_dirs:
        m = json.loads((Path(run_dir) / "metrics.json").read_text())
        cfg = (Path(run_dir) / "config_resolved.yaml").read_text()
        seed = int(next(line.split(":")[1] for line in cfg.splitlines() if line.startswith("seed:")))
        by_steps.setdefault(m["steps"], []).append({"seed": seed, "loss": m["val_loss_full"], "wall_s": m["wall_s"]})
    rows = []
    for n, runs in sorted(by_steps.items()):
        runs.sort(key=lambda r: r["seed"])
        mean, low, high = interval([r["loss"] for r in runs])
        wall = sum(r["wall_s"] for r in runs) / len(runs)
        rows.append({"steps": n, "seeds": [r["seed"] for r in runs], "losses": [r["loss"] for r in runs],
                     "loss_mean": mean, "loss_ci95": [low, high], "wall_s_mean": wall,
                     "wall_ratio": wall / summary["ref_wall_s_mean"], "reaches_ref": mean <= summary["l_ref"]})
    Path(out).write_text(json.dumps({"name": name, "l_ref": summary["l_ref"], "by_steps": rows}, indent=2) + "\n")
    for r in rows:
        print(f"N={r['steps']} seeds={r['seeds']} mean={r['loss_mean']:.4f} [{r['loss_ci95'][0]:.4f}, "
              f"{r['loss_ci95'][1]:.4f}] losses={[round(x, 4) for x in r['losses']]} wall={r['wall_s_mean']:.0f}s "
              f"ratio={r['wall_ratio']:.3f} reaches={r['reaches_ref']}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
