"""The README's benchmark table from a time-to-loss JSON: one row per contender and N.
`python experiments/time_to_loss/table.py experiments/time_to_loss/time_to_loss.json`"""

import json
import math
import sys

result = json.loads(open(sys.argv[1]).read())
summary = result["summary"]
print(f"L_ref = {summary['l_ref']:.4f} (reference seeds: {', '.join(f'{x:.4f}' for x in summary['l_ref_seeds'])}), "
      f"reference wall-clock {summary['ref_wall_s_mean']:.0f} s; load average {result['load_avg_range'][0]:.1f} to "
      f"{result['load_avg_range'][1]:.1f}\n")
print("| contender | N | whole-split loss, mean [95% t-interval over seeds] | seeds | paired vs default | "
      "wall-clock ratio | at or below L_ref |")
print("|---|---|---|---|---|---|---|")
for name, table in summary["contenders"].items():
    for row in table["by_steps"]:
        low, high = row["loss_ci95"]
        ci = f"[{low:.4f}, {high:.4f}]" if not math.isnan(low) else "(one seed)"
        paired = next((v for k, v in row.items() if k.startswith("paired_diff_vs_")), None)
        pair = f"{paired['mean']:+.4f} [{paired['ci95'][0]:+.4f}, {paired['ci95'][1]:+.4f}]" if paired else "–"
        seeds = ", ".join(f"{x:.4f}" for x in row["losses"])
        ratio = f"{row['wall_ratio']:.3f} (1/{1 / row['wall_ratio']:.1f})"
        print(f"| {name} | {row['steps']} | {row['loss_mean']:.4f} {ci} | {seeds} | {pair} | {ratio} | "
              f"{'yes' if row['reaches_ref'] else 'no'} |")
