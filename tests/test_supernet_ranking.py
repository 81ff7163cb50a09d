"""Issue 20, items 4-5: the supernet ranking bench (training with exact compute, scoring, the
split and the report) and the supernet path of the search-efficiency bench, smoke-sized."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import search_efficiency, supernet_cost, supernet_ranking
from bench.resnest_bench import slice_spec
from nas.search.cli import DEFAULTS
from nas.supernet.config import SupernetConfig
from search_spaces import counts
from search_spaces.hand_designed import hand_designed
from search_spaces.spec import ArchSpec


def _row(tag: str, spec: ArchSpec, val: float, seed: int = 0, kind: str = "slice",
         curve: list[float] | None = None) -> dict:
    return {"tag": tag, "seed": seed, "kind": kind, "spec": spec.to_json(),
            "params": counts.params(spec), "macs": counts.macs(spec, 16),
            "curve": curve or [0.5, 0.6, val - 0.01, val], "val_top1": val, "epochs": 4}


def test_the_split_is_fixed_and_halves_the_rows() -> None:
    tags = [f"slice:{i}" for i in range(60)]
    tune, held = supernet_ranking.split(tags)
    assert len(tune) == len(held) == 30 and not tune & held and tune | held == set(tags)
    assert supernet_ranking.split(list(reversed(tags))) == (tune, held)  # order-free


def test_a_family_is_the_largest_radix_kind() -> None:
    families = {name: supernet_ranking.radix_family(spec) for name, spec in
                hand_designed().items()}
    assert families["resnet-d-b16-d1"] == "radix 0"
    assert families["resnest-1s1x64d-b16-d1"] == "radix 1"
    assert families["resnest-4s1x64d-b16-d1"] == "radix >= 2"


def test_it_scores_the_slice_and_every_covered_row_only() -> None:
    hand = hand_designed()["resnet-d-b16-d1"]  # stem width 8, no avd: outside the default
    covered = SupernetConfig().smallest()
    table = pd.DataFrame([_row("hand", hand, 0.7, kind="hand"),
                          _row("resnest:7", covered, 0.7, kind="sample")])
    specs = supernet_ranking.covered_specs(table, SupernetConfig(), 3)
    assert specs == {"slice:0": slice_spec(0), "slice:1": slice_spec(1),
                     "slice:2": slice_spec(2), "resnest:7": covered}


def test_more_tables_add_rows_and_the_first_wins(tmp_path: Path) -> None:
    spec = slice_spec(0)
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    rows = [_row("slice:0", spec, 0.7), _row("slice:1", slice_spec(1), 0.8)]
    for path, part in ((first, rows[:1]), (second, [_row("slice:0", spec, 0.1), rows[1]])):
        frame = pd.DataFrame(part)
        frame["curve"] = frame["curve"].map(json.dumps)
        frame.to_csv(path, index=False)
    table = supernet_ranking.read_tables([first, second, tmp_path / "missing.csv"])
    assert table is not None and list(zip(table["tag"], table["val_top1"], strict=True)) == [
        ("slice:0", 0.7), ("slice:1", 0.8)]
    assert supernet_ranking.read_tables([tmp_path / "missing.csv"]) is None


def _synthetic(n: int = 40) -> tuple[pd.DataFrame, list[dict]]:
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.7, 0.8, n)
    rows = [_row(f"slice:{i}", slice_spec(i), float(truth[i])) for i in range(n)]
    rows += [_row("resnest:0", slice_spec(0), 0.75, seed=s, kind="sample") for s in (0, 1)]
    rows += [_row("resnest:1", slice_spec(1), 0.70 + 0.02 * s, seed=s, kind="sample")
             for s in (0, 1)]
    rows += [_row("resnest:2", slice_spec(2), 0.80 - 0.01 * s, seed=s, kind="sample")
             for s in (0, 1)]
    good = {f"slice:{i}": truth[i] + rng.normal(0, 0.005) for i in range(n)}  # ranks well
    noise = {f"slice:{i}": rng.uniform() for i in range(n)}  # ranks at random
    records = [{"recipe": name, "calib_batches": 16, "job": {"train": {"epochs": 1}},
                "train_mac_epochs": 1e8, "train_s": 1.0, "scored": n, "score_s": 1.0,
                "estimates": {t: {"inherited": float(v), "nll": -float(v), "macs": 0}
                              for t, v in est.items()}}
               for name, est in (("noise", noise), ("good", good))]
    del records[0]["estimates"]["slice:3"]["nll"]  # a metric every estimate holds, or none
    return pd.DataFrame(rows), records


def test_the_report_chooses_on_the_tuning_half_and_reports_the_other() -> None:
    table, records = _synthetic()
    text = supernet_ranking.report(table, records)
    assert "Chosen on the tuning half: **good**" in text
    _, held = supernet_ranking.split([f"slice:{i}" for i in range(40)])  # every estimate's
    part = table[table["tag"].isin(held)]
    estimate = part["tag"].map(lambda t: records[1]["estimates"][t]["inherited"])
    tau = estimate.corr(part["val_top1"], method="kendall")
    assert f"| supernet (good) | {tau:.3f} |" in text and tau > 0.8
    assert "| supernet (noise, not chosen) |" in text
    assert "| supernet (good by val loss, not chosen) |" in text  # ranks the other way round
    assert "noise by val loss" not in text
    assert "MACs quintile 5" in text and "| radix >= 2 |" in text
    assert "seed-to-seed ceiling" in text and "val after epoch 2" in text
    assert "the seed-to-seed Kendall tau to expect on these rows is about" in text


def test_the_ceiling_to_expect_falls_to_zero_when_noise_is_the_spread() -> None:
    assert supernet_ranking.expected_seed_tau(0.0087, 0.0091) == 0.0  # the slice, 2026-12-07
    assert supernet_ranking.expected_seed_tau(0.0318, 0.0091) == pytest.approx(
        2 / np.pi * np.arcsin(1 - (0.0091 / 0.0318) ** 2))
    assert supernet_ranking.expected_seed_tau(0.03, 0.0) == pytest.approx(1.0)


def test_the_report_waits_for_covered_rows() -> None:
    table, records = _synthetic()
    text = supernet_ranking.report(table[table["kind"] == "sample"], records)
    assert "too few to split" in text
    assert "no supernet records yet" in supernet_ranking.report(table, [])


def test_the_supernet_path_scores_as_many_as_the_search_trains() -> None:
    args = search_efficiency.parse_args(["--strategies", "supernet", "--supernet", "x"])
    assert args.estimated == DEFAULTS["trials"] and args.finetune == 4
    flags = search_efficiency.search_flags("supernet", 1, args, Path("/tmp/e/x"))
    assert flags[flags.index("--trials") + 1] == str(DEFAULTS["trials"])
    assert "--estimator" in flags and flags[flags.index("--finetune") + 1] == "4"


def _smoke_supernet(tmp_path: Path) -> tuple[Path, Path]:
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["train", "--smoke", "--recipes", "e4", "--cache", str(cache), "--out", str(out),
            "--table", str(tmp_path / "none.csv")]  # no table yet: the slice alone
    assert supernet_ranking.main(argv) == 0
    return cache / supernet_ranking.RECIPES["e4"].supernet_name, out


@pytest.mark.slow
def test_training_counts_its_compute_records_and_skips_a_recorded_recipe(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    directory, out = _smoke_supernet(tmp_path)
    [record] = supernet_ranking.read_records(out)
    assert record["scored"] == supernet_ranking.SMOKE_SLICE
    assert set(record["estimates"]) == {f"slice:{i}" for i in range(4)}
    compute = supernet_ranking.training_compute(directory)
    assert compute == pytest.approx(record["train_mac_epochs"])
    job = supernet_ranking.job_of(supernet_ranking.RECIPES["e4"], smoke=True)
    size, cfg = job.target.image_size, job.supernet
    share = 16 / len(supernet_ranking.job_data(job).train)  # one batch of the train split
    steps = job.train.epochs * job.train.max_batches
    low = steps * share * (counts.macs(cfg.largest(), size) + 3 * counts.macs(cfg.smallest(),
                                                                             size))
    high = steps * share * 4 * counts.macs(cfg.largest(), size)
    assert low <= compute <= high  # largest, smallest and two random per step
    capsys.readouterr()
    _smoke_supernet(tmp_path)
    assert "e4: recorded, skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_the_supernet_path_of_the_efficiency_bench(tmp_path: Path) -> None:
    directory, _ = _smoke_supernet(tmp_path)
    runs = tmp_path / "runs"
    argv = ["--strategies", "supernet", "--supernet", str(directory), "--finetune", "2",
            "--estimated", "5", "--smoke", "--jobs", "1", "--seeds", "0", "--out", str(runs)]
    args = search_efficiency.parse_args(argv)
    path = search_efficiency.run_one("supernet", 0, args)
    run = json.loads(path.read_text())
    assert path.name == "supernet_k2-s0.json" and run["supernet"]["scored"] == 5
    history = run["history"]
    assert history[1] == [run["supernet"]["train_mac_epochs"], 0, 0.0]  # the supernet first
    assert len(history) == 4 and history[-1][1] == 2 * 4  # then two fine-tunings of 4 epochs
    assert all(t["epochs"] == 4 for t in run["front"])  # trained accuracies only
    text = supernet_cost.cost(runs, runs)
    assert "no supernet runs" in text  # no per-candidate runs there
    assert "no default_cheapest runs in" in supernet_cost.cost(runs, runs, "default_cheapest")
