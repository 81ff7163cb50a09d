"""`python -m trials.train`: train one architecture standalone with the search's own trial code.

Class-count rule: named points (`resnest14d`) and space samples (`resnest:SEED`) are templates, so
their `num_classes`/`in_channels` adapt to the data; a spec JSON (file or text) states them, so a
mismatch is an error unless `--adapt` is given.

Writes to --out: `spec.json` (the trained spec), `checkpoint.pt` (every epoch), `metrics.jsonl` (one
record per epoch), `result.json` (`val_top1`, `test_top1`, `epochs`, `seconds`, ...). `--resume`
continues the run in --out from its checkpoint with its saved settings.

`--init-from PATH` starts from trained weights: an export directory of `python -m nas.export` (or
one of its files), a run directory (this command's --out, or a search trial's directory) or a
checkpoint file. Without --arch the architecture is theirs; the classifier is replaced when the
data has another class count, and every other tensor must fit exactly. result.json then names the
weights in `init_from`; `python -m nas.export DIR --out EXPORT` exports the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from nas.models.builder import load_weights
from search_spaces.cli import OneLineParser, run_cli
from search_spaces.errors import UserError
from search_spaces.files import atomic_write_text
from search_spaces.spec import ArchSpec
from trials.bundle import DATA_FORMS, IMAGE_SIZE_HELP, TRAIN_FRACTION_HELP
from trials.run_dir import RunDir
from trials.training import TrainConfig, TrainingFailed, load_checkpoint
from trials.trial import Trial
from trials.trial_config import TRIAL_DEFAULTS, TrialConfig, build_trial_config

# CLI option -> trial config key, for every option that feeds the trial config.
_CONFIG_OPTIONS = (
    "arch", "data", "epochs", "image_size", "batch_size", "lr", "optimizer", "weight_decay",
    "momentum", "label_smoothing", "warmup_epochs", "grad_clip", "seed", "device", "workers",
    "val_fraction", "train_fraction",
)


# Training defaults, stated in --help (the flags default to None: unset keeps TrainConfig's).
_TRAIN = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

def parser() -> argparse.ArgumentParser:
    """Every option's help states its default (flags are off unless given)."""
    p = OneLineParser(prog="python -m trials.train", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--arch", help="named point, SPACE:SEED (e.g. resnest:0), or spec JSON file/text "
                       "(default: none, required unless --resume or --init-from)")
    add("--init-from", type=Path, metavar="PATH",
        help="start from these weights: an export directory, a run directory or a checkpoint "
             "file (default: none, a fresh initialisation)")
    add("--data", help=f"{DATA_FORMS} (default: {TRIAL_DEFAULTS['data']})")
    add("--epochs", type=int, help=f"epochs (default: {_TRAIN['epochs']})")
    add("--out", type=Path, help="output directory (default: runs/train-<time>)")
    add("--image-size", type=int,
        help=f"input side in px (default: the data's: {IMAGE_SIZE_HELP})")
    add("--batch-size", type=int, help=f"training batch (default: {_TRAIN['batch_size']})")
    add("--lr", type=float, help="peak learning rate (default: sgd 0.1, adamw 0.002)")
    add("--optimizer", choices=("sgd", "adamw"),
        help="sgd with Nesterov or adamw (default: sgd)")
    add("--weight-decay", type=float,
        help="not on norms/biases (default: sgd 5e-4, adamw 0.05)")
    add("--momentum", type=float, help=f"SGD momentum (default: {_TRAIN['momentum']:g})")
    add("--label-smoothing", type=float, help=f"(default: {_TRAIN['label_smoothing']:g})")
    add("--warmup-epochs", type=float,
        help=f"linear warm-up before the cosine decay (default: {_TRAIN['warmup_epochs']:g})")
    add("--grad-clip", type=float,
        help=f"max gradient norm, 0 disables (default: {_TRAIN['grad_clip']:g})")
    add("--seed", type=int,
        help=f"training seed; the data split is fixed (default: {_TRAIN['seed']})")
    add("--device", help="auto | cpu | cuda[:N] (default: auto)")
    add("--threads", type=int,
        help="torch CPU threads; use 1 on a shared CPU (default: torch's choice)")
    add("--workers", type=int,
        help="DataLoader workers for large image folders (default: the CPU threads)")
    add("--val-fraction", type=float,
        help="val share carved from train when absent (default: 0.1)")
    add("--train-fraction", type=float,
        help=f"train on a fixed stratified share of the train split (default: the data's: "
             f"{TRAIN_FRACTION_HELP})")
    add("--adapt", action="store_true",
        help="retarget a spec JSON's classes/channels to the data")
    add("--resume", action="store_true", help="continue the run in --out from checkpoint.pt")
    add("--quiet", action="store_true", help="no progress bar")
    return p


@dataclass(frozen=True)
class InitSource:
    """Weights to start from (--init-from): where, what kind, their architecture and tensors."""

    path: Path
    kind: str  # "export", "run" or "checkpoint"
    spec: ArchSpec
    weights: dict[str, torch.Tensor]


def _none_of_the_kinds(path: Path) -> UserError:
    return UserError(
        f"--init-from {path} is none of: an export directory of python -m nas.export (one "
        f"NAME.safetensors), a run directory ({RunDir(path).checkpoint.name} of trials.train or a "
        "search trial's OUT/NAME/trials/<id>) or a checkpoint file")


def _from_export(weights: Path) -> InitSource:
    """An export's weights: the spec travels in the .safetensors file's metadata."""
    if not weights.is_file():
        raise UserError(f"--init-from: the export's weights {weights} do not exist")
    try:
        with safe_open(str(weights), framework="pt") as f:
            spec_json = (f.metadata() or {}).get("spec")
        tensors = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for foreign files
        raise UserError(f"--init-from {weights} is not a readable .safetensors file: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                        ) from None
    if spec_json is None:
        raise UserError(f"--init-from {weights} names no architecture (no spec in its metadata): "
                        "it is not an export of python -m nas.export")
    return InitSource(weights, "export", ArchSpec.from_json(spec_json), tensors)


def _from_checkpoint(path: Path, kind: str) -> InitSource:
    state = load_checkpoint(path)
    return InitSource(path, kind, ArchSpec.from_dict(state["spec"]), dict(state["model"]))


def init_source(path: Path) -> InitSource:
    """Read --init-from PATH: an export directory (or one of its files), a run directory or a
    checkpoint file; anything else, or an ambiguous directory, is one clear error."""
    if not path.exists():
        raise UserError(f"--init-from {path} does not exist")
    if path.is_dir():
        if RunDir(path).checkpoint.is_file():
            return _from_checkpoint(RunDir(path).checkpoint, "run")
        exports = sorted(path.glob("*.safetensors"))
        if len(exports) > 1:
            raise UserError(f"--init-from {path} holds {len(exports)} exports "
                            f"({', '.join(e.stem for e in exports)}); pass one of its files, "
                            f"e.g. {exports[0]}")
        if not exports:
            raise _none_of_the_kinds(path)
        return _from_export(exports[0])
    if path.suffix in (".safetensors", ".json", ".py", ".onnx"):
        return _from_export(path.with_suffix(".safetensors"))
    try:
        return _from_checkpoint(path, "checkpoint")
    except UserError:
        raise _none_of_the_kinds(path) from None


def _config(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: getattr(args, k) for k in _CONFIG_OPTIONS if getattr(args, k) is not None}
    if "arch" in given:
        given["spec"] = given.pop("arch")
    given["adapt"] = bool(args.adapt)  # the trial default (True) suits searches, not explicit JSON
    return given


def _resume_config(out: Path, given: dict[str, Any]) -> tuple[TrialConfig, dict[str, Any]]:
    """The saved run's config (and checkpoint); options given again must agree with it."""
    state = load_checkpoint(RunDir(out).checkpoint)
    saved = {**state["config"], **state["train_config"]}
    given.pop("spec", None)  # the checkpoint's spec is the adapted one; --arch may be a template
    given.pop("adapt", None)
    moved = {k: given.pop(k) for k in ("device", "workers") if k in given}  # where it runs
    differ = [k for k, v in given.items() if k in saved and saved[k] != v]
    if differ:
        raise UserError(f"--resume: {', '.join(f'{k}={given[k]!r}' for k in differ)} differ from "
                        f"the run in {out} ({', '.join(f'{k}={saved[k]!r}' for k in differ)}); "
                        "drop them")
    config = TrialConfig.from_flat(saved, ArchSpec.from_dict(state["spec"]), state.get("costs", {}))
    return replace(config, trial_dir=str(out), **moved), state


def _check_out(out: Path, resume: bool) -> None:
    has_run = RunDir(out).checkpoint.exists()
    if resume and not has_run:
        raise UserError(f"--resume: {out} holds no checkpoint.pt to continue")
    if has_run and not resume:
        raise UserError(f"{out} already holds a training run (checkpoint.pt); pass --resume or "
                        "another --out")


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write output directory {out}: {err.strerror}") from None


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def train(args: argparse.Namespace) -> int:
    """Run (or resume) one training; returns the exit code."""
    out = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    run = RunDir(out)
    given = _config(args)
    if args.init_from is not None and args.resume:
        raise UserError("--init-from starts a new run from other weights and --resume "
                        "continues this one from its own checkpoint: pass one of them")
    _check_out(out, args.resume)
    started = time.perf_counter()
    state, init = None, None
    if args.init_from is not None:
        init = init_source(args.init_from)
        if "spec" not in given:  # their architecture; the classifier follows the data
            given.update(spec=init.spec.to_dict(), adapt=True)
    if args.resume:
        config, state = _resume_config(out, given)
    elif "spec" not in given:
        raise UserError("--arch is required (a named point, SPACE:SEED, or a spec JSON file)")
    else:
        config = build_trial_config({**given, "trial_dir": str(out)})
    trial = Trial(config, checkpoint=state, threads=args.threads, include_test=True)
    data, spec, costs = trial.data, trial.spec, trial.costs
    if init is not None:
        try:
            replaced = load_weights(trial.trainer.model, init.weights)
        except UserError as err:
            raise UserError(f"--init-from {init.path}: {err}") from None
        head = (f"; classifier replaced ({init.spec.num_classes} -> {spec.num_classes} classes)"
                if replaced else "")
        print(f"starting from the weights of {init.kind} {init.path}{head}", file=sys.stderr)
    _make_out(out)
    atomic_write_text(run.spec, spec.to_json(indent=2) + "\n")
    sizes = "/".join(str(n) for n in data.describe()["sizes"].values())
    print(f"training {spec.tag} ({costs.get('params', 0):,.0f} params, "
          f"{costs.get('macs', 0):,.0f} MACs at {data.image_size}px) on {data.name} "
          f"(train/val/test {sizes}) for {trial.epochs} epochs on {trial.device}", file=sys.stderr)
    steps = trial.trainer.steps_per_epoch
    bar = tqdm(total=steps * trial.epochs, initial=steps * trial.trainer.epoch, unit="step",
               file=sys.stderr, disable=args.quiet, dynamic_ncols=True)
    trial.trainer.on_step = lambda: bar.update(1)
    result: dict[str, Any] = {"spec_tag": spec.tag, "data": data.name,
                              "image_size": data.image_size, **costs}
    if init is not None:
        result["init_from"] = str(init.path)
    try:
        for record in trial.run():  # writes the checkpoint, metrics and spec to out
            bar.set_postfix(epoch=record["epoch"], loss=f"{record['train_loss']:.3f}",
                            val=f"{record['val_top1']:.2%}")
    except TrainingFailed as err:
        bar.close()
        _write_json(run.result, {**result, "state": "FAIL", "reason": err.reason,
                                 "epochs": trial.trainer.epoch})
        print(f"error: training failed: {err.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted after epoch {trial.trainer.epoch}; continue with --resume --out {out}",
              file=sys.stderr)
        return 130
    bar.close()
    curve = trial.trainer.curve
    test = trial.trainer.evaluate("test") if data.test is not None else {}
    result.update({
        "state": "COMPLETE", "epochs": trial.trainer.epoch, "val_top1": curve[-1]["val_top1"],
        "val_top5": curve[-1].get("val_top5"), "test_top1": test.get("top1"),
        "test_top5": test.get("top5"), "seconds": sum(r["epoch_seconds"] for r in curve),
        "wall_seconds": time.perf_counter() - started,
    })
    _write_json(run.result, result)
    test_text = f"test top-1 {test['top1']:.2%}" if test else "no test split"
    print(f"{test_text} (val top-1 {result['val_top1']:.2%}) after {result['epochs']} epochs, "
          f"{result['seconds']:.1f} s training; results in {out}")
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    return train(parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
