"""`python -m trials.train`: train one architecture standalone with the search's own trial code.

Class-count rule: named points (`resnest14d`) and space samples (`resnest:SEED`) are templates, so
their `num_classes`/`in_channels` adapt to the data; a spec JSON (file or text) states them, so a
mismatch is an error unless `--adapt` is given.

Writes to --out: `spec.json` (the trained spec), `checkpoint.pt` (every epoch), `metrics.jsonl` (one
record per epoch), `result.json` (`val_top1`, `test_top1`, `epochs`, `seconds`, ...). `--resume`
continues the run in --out from its checkpoint with its saved settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from search_spaces.cli import OneLineParser, run_cli
from search_spaces.errors import UserError
from search_spaces.files import atomic_write_text
from trials.training import TrainingFailed, load_checkpoint
from trials.trial import Trial

# CLI option -> trial config key, for every option that feeds the trial config.
_CONFIG_OPTIONS = (
    "arch", "data", "epochs", "image_size", "batch_size", "lr", "optimizer", "weight_decay",
    "momentum", "label_smoothing", "warmup_epochs", "grad_clip", "seed", "device", "workers",
    "val_fraction", "train_fraction",
)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m trials.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", help="named point, SPACE:SEED (e.g. resnest:0), or spec JSON file/text")
    p.add_argument("--data", help="digits (default) | cifar10:PATH | cifar100:PATH | folder:PATH")
    p.add_argument("--epochs", type=int, help="epochs (default 10)")
    p.add_argument("--out", type=Path, help="output directory (default runs/train-<time>)")
    p.add_argument("--image-size", type=int, help="input side in px (default: digits 16, CIFAR 32, folder 64)")
    p.add_argument("--batch-size", type=int, help="training batch (default 64)")
    p.add_argument("--lr", type=float, help="peak learning rate (default sgd 0.1, adamw 0.002)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help="sgd with Nesterov (default) or adamw")
    p.add_argument("--weight-decay", type=float, help="default sgd 5e-4, adamw 0.05 (not on norms/biases)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--label-smoothing", type=float, help="default 0.1")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up before the cosine decay (default 1)")
    p.add_argument("--grad-clip", type=float, help="max gradient norm, 0 disables (default 5)")
    p.add_argument("--seed", type=int, help="training seed (default 0); the data split is fixed")
    p.add_argument("--device", help="auto (default) | cpu | cuda[:N]")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice); use 1 on a shared CPU")
    p.add_argument("--workers", type=int, help="DataLoader workers for large image folders")
    p.add_argument("--val-fraction", type=float, help="val share carved from train when absent (0.1)")
    p.add_argument("--train-fraction", type=float, help="train on a fixed stratified subset (default 1)")
    p.add_argument("--adapt", action="store_true", help="retarget a spec JSON's classes/channels to the data")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _config(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: getattr(args, k) for k in _CONFIG_OPTIONS if getattr(args, k) is not None}
    if "arch" in given:
        given["spec"] = given.pop("arch")
    given["adapt"] = bool(args.adapt)  # the trial default (True) suits searches, not explicit JSON
    return given


def _resume_config(out: Path, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved run's config (and checkpoint); options given again must agree with it."""
    state = load_checkpoint(out / "checkpoint.pt")
    config = {**state["config"], **state["train_config"], "spec": state["spec"]}
    given.pop("spec", None)  # the checkpoint's spec is the adapted one; --arch may be a template
    for key in ("device", "workers", "adapt"):  # where it runs may change; what it computes may not
        if key in given:
            config[key] = given.pop(key)
    config["trial_dir"] = str(out)
    differ = [k for k, v in given.items() if k in config and config[k] != v]
    if differ:
        raise UserError(f"--resume: {', '.join(f'{k}={given[k]!r}' for k in differ)} differ from the run in "
                        f"{out} ({', '.join(f'{k}={config[k]!r}' for k in differ)}); drop them")
    return config, state


def _check_out(out: Path, resume: bool) -> None:
    has_run = (out / "checkpoint.pt").exists()
    if resume and not has_run:
        raise UserError(f"--resume: {out} holds no checkpoint.pt to continue")
    if has_run and not resume:
        raise UserError(f"{out} already holds a training run (checkpoint.pt); pass --resume or another --out")


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
    given = _config(args)
    _check_out(out, args.resume)
    state = None
    if args.resume:
        given, state = _resume_config(out, given)
    elif "spec" not in given:
        raise UserError("--arch is required (a named point, SPACE:SEED, or a spec JSON file)")
    given.setdefault("trial_dir", str(out))
    started = time.perf_counter()
    trial = Trial(given, checkpoint=state, threads=args.threads, include_test=True)
    data, spec = trial.data, trial.spec
    _make_out(out)
    (out / "spec.json").write_text(spec.to_json(indent=2) + "\n")
    sizes = "/".join(str(n) for n in data.describe()["sizes"].values())
    print(f"training {spec.tag} ({trial.costs.get('params', 0):,.0f} params, {trial.costs.get('macs', 0):,.0f} "
          f"MACs at {data.image_size}px) on {data.name} (train/val/test {sizes}) for {trial.epochs} epochs "
          f"on {trial.device}", file=sys.stderr)
    steps = trial.trainer.steps_per_epoch
    bar = tqdm(total=steps * trial.epochs, initial=steps * trial.trainer.epoch, unit="step",
               file=sys.stderr, disable=args.quiet, dynamic_ncols=True)
    trial.trainer.on_step = lambda: bar.update(1)
    result: dict[str, Any] = {"spec_tag": spec.tag, "data": data.name, "image_size": data.image_size,
                              **trial.costs}
    try:
        for metrics in trial.run():  # writes checkpoint.pt, metrics.jsonl, spec.json to out
            bar.set_postfix(epoch=metrics["epoch"], loss=f"{metrics['train_loss']:.3f}",
                            val=f"{metrics['val_top1']:.2%}")
    except TrainingFailed as err:
        bar.close()
        _write_json(out / "result.json", {**result, "state": "FAIL", "reason": err.reason,
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
        "val_top5": curve[-1].get("val_top5"), "test_top1": test.get("top1"), "test_top5": test.get("top5"),
        "seconds": sum(r["epoch_seconds"] for r in curve),
        "wall_seconds": time.perf_counter() - started,
    })
    _write_json(out / "result.json", result)
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
