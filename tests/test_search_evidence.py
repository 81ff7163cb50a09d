"""Issue 19's evidence benches: compute and hypervolume (`bench.front_quality`), searches replayed
on ResNeSt-Bench (`bench.table_search`), the trained searches (`bench.search_efficiency`) and the
report that puts them side by side (`bench.efficiency_report`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import efficiency_report, search_efficiency, table_search
from bench.front_quality import dominates, front_of, macs_range, normalised_hypervolume
from bench.resnest_bench import COLUMNS
from bench.resnest_bench_report import load
from bench.table_search import random_search
from nas.search.cli import build_parser, config_from_args
from nas.search.pruner import ParetoPruner
from search_spaces import counts, get_space
from search_spaces.hand_designed import hand_designed

LOW, HIGH = 1e6, 1e8


def test_hypervolume_is_normalised_to_the_box() -> None:
    assert normalised_hypervolume([(1.0, LOW)], LOW, HIGH) == pytest.approx(1.0)
    assert normalised_hypervolume([(0.5, LOW)], LOW, HIGH) == pytest.approx(0.5)
    assert normalised_hypervolume([(0.8, 1e7)], LOW, HIGH) == pytest.approx(0.4)  # half the decades
    assert normalised_hypervolume([(0.9, HIGH)], LOW, HIGH) == 0.0  # at the reference: nothing
    assert normalised_hypervolume([], LOW, HIGH) == 0.0
    # A dominated point adds nothing; a second non-dominated one adds its own rectangle.
    assert normalised_hypervolume([(0.8, 1e7), (0.7, 2e7)], LOW, HIGH) == pytest.approx(0.4)
    assert normalised_hypervolume([(0.5, LOW), (0.8, 1e7)], LOW, HIGH) == pytest.approx(
        0.5 * 0.5 + 0.8 * 0.5)


def test_fronts_and_dominance() -> None:
    points = [(0.7, 1e6), (0.8, 2e6), (0.75, 3e6), (0.9, 5e6)]
    assert front_of(points) == [0, 1, 3]
    assert dominates(points, (0.78, 2e6), margin=0.01)  # 0.8 > 0.79 at the same MACs
    assert not dominates(points, (0.79, 2e6), margin=0.01)  # not by more than the margin
    assert not dominates(points, (0.6, 0.5e6), margin=0.0)  # nothing as cheap


def test_the_spaces_macs_range_brackets_every_sample() -> None:
    low, high = macs_range(16)
    rng = np.random.default_rng(0)
    space = get_space("resnest")
    for _ in range(50):
        spec = space.sample(rng).replace(num_classes=10, in_channels=1)
        assert low <= counts.macs(spec, 16) <= high


def _table(image_size: int = 8, n: int = 6) -> pd.DataFrame:
    """A ResNeSt-Bench-shaped table of real specs with made-up 4-epoch curves."""
    rng = np.random.default_rng(1)
    space = get_space("resnest")
    rows = []
    for i in range(n):
        spec = space.sample(rng).replace(num_classes=10, in_channels=1)
        curve = [round(float(v), 3) for v in np.sort(rng.uniform(0.3, 0.9, 4))]
        rows.append({"tag": f"resnest:{i}", "seed": 0, "kind": "sample", "spec": spec.to_json(),
                     "macs": counts.macs(spec, image_size), "curve": curve,
                     "val_top1": curve[-1], "test_top1": curve[-1] - 0.01, "epochs": 4,
                     "image_size": image_size})
    for name, spec in list(hand_designed().items())[:3]:
        rows.append({"tag": name, "seed": 0, "kind": "hand", "spec": spec.to_json(),
                     "macs": counts.macs(spec, image_size), "curve": [0.5, 0.6, 0.65, 0.7],
                     "val_top1": 0.7, "test_top1": 0.69, "epochs": 4, "image_size": image_size})
    return pd.DataFrame(rows)


def test_a_replay_without_pruning_spends_what_it_trains_and_cuts_the_last_trial() -> None:
    rows = table_search.samples(_table())
    macs = rows["macs"].to_numpy(dtype=float)
    budget = 4 * (macs[0] + macs[1]) + 2 * macs[2] + 1  # two whole trials, a third cut short
    r = table_search.replay(rows, [0, 1, 2, 3], budget, LOW, HIGH)
    assert r.trials == 3 and r.completed == 2
    assert r.compute[1:3] == pytest.approx([4 * macs[0], 4 * (macs[0] + macs[1])])
    assert r.compute[-1] >= budget
    points = [(rows["val_top1"][i], macs[i]) for i in (0, 1)]
    assert r.hypervolume[-1] == pytest.approx(normalised_hypervolume(points, LOW, HIGH))
    assert r.at(budget) == r.hypervolume[-1] and r.at(0.0) == 0.0
    assert r.best == max(rows["val_top1"][:2])


def test_a_replay_asks_the_search_pruner_after_each_epoch() -> None:
    rows = table_search.samples(_table())
    worse = rows.copy()  # trial 1: dearer and behind trial 0 at every epoch
    worse.at[1, "macs"] = rows["macs"][0] * 2
    worse.at[1, "curve"] = [a - 0.2 for a in rows["curve"][0]]
    worse.at[1, "val_top1"] = worse.at[1, "curve"][-1]
    pruner = ParetoPruner(("macs",), min_resource=1, reduction_factor=2)
    r = table_search.replay(worse, [0, 1], 1e12, LOW, HIGH, pruner)
    assert r.completed == 1  # trial 1 is stopped at the first rung
    assert r.compute[2] - r.compute[1] == worse["macs"][1]  # after one epoch
    unpruned = table_search.replay(worse, [0, 1], 1e12, LOW, HIGH)
    assert unpruned.completed == 2


def test_random_search_on_the_table_is_seeded() -> None:
    table = _table()
    a, b = (table_search.random_search(table, 3, 1e12) for _ in range(2))
    assert a == b and a.completed == 6
    fronts = {table_search.random_search(table, s, 1e12).compute for s in range(4)}
    assert len(fronts) > 1  # other seeds, other orders


def _smoke(out: Path, *extra: str) -> None:
    assert search_efficiency.main(["--smoke", "--seeds", "0", "--budget", "1e7", "--jobs", "1",
                                   "--out", str(out), *extra]) == 0


def test_a_trained_search_is_the_quick_starts_and_resumes_run_by_run(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    _smoke(out)
    path = out / "default-s0.json"
    run = json.loads(path.read_text())
    # The run is nas.search with these flags: the quick start's protocol, strategy swapped in.
    config, _ = config_from_args(build_parser().parse_args(run["flags"]))
    assert (config.sampler, config.pruner, config.anchor, config.seed) == ("tpe", "pareto",
                                                                           "families", 0)
    assert run["data"] == config.data and run["train_fraction"] == config.train_fraction
    assert config.time_budget_s >= 1e6  # compute ends a run, not a loaded machine's clock
    compute = [h[0] for h in run["history"]]
    assert compute == sorted(compute) and compute[-1] == run["compute"] >= run["budget"]
    spent = sum(t["macs"] * t["epochs"] for t in run["trials"])
    assert spent == pytest.approx(run["compute"])  # every trained epoch counted at its MACs
    assert run["trials"][0]["tag"] == run["front"][0]["tag"] == "0s1x8d_1-1-1-1"  # the anchor
    assert all((t["test"] is not None) == (t["state"] == "COMPLETE") for t in run["trials"])
    written = path.stat().st_mtime_ns
    _smoke(out)  # a finished run is not run again
    assert path.stat().st_mtime_ns == written
    _smoke(out, "--no-anchor", "--seeds", "1")  # another seed than (a)'s
    assert json.loads((out / "default_noanchor-s1.json").read_text())["anchor"] == "none"
    # The report puts them beside random search replayed on a table at the same image size.
    table = tmp_path / "table.csv"
    frame = _table(image_size=8)
    frame["curve"] = frame["curve"].map(json.dumps)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = ""
    frame[list(COLUMNS)].to_csv(table, index=False)
    text = efficiency_report.report(out, table, tmp_path / "plot.png")
    assert "(d) default without anchors beats (b)" in text and "| 0 |" in text
    # Each strategy is compared with random search on its own seeds: (d) with (b) on seed 1.
    assert "| (d) default without anchors | 1 |" in text and "| (b) random search, no " \
        "pruning | 1 |" in text
    on_1 = random_search(load(table), 1, 1e7).at(1e7)
    line = next(x for x in text.splitlines() if x.startswith("- (d) default without anchors beats"))
    assert f"vs {on_1:.4f} (paired per seed: ahead in" in line
    assert (tmp_path / "plot.png").stat().st_size > 0
    other = tmp_path / "table16.csv"
    frame.assign(image_size=16)[list(COLUMNS)].to_csv(other, index=False)
    with pytest.raises(SystemExit, match="error: the runs .* at \\[8\\] px but .* at 16 px"):
        efficiency_report.report(out, other, None)


def test_a_run_the_controller_ends_before_the_budget_writes_no_result(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="ended at .* after 1 trials"):
        search_efficiency.main(["--smoke", "--seeds", "0", "--budget", "1e12", "--max-trials",
                                "1", "--jobs", "1", "--out", str(tmp_path)])
    assert not (tmp_path / "default-s0.json").exists()
