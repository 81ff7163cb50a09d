"""ResNeSt-Bench (issue 19, item 3): the hand-designed family, the resumable table and its report,
and the quick-start protocol the table shares with `nas.search`."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import resnest_bench, resnest_bench_report
from nas.search.anchor import family_corners
from nas.search.cli import DEFAULTS, build_parser, config_from_args
from nas.search.objectives import parse_objectives
from nas.search.pruner import ParetoPruner
from nas.search.strategy import DEFAULT_FIRST_RUNG, make_pruner
from nas.supernet.config import SupernetConfig
from search_spaces import counts
from search_spaces.hand_designed import PATTERNS, SCALES, hand_designed
from search_spaces.registry import get_space
from search_spaces.spec import ArchSpec
from trials import train as train_cli
from trials.training import TrainConfig

HAND = hand_designed()


def test_the_family_has_every_pattern_at_every_scale() -> None:
    assert len(HAND) == len(PATTERNS) * len(SCALES) == 32
    macs = {name: counts.macs(spec, 16) for name, spec in HAND.items()}
    for pattern in PATTERNS:  # each pattern's scales grow in cost, cheapest first
        ladder = [macs[f"{pattern}-b{p}-d{d}"] for p, d in SCALES]
        assert ladder == sorted(ladder) and len(set(ladder)) == len(ladder), pattern


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_designed_points_follow_their_pattern(name: str) -> None:
    spec = HAND[name]
    radix, cardinality, width, avd, avd_first = PATTERNS[re.sub(r"-b\d+-d\d+$", "", name)]
    assert {(s.radix, s.cardinality, s.width) for s in spec.stages} == {(radix, cardinality,
                                                                          width)}
    assert (spec.avd, spec.avd_first, spec.stem, spec.avg_down) == (avd, avd_first, "deep", True)
    assert spec.input_regime == "small" and spec.num_classes == 10 and spec.in_channels == 1
    assert spec.min_image_size <= 16


def test_jobs_run_first_seeds_first_and_cover_the_table() -> None:
    jobs = resnest_bench.jobs(200, 30, (0, 1, 2), True, 60, corners=True)
    keys = [(j["tag"], j["seed"]) for j in jobs]
    assert len(keys) == len(set(keys)) == 200 + 32 + 2 * (30 + 32) + 60 + 4 * 3
    rows = [(j["kind"], j["seed"] > 0) for j in jobs]  # (kind, a repeat?) in running order
    assert rows == ([("hand", False)] * 32 + [("sample", False)] * 30  # the seeded ones first,
                    + [("sample", True)] * 60  # their noise next, the corners at every seed,
                    + [("corner", False), ("corner", True), ("corner", True)] * 4
                    + [("sample", False)] * 170 + [("slice", False)] * 60  # the slice,
                    + [("hand", True)] * 64)  # hand repeats last
    assert [j["tag"] for j in jobs[32:62]] == [f"resnest:{i}" for i in range(30)]
    assert [j["tag"] for j in jobs[304:364]] == [f"slice:{i}" for i in range(60)]
    corners = resnest_bench.corner_specs()
    assert {j["tag"] for j in jobs if j["seed"] == 2} == set(HAND) | set(corners) | {
        f"resnest:{i}" for i in range(30)}
    assert resnest_bench.jobs(200, 30, (0, 1, 2), True) == [
        j for j in jobs if j["kind"] not in ("slice", "corner")]


def test_the_corners_are_the_searchs_family_anchors() -> None:
    config, _ = config_from_args(build_parser().parse_args([]))
    task = replace(config, image_size=16, num_classes=10, in_channels=1)
    corners = resnest_bench.corner_specs()
    assert list(corners.values()) == family_corners(get_space(config.space), task)
    assert sorted(corners) == ["corner:deep-avgdown", "corner:deep-conv",
                               "corner:plain-avgdown", "corner:plain-conv"]
    assert all(spec.avg_down == tag.endswith("avgdown") and tag.startswith(f"corner:{spec.stem}")
               for tag, spec in corners.items())


def test_a_slice_tag_always_names_the_same_spec() -> None:
    few = {j["tag"]: j["arch"] for j in resnest_bench.jobs(0, 0, (0,), False, 3)}
    many = {j["tag"]: j["arch"] for j in resnest_bench.jobs(0, 0, (0,), False, 60)}
    assert few == {tag: many[tag] for tag in few}  # the tag decides, not --slice
    assert [resnest_bench.slice_spec(i) for i in range(3)] == [
        ArchSpec.from_dict(few[f"slice:{i}"]) for i in range(3)]
    assert resnest_bench.slice_spec(0).tag == "1s1x24d-0s1x32d-1s2x8d-0s2x64d_2-2-1-1"


def test_the_default_supernet_covers_the_whole_slice() -> None:
    specs = [resnest_bench.slice_spec(i) for i in range(60)]
    assert len(set(specs)) == 60  # no architecture twice
    assert all(SupernetConfig().violations(spec) == [] for spec in specs)
    assert all(get_space("resnest").contains(spec) for spec in specs)  # the small preset's
    assert len({tuple(s.radix for s in spec.stages) for spec in specs}) > 30  # not one pattern


def test_the_table_uses_the_quick_starts_full_fidelity_protocol() -> None:
    search = build_parser().parse_args([])
    config, _ = config_from_args(search)
    settings = resnest_bench.protocol(DEFAULTS["epochs"])
    assert settings == {"data": config.data, "epochs": config.epochs,
                        "batch_size": config.train["batch_size"]}
    assert config.data == "fashion-mnist-subset" and config.train_fraction == 0.25


@pytest.mark.parametrize("name", ["pareto", "sha"])
def test_no_rung_decides_before_the_warm_up_has_ended(name: str) -> None:
    assert DEFAULT_FIRST_RUNG > TrainConfig.warmup_epochs
    pruner = make_pruner(name, parse_objectives("accuracy,macs"), epochs=DEFAULTS["epochs"])
    assert isinstance(pruner, ParetoPruner)
    rungs = [e for e in range(1, DEFAULTS["epochs"] + 1) if pruner.is_rung(e)]
    assert rungs and min(rungs) == DEFAULT_FIRST_RUNG


def _bench(out: Path, *extra: str) -> None:
    assert resnest_bench.main(["--samples", "1", "--seeded", "1", "--seeds", "0", "1",
                               "--slice", "1", "--no-hand", "--epochs", "1", "--smoke",
                               "--workers", "1", "--no-corners",
                               "--out", str(out), *extra]) == 0


def test_the_table_appends_resumes_and_each_row_reproduces(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.csv"
    _bench(out)
    rows = resnest_bench.read_table(out)
    assert [(r["tag"], r["seed"], r["kind"]) for r in rows] == [
        ("resnest:0", "0", "sample"), ("resnest:0", "1", "sample"), ("slice:0", "0", "slice")]
    assert ArchSpec.from_json(rows[2]["spec"]) == resnest_bench.slice_spec(0)
    assert tuple(rows[0]) == resnest_bench.COLUMNS
    whole = out.read_text()
    out.write_text(whole + "resnest:9,0,sample,{\"torn")  # a run killed mid-row
    capsys.readouterr()
    _bench(out)
    assert "3 rows in" in capsys.readouterr().out and out.read_text() == whole  # nothing re-run
    # The row's command, run by hand, trains the same curve.
    argv = shlex.split(rows[1]["command"])[3:] + ["--out", str(tmp_path / "run"), "--quiet"]
    assert train_cli.main(argv) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [round(m["val_top1"], 5) for m in metrics] == json.loads(rows[1]["curve"])
    text = resnest_bench_report.report(resnest_bench_report.load(out))
    assert "Kendall tau between seeds 0 and 1" not in text  # one architecture ranks nothing
    assert "1 samples; std per sample" in text  # the slice row has one seed
    assert "(1 uniform samples, 1 in the default supernet's slice)" in text
    assert "fewer than 3 uniform samples: nothing to rank yet" in text


def test_the_noise_and_its_ceiling_come_from_the_uniform_samples_only() -> None:
    """Hand-designed repeats (near-equal accuracies by design) must not move the seed-to-seed
    ceiling that every estimator of the uniform samples is read against."""
    rows = [{"tag": f"resnest:{i}", "kind": "sample", "seed": seed, "val_top1": 0.7 + 0.01 * i}
            for i in range(4) for seed in (0, 1)]
    samples = resnest_bench_report.noise(pd.DataFrame(rows))
    hand = [{"tag": f"hand-{i}", "kind": "hand", "seed": seed, "val_top1": 0.77 + 0.001 * i * s}
            for i in range(4) for seed, s in ((0, 1), (1, -1))]
    both = resnest_bench_report.noise(pd.DataFrame(rows + hand))
    assert samples[1] == both[1] == {(0, 1): (1.0, 4)}
    assert list(both[0].index) == [f"resnest:{i}" for i in range(4)]


def test_what_matters_finds_the_axis_that_decides_accuracy() -> None:
    """A table in which one global axis sets accuracy (plus small noise) and the stages do not:
    the global axes predict it out of fold, the per-stage axes do not."""
    rng = np.random.default_rng(0)
    space = get_space("resnest", "small")
    rows = []
    for i in range(60):
        spec = space.sample(rng)
        acc = 0.76 if spec.avg_down else 0.70
        rows.append({"tag": f"resnest:{i}", "kind": "sample", "seed": 0,
                     "spec": spec.to_json(), "val_top1": acc + rng.normal(0, 0.003)})
    lines = resnest_bench_report.what_matters(pd.DataFrame(rows))
    scores = {line.split(": ")[0][2:]: float(line.split(": ")[1]) for line in lines
              if line.startswith("- ")}
    assert scores["the global axes (one-hot)"] > 0.9
    assert scores["the per-stage axes (numeric)"] < 0.2
    assert any(line.startswith("| avg_down | False: 70.") for line in lines)


def test_an_anchor_dominates_only_dearer_hand_points_by_more_than_the_margin() -> None:
    def rows(tag: str, kind: str, macs: int, val: float, test: float) -> list[dict]:
        return [{"tag": tag, "kind": kind, "seed": seed, "macs": macs, "val_top1": val + d,
                 "test_top1": test + d} for seed, d in ((0, -0.001), (1, 0.001))]

    table = pd.DataFrame(rows("corner:deep-avgdown", "corner", 10, 0.78, 0.78)
                         + rows("dearer-worse", "hand", 20, 0.76, 0.775)  # test within margin
                         + rows("cheaper-worse", "hand", 5, 0.70, 0.70)  # costs less
                         + rows("dearer-better", "hand", 30, 0.79, 0.79))
    lines = resnest_bench_report.anchors_against_hand(table, margin=0.01)
    row = next(line for line in lines if line.startswith("| corner:deep-avgdown"))
    assert row.endswith("| 2 | 1/3 | 0/3 |")
    assert resnest_bench_report.anchors_against_hand(table[table["kind"] == "hand"], 0.01) == []
