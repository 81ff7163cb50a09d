"""`python -m nas.export EXP (--trial ID | --pick accuracy|knee|cheapest) --out DIR`, or
`python -m nas.export RUN --out DIR` for a `python -m trials.train` run directory.

Takes one searched (or retrained) architecture away as files that need nothing from this project:
    DIR/<name>.py           plain PyTorch code for the spec (`build(num_classes, pretrained,
                            features_only, out_indices)`: a classifier or a multi-scale backbone)
    DIR/<name>.safetensors  the trial's (or run's) trained weights (its final checkpoint)
    DIR/<name>.json         spec, tag, costs, metrics, dataset and preprocessing, verification
    DIR/<name>.onnx         with --onnx

Everything is written to a private staging directory and verified there before DIR is touched:
the module is imported in a fresh interpreter that cannot import this project and must give the
same parameter count and outputs (<= 1e-5) as `nas.build_model` with the same weights, and as a
`features_only` backbone the same feature maps (<= 1e-5); the ONNX
file must match in onnxruntime (<= 1e-4). Any failure exits non-zero and leaves DIR as it was.

Picks (among COMPLETE trials that meet every --max-*/--min-* constraint):
    accuracy  the most accurate (ties: the cheapest)
    cheapest  the lowest first cost objective, e.g. MACs (ties: the most accurate)
    knee      the Pareto-front member farthest from the straight line joining the front's two
              extremes, in objective space normalized to [0, 1] over the front, on the side of the
              ideal point (see `analysis.front.knee`)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from safetensors.torch import save_file

from analysis.front import as_objectives, knee, pareto_front
from analysis.load import load, open_experiment
from nas.experiment import ExperimentConfig, ExperimentDir, is_experiment
from nas.export.codegen import generate_source
from nas.export.verify import (
    VerificationError,
    reference_features,
    reference_outputs,
    verify_module,
    verify_onnx,
)
from nas.search.objectives import OBJECTIVES, Objective
from search_spaces.cli import OneLineParser, run_cli
from search_spaces.errors import UserError
from search_spaces.files import umask
from search_spaces.spec import ArchSpec
from trials.data import load_data
from trials.run_dir import RunDir
from trials.training import load_checkpoint

PICKS = ("accuracy", "knee", "cheapest")
FORMAT = "resnest-nas/export/1"
ONNX_EXTRA = "pip install 'resnest-nas[onnx]'"
# flag -> (column, "max" or "min")
CONSTRAINTS = {"max_macs": ("macs", "max"), "max_params": ("params", "max"),
               "max_latency_ms": ("latency_ms", "max"), "min_accuracy": ("accuracy", "min")}


def build_parser() -> argparse.ArgumentParser:
    """Every option's help states its default (flags are off unless given)."""
    p = OneLineParser(prog="python -m nas.export",
                      description="Export a searched architecture (or a trials.train run) as a "
                                  "standalone PyTorch module.",
                      epilog=__doc__[__doc__.index("Picks ("):].rstrip(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", metavar="EXP", type=Path,
                   help="experiment directory OUT/NAME, or a run directory of trials.train")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", help="trial id, e.g. t0003 (an experiment needs --trial or "
                                       "--pick; default: neither)")
    which.add_argument("--pick", choices=PICKS,
                       help="choose among completed trials (default: none, see --trial)")
    p.add_argument("--objectives", default=None,
                   help="objectives for --pick (default: the experiment's own)")
    p.add_argument("--max-macs", type=float,
                   help="--pick only trials with at most these MACs (default: no limit)")
    p.add_argument("--max-params", type=float,
                   help="--pick only trials with at most these params (default: no limit)")
    p.add_argument("--max-latency-ms", type=float,
                   help="--pick only trials at most this latency (default: no limit)")
    p.add_argument("--min-accuracy", type=float,
                   help="--pick only trials at least this accurate, 0-1 (default: no limit)")
    p.add_argument("--out", type=Path, required=True,
                   help="output directory, created if needed (required)")
    p.add_argument("--name", help="file and module name (default: resnest_<tag>_<trial id>, for "
                                  "a run resnest_<tag>_<run directory name>)")
    p.add_argument("--onnx", action="store_true",
                   help=f"also write and verify <name>.onnx (needs {ONNX_EXTRA})")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--allow-partial", action="store_true",
                   help="export a pruned or failed trial (or an unfinished run) from its last "
                        "checkpoint")
    return p


# Choosing the trial ---------------------------------------------------------------------------
def constraints_of(args: argparse.Namespace) -> dict[str, float]:
    given = {k: getattr(args, k) for k in CONSTRAINTS if getattr(args, k) is not None}
    for flag, value in given.items():
        if not value > 0 and flag != "min_accuracy":
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value:g}")
    if "min_accuracy" in given and not 0 <= given["min_accuracy"] <= 1:
        raise UserError(f"--min-accuracy is a fraction in [0, 1], got {given['min_accuracy']:g}")
    return given


def _flag(name: str, value: float) -> str:
    return f"--{name.replace('_', '-')} {value:g}"


def apply_constraints(done: pd.DataFrame, constraints: dict[str, float]) -> pd.DataFrame:
    """Rows meeting every constraint; an empty result names the constraint that excluded all."""
    keep = pd.Series(True, index=done.index)
    for flag, limit in constraints.items():
        column, kind = CONSTRAINTS[flag]
        ok = done[column] <= limit if kind == "max" else done[column] >= limit
        if not ok.any():
            values = done[column].dropna()
            if values.empty:
                raise UserError(f"no completed trial satisfies {_flag(flag, limit)}: "
                                f"no trial has {column} measured")
            best = values.min() if kind == "max" else values.max()
            raise UserError(
                f"no completed trial satisfies {_flag(flag, limit)}: the "
                f"{'lowest' if kind == 'max' else 'highest'} {column} among {len(done)} completed "
                f"trials is {best:.6g}")
        keep &= ok
    if not keep.any():
        listed = ", ".join(_flag(f, v) for f, v in constraints.items())
        raise UserError(f"no completed trial satisfies {listed} together "
                        "(each alone is met by some trial)")
    return done[keep]


def pick(df: pd.DataFrame, how: str, objectives: Sequence[Objective],
         constraints: dict[str, float], exp: Path) -> pd.Series:
    done = df[(df["state"] == "COMPLETE") & df["accuracy"].notna()]
    if done.empty:
        states = df["state"].value_counts()
        listed = ", ".join(f"{n} {s}" for s, n in states.items()) or "no trials"
        hint = ("; --trial ID --allow-partial exports a partial one"
                if df["checkpoint"].astype(bool).any() else "")
        raise UserError(f"no completed trial to pick from in {exp} ({listed}){hint}")
    candidates = apply_constraints(done, constraints)
    cost = next((o.column for o in objectives if not o.maximize), OBJECTIVES["macs"].column)
    if how == "accuracy":
        return candidates.sort_values(["accuracy", cost, "number"],
                                      ascending=[False, True, True]).iloc[0]
    if how == "cheapest":
        return candidates.sort_values([cost, "accuracy", "number"],
                                      ascending=[True, False, True]).iloc[0]
    front = pareto_front(candidates, objectives)
    return front.loc[knee(front, objectives)]


def find_trial(df: pd.DataFrame, trial_id: str, exp: Path) -> pd.Series:
    match = df[df["trial_id"] == trial_id]
    if match.empty:
        ids = list(df["trial_id"])
        shown = ", ".join(ids[:8]) + (f", ... ({len(ids)} in all)" if len(ids) > 8 else "")
        raise UserError(f"unknown trial id {trial_id!r} in {exp}; trials: {shown or 'none'}")
    return match.iloc[0]


def checkpoint_of(row: pd.Series, exp: Path, allow_partial: bool) -> Path:
    """The trial's checkpoint file, after checking that its state allows exporting it."""
    trial_id, state = row["trial_id"], row["state"]
    why = f" ({row['reason']})" if row["reason"] else ""
    if state == "INFEASIBLE":
        raise UserError(f"trial {trial_id} was never trained: it is INFEASIBLE{why}")
    candidates = [ExperimentDir(exp).trial(trial_id).checkpoint]
    if row["checkpoint"]:
        candidates.append(Path(row["checkpoint"]))
    path = next((p for p in candidates if p.is_file()), None)
    if state != "COMPLETE" and not allow_partial:
        last = (f"its last checkpoint (epoch {row['epochs']})" if path else "nothing: it has no "
                "checkpoint")
        raise UserError(f"trial {trial_id} is {state}{why}: it has no full-budget weights; "
                        f"--allow-partial would export {last}")
    if path is None:
        raise UserError(f"trial {trial_id} ({state}{why}) has no checkpoint to export "
                        f"(looked for {candidates[0]})")
    return path


# Files ---------------------------------------------------------------------------------------
def default_name(row: pd.Series) -> str:
    return re.sub(r"\W", "_", f"resnest_{row['tag']}_{row['trial_id']}")


def output_paths(out: Path, name: str, onnx: bool) -> dict[str, Path]:
    suffixes = ["py", "safetensors", "json"] + (["onnx"] if onnx else [])
    return {s: out / f"{name}.{s}" for s in suffixes}


def check_outputs(out: Path, paths: dict[str, Path], force: bool) -> None:
    """Refuse before any work: a file where DIR should be, existing outputs without --force."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise UserError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} is not writable (checked {probe})")


def preprocessing(state: dict[str, Any], data_spec: str, image_size: int | None
                  ) -> dict[str, Any]:
    """What the data pipeline did to inputs: from the checkpoint, else re-derived from the data."""
    data = state.get("data")
    if not isinstance(data, dict) or not {"mean", "std", "image_size"} <= set(data):
        data = load_data(data_spec, image_size or None, include_test=False).describe()
    return data


def number(value: Any) -> float | None:
    """A JSON-ready float, None for a missing (NaN) value."""
    return None if pd.isna(value) else float(value)


def _files(name: str, onnx: bool) -> dict[str, Any]:
    return {"format": FORMAT, "name": name, "module": f"{name}.py",
            "weights": f"{name}.safetensors", "onnx": f"{name}.onnx" if onnx else None}


def _data_fields(spec: ArchSpec, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": {k: data.get(k) for k in ("data", "num_classes", "classes", "sizes")},
        "preprocessing": {
            "image_size": int(data["image_size"]), "in_channels": spec.in_channels,
            "mean": list(data["mean"]), "std": list(data["std"]),
            "steps": "uint8 NCHW -> resize to image_size (bilinear, antialiased) -> /255 -> "
                     "(x - mean) / std; the module's preprocess() does this",
        },
    }


def metadata(row: pd.Series, exp: Path, config: ExperimentConfig, state: dict[str, Any],
             data: dict[str, Any], name: str, onnx: bool, how: dict[str, Any]) -> dict[str, Any]:
    """The export's JSON for a trial of an experiment (`run` is None)."""
    spec = ArchSpec.from_json(row["spec"])
    return {
        **_files(name, onnx),
        "experiment": {"name": config.name, "path": str(exp.resolve()), "data": config.data,
                       "objectives": list(config.objectives)},
        "trial": {"trial_id": row["trial_id"], "number": int(row["number"]),
                  "state": row["state"], "reason": row["reason"],
                  "partial": row["state"] != "COMPLETE",
                  "checkpoint_epoch": int(state.get("epoch", row["epochs"])),
                  "epochs_planned": config.epochs},
        "run": None,
        "selection": how,
        "spec": spec.to_dict(), "tag": row["tag"], "spec_hash": row["spec_hash"],
        "costs": {"params": number(row["params"]), "macs": number(row["macs"]),
                  "latency_ms": number(row["latency_ms"]),
                  "peak_memory_bytes": number(row["peak_memory_bytes"]),
                  "image_size": int(data["image_size"])},
        "metrics": {"accuracy": number(row["accuracy"]),
                    "best_accuracy": number(row["best_accuracy"]),
                    "epochs": int(row["epochs"]), "curve": row["curve"]},
        **_data_fields(spec, data),
    }


def run_metadata(run: RunDir, spec: ArchSpec, state: dict[str, Any], data: dict[str, Any],
                 name: str, onnx: bool) -> dict[str, Any]:
    """The export's JSON for a `trials.train` run (`experiment` and `trial` are None)."""
    result = json.loads(run.result.read_text()) if run.result.is_file() else {}
    curve = [dict(e) for e in state.get("curve", [])]
    epoch, planned = int(state.get("epoch", len(curve))), int(state.get("epochs", len(curve)))
    costs = state.get("costs", {})
    return {
        **_files(name, onnx),
        "experiment": None, "trial": None,
        "run": {"path": str(run.path.resolve()),
                "state": result.get("state", "COMPLETE" if epoch >= planned else "RUNNING"),
                "partial": epoch < planned, "checkpoint_epoch": epoch, "epochs_planned": planned,
                "data": state.get("config", {}).get("data", data.get("data"))},
        "selection": {"run": str(run.path)},
        "spec": spec.to_dict(), "tag": spec.tag, "spec_hash": spec.spec_hash,
        "costs": {"params": costs.get("params"), "macs": costs.get("macs"),
                  "latency_ms": costs.get("latency_ms"),
                  "peak_memory_bytes": costs.get("peak_memory_bytes"),
                  "image_size": int(data["image_size"])},
        "metrics": {"accuracy": curve[-1].get("val_top1") if curve else None,
                    "best_accuracy": max((e.get("val_top1", 0.0) for e in curve), default=None),
                    "test_accuracy": result.get("test_top1"), "epochs": epoch, "curve": curve},
        **_data_fields(spec, data),
    }


# Export ---------------------------------------------------------------------------------------
def export(spec: ArchSpec, state: dict[str, Any], data: dict[str, Any], meta: dict[str, Any],
           provenance: str, out: Path, name: str, onnx: bool, force: bool) -> dict[str, Path]:
    """Stage, verify, then publish all files into `out`; nothing reaches `out` unless verified."""
    weights = {k: v.contiguous() for k, v in state["model"].items()}
    paths = output_paths(out, name, onnx)
    with tempfile.TemporaryDirectory(prefix="nas-export-") as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        staged = {s: staging / p.name for s, p in paths.items()}
        staged["py"].write_text(generate_source(spec, weights_file=staged["safetensors"].name,
                                                preprocessing=data, provenance=provenance))
        save_file(weights, str(staged["safetensors"]), metadata={"spec": spec.to_json()})
        x, reference, params = reference_outputs(spec, weights, int(data["image_size"]))
        report = verify_module(staged["py"], x, reference, params, Path(tmp),
                               reference_features(spec, weights, x))
        if onnx:
            report.update(verify_onnx(staged["py"], staged["onnx"], x, reference))
        staged["json"].write_text(json.dumps({**meta, "verification": report}, indent=2,
                                             sort_keys=False) + "\n")
        publish(staged, paths, out, force)
    return paths


def export_trial(row: pd.Series, exp: Path, config: ExperimentConfig, out: Path, name: str,
                 onnx: bool, force: bool, checkpoint: Path,
                 how: dict[str, Any]) -> dict[str, Path]:
    """Export one trial of an experiment from `checkpoint`."""
    spec = ArchSpec.from_json(row["spec"])
    state = load_checkpoint(checkpoint)
    if state.get("spec") != spec.to_dict():
        raise UserError(f"{checkpoint} holds weights of another spec than trial {row['trial_id']}")
    data = preprocessing(state, config.data, config.image_size)
    provenance = (f"Trial {row['trial_id']} ({row['state']}, epoch "
                  f"{state.get('epoch', row['epochs'])}) of experiment {config.name}, "
                  f"trained on {data.get('data', config.data)}.")
    meta = metadata(row, exp, config, state, data, name, onnx, how)
    return export(spec, state, data, meta, provenance, out, name, onnx, force)


def is_run(path: Path) -> bool:
    """A run directory of `python -m trials.train` (or a search trial's), not an experiment."""
    return RunDir(path).checkpoint.is_file() and not is_experiment(path)


def export_run(path: Path, out: Path, name: str | None, onnx: bool, force: bool,
               allow_partial: bool) -> tuple[str, dict[str, Path]]:
    """Export a `trials.train` run directory like a trial: (what was exported, the files)."""
    run = RunDir(path)
    state = load_checkpoint(run.checkpoint)
    spec = ArchSpec.from_dict(state["spec"])
    epoch, planned = int(state.get("epoch", 0)), int(state.get("epochs", 0))
    if epoch < planned and not allow_partial:
        raise UserError(f"run {path} stopped at epoch {epoch} of {planned}: it has no "
                        f"full-budget weights; --allow-partial would export its last checkpoint")
    name = name or re.sub(r"\W", "_", f"resnest_{spec.tag}_{path.resolve().name}")
    check_outputs(out, output_paths(out, name, onnx), force)
    config = state.get("config", {})
    data = preprocessing(state, config.get("data", "digits"), config.get("image_size"))
    provenance = (f"Run {path.resolve().name} of python -m trials.train (epoch {epoch} of "
                  f"{planned}), trained on {data.get('data', config.get('data'))}.")
    meta = run_metadata(run, spec, state, data, name, onnx)
    return f"run {path} ({spec.tag}, epoch {epoch} of {planned})", export(
        spec, state, data, meta, provenance, out, name, onnx, force)


def publish(staged: dict[str, Path], paths: dict[str, Path], out: Path, force: bool) -> None:
    """Move the verified files into `out`; on any error undo what was moved."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    moved: list[Path] = []
    try:
        for key, target in paths.items():
            if target.exists() and not force:
                raise UserError(f"{target} appeared during the export; pass --force to overwrite")
            staged[key].chmod(0o666 & ~umask())  # staging files are private; the export is not
            shutil.move(str(staged[key]), str(target))
            moved.append(target)
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def check_onnx() -> None:
    """--onnx needs the `[onnx]` extra: checked before any work."""
    try:
        import onnx  # noqa: F401  (optional extra: imported only to check it is there)
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise UserError(f"--onnx needs onnx and onnxruntime to write and verify the file "
                        f"({err.name} is missing): {ONNX_EXTRA}") from None


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    constraints = constraints_of(args)
    if args.trial is not None and (constraints or args.objectives):
        raise UserError("--max-*/--min-accuracy/--objectives choose among trials for --pick; "
                        "they do not apply to --trial")
    if args.name is not None and not args.name.isidentifier():
        raise UserError(f"--name must be a Python identifier (it is the module name), "
                        f"got {args.name!r}")
    if args.onnx:
        check_onnx()
    if is_run(args.experiment):
        if args.trial or args.pick or constraints or args.objectives:
            raise UserError(f"{args.experiment} is a training run, not an experiment: "
                            "--trial/--pick/--max-*/--min-accuracy/--objectives do not apply")
        what, paths = export_run(args.experiment, args.out, args.name, args.onnx, args.force,
                                 args.allow_partial)
        print(f"exported {what} -> {', '.join(str(p) for p in paths.values())}")
        return 0
    if args.experiment.is_dir() and not is_experiment(args.experiment):
        raise UserError(f"{args.experiment} is not an experiment (no "
                        f"{ExperimentDir(args.experiment).config.name}) nor a training run (no "
                        f"{RunDir(args.experiment).checkpoint.name})")
    if args.trial is None and args.pick is None:
        raise UserError("one of the arguments --trial --pick is required for an experiment")
    exp, config = open_experiment(args.experiment)
    df = load(exp)
    if args.trial is not None:
        row = find_trial(df, args.trial, exp)
        how: dict[str, Any] = {"trial": args.trial}
    else:
        objectives = as_objectives(args.objectives or config.objectives)
        row = pick(df, args.pick, objectives, constraints, exp)
        how = {"pick": args.pick, "objectives": [o.name for o in objectives],
               "constraints": constraints}
    checkpoint = checkpoint_of(row, exp, args.allow_partial)
    name = args.name or default_name(row)
    check_outputs(args.out, output_paths(args.out, name, args.onnx), args.force)
    paths = export_trial(row, exp, config, args.out, name, args.onnx, args.force, checkpoint,
                         how)
    print(f"exported trial {row['trial_id']} ({row['tag']}, {row['state']}) "
          f"-> {', '.join(str(p) for p in paths.values())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv,
                   {VerificationError: (1, "export verification failed, nothing written: ")})


if __name__ == "__main__":
    sys.exit(main())
