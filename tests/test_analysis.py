"""analysis: loading experiments, fronts, hypervolume, knee, importances, plots and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import front as fr
from analysis.load import load
from analysis.pareto import main as pareto_main
from search_spaces import ArchSpec, get_space
from search_spaces.errors import UserError

STATES = {"t0000": "COMPLETE", "t0005": "PRUNED", "t0006": "FAIL"}


@pytest.fixture(scope="module")
def df(small_experiment: Path) -> pd.DataFrame:
    return load(small_experiment)


def copy_experiment(src: Path, dst: Path, **config_changes: object) -> Path:
    shutil.copytree(src, dst)
    if config_changes:
        path = dst / "experiment.json"
        config = json.loads(path.read_text())
        config.update(config_changes)
        path.write_text(json.dumps(config))
    return dst


def synthetic(points: list[tuple[float, float]], experiment: str = "e") -> pd.DataFrame:
    """Completed trials with (accuracy, macs) values, numbered in order."""
    return pd.DataFrame({
        "trial_id": [f"t{i:04d}" for i in range(len(points))], "number": range(len(points)),
        "state": "COMPLETE", "accuracy": [p[0] for p in points], "macs": [p[1] for p in points],
        "experiment": experiment,
    })


def brute_force_front(values: np.ndarray) -> set[int]:
    """Indices not dominated (accuracy max, cost min) by any other row."""
    keep = set()
    for i, (acc, cost) in enumerate(values):
        dominated = any(a >= acc and c <= cost and (a > acc or c < cost) for a, c in values)
        if not dominated:
            keep.add(i)
    return keep


# Loading ----------------------------------------------------------------------------------------
def test_load_gives_one_row_per_trial_with_flat_spec(
    df: pd.DataFrame, small_experiment: Path
) -> None:
    csv = pd.read_csv(small_experiment / "trials.csv")
    assert list(df["trial_id"]) == list(csv["trial_id"])
    for trial_id, state in STATES.items():
        assert df.set_index("trial_id").loc[trial_id, "state"] == state
    for _, row in df.iterrows():
        spec = ArchSpec.from_json(row["spec"])
        assert row["stem"] == spec.stem and row["avd_first"] == spec.avd_first
        assert row["n_stages"] == len(spec.stages)
        for i, stage in enumerate(spec.stages):
            assert (row[f"s{i + 1}_depth"], row[f"s{i + 1}_radix"], row[f"s{i + 1}_cardinality"],
                    row[f"s{i + 1}_width"]) == (stage.depth, stage.radix, stage.cardinality,
                                                stage.width)
        assert isinstance(row["curve"], list) and len(row["curve"]) == row["epochs"]
        if row["curve"]:
            assert row["curve"][-1]["val_top1"] == pytest.approx(row["accuracy"])
    assert set(df["experiment"]) == {small_experiment.name}
    assert df.set_index("trial_id").loc["t0000", "seed_point"] == "resnest14d"
    assert (df["seed_point"] != "").sum() == 1


def test_load_several_experiments(small_experiment: Path, tmp_path: Path) -> None:
    other = copy_experiment(small_experiment, tmp_path / "rerun")
    both = load([small_experiment, other])
    assert len(both) == 2 * len(load(small_experiment))
    assert set(both["experiment"]) == {small_experiment.name, "rerun"}


def test_load_refuses_what_is_not_an_experiment(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not an experiment"):
        load(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "missing")


# Fronts ------------------------------------------------------------------------------------------
def test_pareto_front_is_the_non_dominated_completed_trials_sorted(df: pd.DataFrame) -> None:
    done = df[df["state"] == "COMPLETE"].reset_index(drop=True)
    expected = brute_force_front(done[["accuracy", "macs"]].to_numpy())
    front = fr.pareto_front(df, "accuracy,macs")
    assert set(front["trial_id"]) == set(done.loc[sorted(expected), "trial_id"])
    assert len(front) >= 2
    assert list(front["macs"]) == sorted(front["macs"])  # along the front: cheapest first ...
    assert list(front["accuracy"]) == sorted(front["accuracy"])  # ... to the most accurate
    assert "PRUNED" not in set(front["state"])


def test_front_of_three_objectives_contains_the_two_objective_front(df: pd.DataFrame) -> None:
    two = set(fr.pareto_front(df, "accuracy,macs")["trial_id"])
    three = set(fr.pareto_front(df, ["accuracy", "macs", "params"])["trial_id"])
    assert two <= three


def test_with_status_lists_front_then_dominated_then_unfinished(df: pd.DataFrame) -> None:
    table = fr.with_status(df, "accuracy,macs")
    assert len(table) == len(df)
    statuses = list(table["status"])
    n_front = statuses.count("front")
    assert statuses[:n_front] == ["front"] * n_front
    assert set(statuses[n_front:]) == {"dominated", "PRUNED", "FAIL"}
    assert statuses.index("PRUNED") > max(i for i, s in enumerate(statuses) if s == "dominated")


def test_fronts_are_per_experiment() -> None:
    both = pd.concat([synthetic([(0.5, 10), (0.9, 20)], "a"), synthetic([(0.95, 5)], "b")])
    front = fr.pareto_front(both.reset_index(drop=True), "accuracy,macs")
    assert sorted(front.groupby("experiment").size().items()) == [("a", 2), ("b", 1)]


def test_objective_without_values_is_a_user_error(df: pd.DataFrame) -> None:
    with pytest.raises(UserError, match="latency has no values"):
        fr.pareto_front(df, "accuracy,latency")


# Hypervolume and knee ---------------------------------------------------------------------------
def test_hypervolume_with_stated_and_default_reference() -> None:
    data = synthetic([(0.5, 50.0), (0.8, 100.0), (0.4, 120.0)])
    # Box from (accuracy 0, macs 200) to the ideal (1, 0); dominated area 0.5*50 + 0.8*100.
    assert fr.hypervolume(data, "accuracy,macs", {"accuracy": 0.0, "macs": 200.0}) == \
        pytest.approx((0.5 * 50 + 0.8 * 100) / 200)
    assert fr.reference_point(data, "accuracy,macs") == {"accuracy": 0.0,
                                                         "macs": pytest.approx(132.0)}
    assert fr.hypervolume(data, "accuracy,macs") == pytest.approx((0.5 * 50 + 0.8 * 32) / 132)


def test_hypervolume_history_grows_to_the_total(df: pd.DataFrame) -> None:
    history = fr.hypervolume_history(df, "accuracy,macs")
    done = df[df["state"] == "COMPLETE"]
    assert list(history["trial_id"]) == list(done.sort_values("number")["trial_id"])
    values = history["hypervolume"].to_numpy()
    assert np.all(np.diff(values) >= -1e-12)
    assert values[-1] == pytest.approx(fr.hypervolume(df, "accuracy,macs"))
    assert 0 < values[-1] <= 1


def test_knee_is_the_member_farthest_from_the_extremes_line() -> None:
    convex = synthetic([(0.1, 1.0), (0.8, 2.0), (0.85, 6.0), (0.9, 10.0)])
    assert convex.loc[fr.knee(convex, "accuracy,macs"), "trial_id"] == "t0001"
    # A concave front bulges away from the ideal point: no knee, the most accurate end wins.
    concave = synthetic([(0.1, 1.0), (0.2, 9.0), (0.9, 10.0)])
    assert concave.loc[fr.knee(concave, "accuracy,macs"), "trial_id"] == "t0002"
    pair = synthetic([(0.1, 1.0), (0.9, 10.0)])
    assert pair.loc[fr.knee(pair, "accuracy,macs"), "trial_id"] == "t0001"
    with pytest.raises(UserError, match="empty"):
        fr.knee(pair.iloc[:0], "accuracy,macs")


# Importances ------------------------------------------------------------------------------------
def test_param_importances_per_objective(small_experiment: Path) -> None:
    from analysis.importance import param_importances

    table = param_importances(small_experiment)
    assert set(table["objective"]) == {"accuracy", "macs"}
    dims = set(get_space("resnest").dimensions)
    assert set(table["param"]) <= dims
    assert "s1_width" in set(table["param"])
    assert not any("cardinality" in p for p in table["param"])  # conditional: left out
    for _, group in table.groupby("objective"):
        assert group["importance"].sum() == pytest.approx(1.0)
        assert list(group["importance"]) == sorted(group["importance"], reverse=True)
    again = param_importances(small_experiment)
    pd.testing.assert_frame_equal(table, again)  # seeded


# Plots ------------------------------------------------------------------------------------------
def test_png_plot_has_log_cost_axis_step_front_and_seed_label(df: pd.DataFrame,
                                                              tmp_path: Path) -> None:
    from analysis.plots import front_figure, save_png

    fig = front_figure(df, "accuracy,macs")
    ax, hv_ax = fig.axes
    assert ax.get_xscale() == "log"
    assert any(line.get_drawstyle() == "steps-post" for line in ax.get_lines())
    assert "resnest14d" in [t.get_text() for t in ax.texts]
    assert "reference accuracy=0" in hv_ax.get_title()
    faded = [c for c in ax.collections if c.get_alpha() is not None and c.get_alpha() < 1]
    assert sum(len(c.get_offsets()) for c in faded) == df["accuracy"].notna().sum()
    path = save_png(df, "accuracy,macs", tmp_path / "front.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_plot_reads_well(df: pd.DataFrame) -> None:
    """Accuracy in percent, front members labelled with trial ids, cost ticks labelled across
    the data, the image size in the title, the hypervolume panel on its whole 0-1 range."""
    from matplotlib.ticker import PercentFormatter

    from analysis.plots import front_figure

    fig = front_figure(df, "accuracy,macs", image_size="8 px")
    ax, hv_ax = fig.axes
    assert isinstance(ax.yaxis.get_major_formatter(), PercentFormatter)
    assert ax.get_ylabel() == "validation top-1 (%)"
    labels = [t.get_text() for t in ax.texts]
    assert set(fr.pareto_front(df, "accuracy,macs")["trial_id"]) <= set(labels)
    assert "8 px" in ax.get_title()
    plotted = df[df["macs"].notna() & df["accuracy"].notna()]["macs"]
    fig.draw_without_rendering()
    low, high = ax.get_xlim()
    ticks = [(loc, label.get_text()) for loc, label in zip(ax.get_xticks(),
                                                           ax.get_xticklabels(), strict=True)]
    inside = [text for loc, text in ticks
              if plotted.min() * 0.95 <= loc <= plotted.max() * 1.05 and low <= loc <= high]
    assert len(inside) >= 3 and all(inside), ticks
    assert hv_ax.get_ylim() == (0.0, 1.0)


@pytest.mark.parametrize("low, high, expected", [
    (1.234e6, 9.87e7, [1.2e6, 3.7e6, 1.1e7, 3.3e7, 9.9e7]),
    (1e6, 1e6, [1e6]),
    (1.0e6, 1.01e6, [1e6, 1.0025e6, 1.005e6, 1.0075e6, 1.01e6]),
    (0.0, 5.0, []),
])
def test_cost_ticks_spread_over_the_data(low: float, high: float,
                                         expected: list[float]) -> None:
    from analysis.plots import cost_ticks

    assert cost_ticks(low, high) == pytest.approx(expected, rel=1e-3)


def test_html_hover_shows_spec_and_curve(df: pd.DataFrame, tmp_path: Path) -> None:
    from analysis.plots import front_html, save_html

    fig = front_html(df, "accuracy,macs")
    trials = fig.data[0]
    assert fig.layout.xaxis.type == "log"
    hover = " ".join(trials.hovertext)
    assert "s1: depth 1, radix 2" in hover and "stem=deep" in hover
    assert "epoch 2: val_top1" in hover
    assert "resnest14d" in list(trials.text)
    assert fig.data[1].line.shape == "hv"
    html = save_html(df, "accuracy,macs", tmp_path / "front.html").read_text()
    assert "plotly" in html and "t0001" in html


# CLI --------------------------------------------------------------------------------------------
def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = pareto_main([str(a) for a in args])
    except SystemExit as stop:  # argparse usage errors
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table_front_hypervolume_and_history(small_experiment: Path, df: pd.DataFrame,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli([small_experiment], capsys)
    assert code == 0, err
    front = list(fr.pareto_front(df, "accuracy,macs")["trial_id"])
    listed = [line.split()[0] for line in out.splitlines()[1:len(front) + 1]]
    assert listed == front
    header = out.splitlines()[0].split()
    assert header == ["trial_id", "tag", "accuracy", "macs", "params", "latency_ms", "epochs"]
    assert "reference (accuracy=0, macs=" in out and "after each completed trial" in out
    assert "t0005" not in out.split("hypervolume")[0]


def test_cli_all_adds_dominated_pruned_and_failed(small_experiment: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([small_experiment, "--all"], capsys)
    assert code == 0
    table = out.split("\n\n")[0]
    for trial_id in load(small_experiment)["trial_id"]:
        assert trial_id in table
    assert "PRUNED" in table and "FAIL" in table and "dominated" in table


def test_cli_json_and_csv(small_experiment: Path, df: pd.DataFrame,
                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([small_experiment, "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    front = fr.pareto_front(df, "accuracy,macs")
    assert [r["trial_id"] for r in rows] == list(front["trial_id"])
    for row, (_, expected) in zip(rows, front.iterrows(), strict=True):
        assert {"trial_id", "tag", "spec", "accuracy", "macs"} <= set(row)
        assert ArchSpec.from_dict(row["spec"]).tag == row["tag"] == expected["tag"]
        assert row["accuracy"] == pytest.approx(expected["accuracy"])
    code, out, _ = run_cli([small_experiment, "--csv", "--all", "--objectives",
                            "accuracy,params"], capsys)
    assert code == 0
    table = pd.read_csv(StringIO(out))
    assert len(table) == len(df) and {"status", "state", "spec", "params"} <= set(table.columns)


@pytest.mark.parametrize("extra", [[], ["--all"], ["--objectives", "accuracy,latency,macs"]])
def test_cli_json_has_the_csv_columns(small_experiment: Path, tmp_path: Path, extra: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--json and --csv: the same rows and columns (the table's, then state, reason, spec)."""
    exp = small_experiment
    if "accuracy,latency,macs" in extra:  # a measured latency column on every trial
        exp = copy_experiment(small_experiment, tmp_path / "lat")
        rows = pd.read_csv(exp / "trials.csv")
        rows["latency_ms"] = np.arange(len(rows), dtype=float) + 1.5
        rows.to_csv(exp / "trials.csv", index=False)
    code, out, _ = run_cli([exp, "--json", *extra], capsys)
    assert code == 0
    rows = json.loads(out)
    code, out, _ = run_cli([exp, "--csv", *extra], capsys)
    assert code == 0
    table = pd.read_csv(StringIO(out), keep_default_na=False)
    code, out, _ = run_cli([exp, *extra], capsys)
    header = out.splitlines()[0].split()
    assert list(table.columns) == header + ["state", "reason", "spec"]
    assert [list(r) for r in rows] == [list(table.columns)] * len(table)
    for row, (_, line) in zip(rows, table.iterrows(), strict=True):
        assert row["spec"] == json.loads(line["spec"])
        assert row["trial_id"] == line["trial_id"] and row["state"] == line["state"]
        assert row["macs"] == pytest.approx(float(line["macs"]))


def test_cli_compares_several_experiments_with_plots(small_experiment: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    other = copy_experiment(small_experiment, tmp_path / "rerun")
    png, html = tmp_path / "front.png", tmp_path / "front.html"
    code, out, err = run_cli([other, small_experiment, "--plot", png, "--html", html], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[0] == "experiment"
    assert lines[1].split()[0] == "rerun"  # experiments keep the order given
    assert f"  {small_experiment.name}: " in out and "  rerun: " in out
    assert png.stat().st_size > 0 and html.stat().st_size > 0


def test_cli_importance(small_experiment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli([small_experiment, "--importance"], capsys)
    assert code == 0, err
    assert "parameter importance for accuracy" in out and "parameter importance for macs" in out
    done = int((load(small_experiment)["state"] == "COMPLETE").sum())
    assert err == (f"warning: {small_experiment.name} has only {done} completed trials: "
                   "parameter importances from fewer than 10 are mostly noise\n")


@pytest.mark.parametrize("args, message", [
    (["--objectives", "accuracy,latency"], "latency has no values"),
    (["--objectives", "accuracy,speed"], "unknown objective 'speed'"),
    (["--csv", "--json"], "not allowed with"),
    (["--json", "--importance"], "--importance prints tables"),
    (["--plot", "missing-dir/front.png"], "does not exist"),
])
def test_cli_bad_input(small_experiment: Path, tmp_path: Path, args: list[str], message: str,
                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli([small_experiment, *args], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []


def test_cli_on_an_experiment_without_trials(small_experiment: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(small_experiment / "experiment.json", empty)
    code, out, _ = run_cli([empty, "--all"], capsys)
    assert code == 0 and "(no trials)" in out and "hypervolume: 0 (no completed trials)" in out
    code, out, _ = run_cli([empty, "--json"], capsys)
    assert code == 0 and json.loads(out) == []


def test_cli_importance_needs_the_study(small_experiment: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    other = copy_experiment(small_experiment, tmp_path / "no-study")
    (other / "study.journal").unlink()
    code, _, err = run_cli([other, "--importance"], capsys)
    assert code == 2 and "has no study.journal" in err and err.count("\n") == 1
    assert not (other / "study.journal").exists()


def test_the_fixture_study_loads_with_optuna(small_experiment: Path) -> None:
    """The default study is Optuna's journal file: `optuna.load_study` reads it as it is."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(
        JournalFileBackend(str(small_experiment / "study.journal")))
    study = optuna.load_study(study_name="fx", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == [r.state for r in load(small_experiment).itertuples()]


def test_cli_importance_refuses_a_damaged_study_unchanged(
        small_experiment: Path, tmp_path: Path, damage, capsys: pytest.CaptureFixture[str]) -> None:
    other = copy_experiment(small_experiment, tmp_path / "damaged")
    journal = other / "study.journal"
    damage(journal)
    before = journal.read_bytes()
    code, _, err = run_cli([other, "--importance"], capsys)  # the front is printed first
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and str(journal) in err and "Optuna journal" in err
    assert journal.read_bytes() == before
    assert sorted(p.name for p in other.iterdir()) == sorted(
        p.name for p in small_experiment.iterdir())  # no lock or new file left behind


@pytest.mark.parametrize("content", [b"", b"not a database"])
def test_cli_importance_refuses_a_foreign_storage_database_unchanged(
        small_experiment: Path, tmp_path: Path, content: bytes,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`--storage` named an SQLite file: one without Optuna's tables (or no database at all) is
    refused, and neither gets Optuna's tables nor a WAL mode."""
    import sqlite3

    database = tmp_path / "shared.db"
    if content:
        database.write_bytes(content * 100)
    else:
        with sqlite3.connect(database) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
        conn.close()
    before = database.read_bytes()
    other = copy_experiment(small_experiment, tmp_path / "shared",
                            storage=f"sqlite:///{database}")
    code, _, err = run_cli([other, "--importance"], capsys)
    assert code == 2 and err.count("\n") == 1 and f"--storage sqlite:///{database}" in err
    assert database.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared", "shared.db"]  # no WAL files


def test_cli_refuses_experiments_with_different_objectives(
        small_experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = copy_experiment(small_experiment, tmp_path / "params-run",
                            objectives=["accuracy", "params"])
    code, _, err = run_cli([small_experiment, other], capsys)
    assert code == 2 and "different objectives" in err
    code, _, err = run_cli([small_experiment, other, "--objectives", "accuracy,params"], capsys)
    assert code == 0, err


def test_cli_subprocess_not_an_experiment_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "analysis.pareto", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "not an experiment" in done.stderr and "Traceback" not in done.stderr



@pytest.mark.slow
def test_reads_what_the_real_search_writes(searched_experiment: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    table = load(searched_experiment)
    assert len(table) == 3 and "COMPLETE" in set(table["state"])
    assert table.set_index("trial_id").loc["t0000", "seed_point"] == "resnest14d"
    png = tmp_path / "front.png"
    code, out, err = run_cli([searched_experiment, "--all", "--plot", png, "--importance"],
                             capsys)
    assert code == 0, err
    assert all(t in out for t in table["trial_id"]) and "hypervolume" in out
    assert "parameter importance for accuracy" in out and png.stat().st_size > 0
    # The two cheapest anchors (the seed point is outside the space) have equal MACs: reported
    # as nothing to explain, not as fANOVA's zero-variance error.
    assert "every completed trial has the same macs, so no choice explains it" in out
