"""Is the supernet path cheaper? (issue 20, item 5): its compute against the per-candidate search.

Reads the supernet path's runs of `bench.search_efficiency --strategies supernet` (a supernet
`bench.supernet_ranking` trained, proposals scored with its inherited weights, the estimated
front's best K fine-tuned) and the per-candidate default search's runs of the same bench, and
prints markdown per run: training MAC-epochs (the supernet's, counted exactly, and the
fine-tuning's), wall seconds (the supernet's training, the scoring, the fine-tuning), the
hypervolume of the fine-tuned trials, the compute at which the path reaches the default's mean
final hypervolume (if it does) and the compute at which the default reached the path's final
hypervolume (same seed). Compute and hypervolume are `bench.front_quality`'s; issue 20's target:
the default's hypervolume with <= 1/3 of its compute.

    python -m bench.supernet_cost --runs runs/supernet-evidence --baseline docs/raw/search-evidence
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.efficiency_report import first_reach, load_runs


def cost(runs_dir: Path, baseline_dir: Path, baseline_key: str = "default") -> str:
    """Markdown: each supernet-path run of `bench.search_efficiency` (`runs_dir`) against the
    per-candidate default search's runs (`baseline_dir`): compute and wall seconds, the
    hypervolume of the fine-tuned trials, the compute at which the path reaches the default's
    mean final hypervolume (if ever), and the default's compute to reach the path's final.
    `baseline_key` picks the baseline's runs (`bench.search_efficiency.run_key`)."""
    runs = load_runs(runs_dir)
    base = load_runs(baseline_dir).get(baseline_key, [])
    paths = {k: rs for k, rs in runs.items() if k.startswith("supernet")}
    if not paths or not base:
        return f"no supernet runs in {runs_dir} or no {baseline_key} runs in {baseline_dir}"
    sizes = {int(r["image_size"]) for rs in (*paths.values(), base) for r in rs}
    if len(sizes) > 1:
        return f"the runs trained at {sorted(sizes)} px: they compare only at one image size"
    target = float(np.mean([r["history"][-1][2] for r in base]))
    budget = base[0]["budget"]
    lines = [f"Per-candidate default search ({len(base)} seeds, {budget / 1e9:.2g} G MAC-epochs "
             f"each): final hypervolume {target:.3f} +- "
             f"{np.std([r['history'][-1][2] for r in base], ddof=1):.3f}; target: the supernet "
             f"path reaches it with <= 1/3 of {budget / 1e9:.2g} G = {budget / 3e9:.3f} G", "",
             "| path | seed | supernet G | fine-tune G | total G | wall s (supernet + scoring + "
             "fine-tune) | fine-tuned HV | reaches the default's HV at | default's compute to "
             "this HV |", "|---|---|---|---|---|---|---|---|---|"]
    for key, rs in sorted(paths.items()):
        for r in rs:
            hist = r["history"]
            grid = np.array([h[0] for h in hist])
            reach = first_reach(grid, np.array([h[2] for h in hist]), target)
            final = hist[-1][2]
            peer = [b for b in base if b["seed"] == r["seed"]] or base
            per = [first_reach(np.array([h[0] for h in b["history"]]),
                               np.array([h[2] for h in b["history"]]), final) for b in peer]
            sn = r["supernet"]
            wall = sn["train_s"] + r["wall_s"]
            lines.append(
                f"| {key} | {r['seed']} | {sn['train_mac_epochs'] / 1e9:.3f} | "
                f"{(r['compute'] - sn['train_mac_epochs']) / 1e9:.3f} | {r['compute'] / 1e9:.3f} | "
                f"{wall:.0f} ({sn['train_s']:.0f} + {sn['score_s']:.0f} + "
                f"{r['wall_s'] - sn['score_s']:.0f}) | {final:.3f} | "
                f"{'never' if reach is None else f'{reach / 1e9:.3f} G'} | "
                f"{', '.join('never' if c is None else f'{c / 1e9:.4f} G' for c in per)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.supernet_cost",
                                description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, default=Path("runs/supernet-evidence"),
                   help="the supernet path's bench.search_efficiency runs")
    p.add_argument("--baseline", type=Path, default=Path("docs/raw/search-evidence"),
                   help="the per-candidate default search's runs")
    p.add_argument("--baseline-key", default="default",
                   help="which of them: default (the search's default), default_cheapest (the "
                        "default before the family anchors, which the supernet runs also used)")
    args = p.parse_args(argv)
    print(cost(args.runs, args.baseline, args.baseline_key))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["cost"]
