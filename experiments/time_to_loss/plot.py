"""Whole-split loss against training wall-clock time, from a time-to-loss benchmark's JSON: the reference run's
checkpoints (each seed) and each contender's complete-schedule runs (mean over seeds, the seeds' range as a bar).
A third argument, a follow-up JSON (followup.py), adds those runs in their own style: they were not run side by side
with the reference.
`python experiments/time_to_loss/plot.py bench/time_to_loss.json experiments/time_to_loss/loss_vs_time.png [F.json]`"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

result = json.loads(open(sys.argv[1]).read())
summary = result["summary"]
fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
for i, (seed, curve) in enumerate(result["reference_curves"].items()):
    ax.plot([p["wall_s"] for p in curve], [p["loss"] for p in curve], "o-", color="tab:gray", alpha=0.9, ms=4,
            label=f"reference: nanoGPT recipe, AdamW + cosine, 2,000 steps ({seed.replace('_', ' ')}, its checkpoints)")
colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
for color, (name, table) in zip(colors, summary["contenders"].items()):
    rows = table["by_steps"]
    x = [r["wall_s_mean"] for r in rows]
    y = [r["loss_mean"] for r in rows]
    low = [r["loss_mean"] - min(r["losses"]) for r in rows]
    high = [max(r["losses"]) - r["loss_mean"] for r in rows]
    ax.errorbar(x, y, yerr=[low, high], fmt="s-", color=color, capsize=3, ms=5,
                label=f"{name}: runs of N = {', '.join(str(r['steps']) for r in rows)} steps "
                      f"(mean of {len(rows[0]['losses'])} seeds, range)")
    for r in rows:
        ax.annotate(f"N={r['steps']}", (r["wall_s_mean"], r["loss_mean"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8, color=color)
if len(sys.argv) > 3:
    extra = json.loads(open(sys.argv[3]).read())
    rows = extra["by_steps"]
    ax.errorbar([r["wall_s_mean"] for r in rows], [r["loss_mean"] for r in rows],
                yerr=[[r["loss_mean"] - min(r["losses"]) for r in rows],
                      [max(r["losses"]) - r["loss_mean"] for r in rows]],
                fmt="D--", color="tab:green", capsize=3, ms=5,
                label=f"{extra['name']}: N = {', '.join(str(r['steps']) for r in rows)} "
                      f"(mean of {'/'.join(str(len(r['losses'])) for r in rows)} seeds; after the benchmark, "
                      "not side by side)")
    for r in rows:
        ax.annotate(f"N={r['steps']}", (r["wall_s_mean"], r["loss_mean"]), textcoords="offset points",
                    xytext=(6, -12), fontsize=8, color="tab:green")
ax.axhline(summary["l_ref"], color="black", ls="--", lw=1,
           label=f"L_ref = {summary['l_ref']:.3f} (reference's final, mean of its seeds)")
ax.axvline(summary["ref_wall_s_mean"] / 6, color="tab:purple", ls=":", lw=1,
           label="1/6 of the reference's wall-clock (the target)")
ax.set_xlabel("training wall-clock time (s, one thread, shared 2-core CPU)")
ax.set_ylabel("whole validation split loss (nats/char)")
ax.set_title("Time to nanoGPT's 2,000-step loss: Python reference text, 4x128 model")
ax.set_ylim(top=min(2.6, ax.get_ylim()[1]))
ax.grid(alpha=0.3)
ax.legend(fontsize=7.5, loc="upper right")
fig.tight_layout()
fig.savefig(sys.argv[2])
print(f"wrote {sys.argv[2]}")
