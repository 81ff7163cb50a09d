"""The training loop and the framework-free trial: it learns, resumes bit for bit on CPU, fails
cleanly on a non-finite loss, and adapts or refuses specs by the documented rule; a TrialConfig
round-trips through JSON exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from data_fixtures import tiny_spec

import nas
from search_spaces import named_point
from search_spaces.errors import UserError
from trials.data import describe, load_data
from trials.training import (
    TrainConfig,
    Trainer,
    TrainingFailed,
    load_checkpoint,
    param_groups,
    save_checkpoint,
    warmup_cosine,
)
from trials.trial import Trial
from trials.trial_config import (
    TrialConfig,
    build_trial_config,
    check_config,
    fit_spec,
    resolve_arch,
)

# 8 px digits, a quarter of the training split: ~1 s per epoch on one core.
USER = {"spec": tiny_spec().to_dict(), "image_size": 8, "train_fraction": 0.25, "batch_size": 32,
        "lr": 0.05, "epochs": 3, "seed": 0, "device": "cpu"}
TIMING_KEYS = ("epoch_seconds", "images_per_s")


def config(**overrides) -> TrialConfig:
    """The trial config of USER with `overrides` (user-facing keys), decided once."""
    return build_trial_config({**USER, **overrides})


CONFIG = config()


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: deterministic and fast on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _untimed(curve: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in curve]


def test_loop_learns_digits() -> None:
    data = load_data("digits", 8).subset(0.25)
    torch.manual_seed(0)
    trainer = Trainer(nas.build_model(tiny_spec()), data,
                      TrainConfig(epochs=3, batch_size=32, lr=0.05))
    records = [trainer.train_epoch() for _ in range(3)]
    assert [r["epoch"] for r in records] == [1, 2, 3] and trainer.epoch == 3
    assert records[-1]["val_top1"] >= 0.5  # chance is 0.1
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert set(records[0]) >= {"epoch", "train_loss", "val_top1", "val_top5", "epoch_seconds",
                               "images_per_s", "lr"}
    assert 0 <= records[-1]["val_top1"] <= records[-1]["val_top5"] <= 1
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at zero


def test_trial_resume_reproduces_uninterrupted_run(tmp_path: Path) -> None:
    straight = Trial(CONFIG)
    full = list(straight.run())
    assert [m["epoch"] for m in full] == [1, 2, 3] and straight.done
    assert straight.costs["params"] > 0 and straight.costs["macs"] > 0  # decided by the config

    first = Trial(CONFIG)
    runner = first.run()
    part = [next(runner), next(runner)]
    first.save(tmp_path)
    del first, runner
    resumed = Trial(CONFIG, checkpoint=tmp_path)  # a fresh process would do exactly this
    assert resumed.trainer.epoch == 2
    rest = list(resumed.run())
    assert [m["epoch"] for m in rest] == [3]
    assert _untimed(part + rest) == _untimed(full)  # identical losses and accuracies
    assert _untimed(resumed.trainer.curve) == _untimed(straight.trainer.curve)
    for name, tensor in straight.trainer.model.state_dict().items():
        assert torch.equal(tensor, resumed.trainer.model.state_dict()[name]), name


def test_checkpoint_layout_and_trial_dir(tmp_path: Path) -> None:
    trial = Trial(config(epochs=1, trial_dir=str(tmp_path / "t0")))
    list(trial.run())
    state = load_checkpoint(tmp_path / "t0")
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "epochs", "curve", "spec", "config",
            "data", "costs", "train_config"} <= set(state)
    assert state["epoch"] == 1 and state["data"]["image_size"] == 8 and state["data"]["mean"]
    assert (tmp_path / "t0" / "metrics.jsonl").read_text().count("\n") == 1
    assert (tmp_path / "t0" / "spec.json").exists()
    assert TrialConfig.from_flat(state["config"], trial.spec, state["costs"]) == trial.config
    with pytest.raises(UserError, match="different settings: epochs=1"):
        Trial(config(epochs=2), checkpoint=state)
    with pytest.raises(UserError, match="another spec"):
        other = tiny_spec().replace(stem_width=16).to_dict()
        Trial(config(spec=other, epochs=1), checkpoint=state)


def test_non_finite_loss_fails_the_trial_not_the_caller() -> None:
    trial = Trial(config(lr=1e6, grad_clip=0.0, label_smoothing=0.0, epochs=2))
    with pytest.raises(TrainingFailed) as err:
        list(trial.run())
    assert "non-finite training loss" in err.value.reason and err.value.epoch == 1
    assert trial.trainer.epoch == 0 and not trial.trainer.curve


def test_no_weight_decay_on_norms_and_biases() -> None:
    model = nas.build_model(tiny_spec())
    decay, no_decay = param_groups(model, 5e-4)
    assert no_decay["weight_decay"] == 0 and all(p.ndim == 1 for p in no_decay["params"])
    n_norm = sum(m.weight is not None for m in model.modules()
                 if isinstance(m, torch.nn.BatchNorm2d))
    assert len(no_decay["params"]) >= 2 * n_norm and all(p.ndim > 1 for p in decay["params"])


def test_warmup_cosine_schedule() -> None:
    factors = [warmup_cosine(s, 4, 20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and factors[4] == 1.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert math.isclose(warmup_cosine(19, 4, 20), 0.5 * (1 + math.cos(math.pi * 15 / 16)))


def test_adamw_trains_and_checkpoint_round_trips(tmp_path: Path) -> None:
    trial = Trial(config(optimizer="adamw", lr=2e-3, epochs=1, train_fraction=0.1))
    (record,) = trial.run()
    assert math.isfinite(record["train_loss"])
    path = save_checkpoint(trial.state_dict(), tmp_path / "c.pt")
    assert load_checkpoint(path)["optimizer"]["state"]  # AdamW moments are kept


# --- spec resolution and configuration errors ---------------------------------------------------
def test_named_points_adapt_explicit_specs_must_match() -> None:
    data = describe("digits", 32)
    spec, explicit = resolve_arch("resnest14d")
    assert not explicit
    fitted = fit_spec(spec, data, adapt=not explicit)  # the rule Trial and the CLI apply
    assert (fitted.num_classes, fitted.in_channels) == (10, 1)
    assert named_point("resnest14d").num_classes == 1000
    explicit_spec, explicit = resolve_arch(tiny_spec(num_classes=5).to_dict())
    assert explicit
    with pytest.raises(UserError, match="num_classes=5 but data digits needs num_classes=10"):
        fit_spec(explicit_spec, data, adapt=False)
    assert fit_spec(explicit_spec, data, adapt=True).num_classes == 10
    sample, explicit = resolve_arch("resnest:3")
    assert not explicit and sample.input_regime == "small"


def test_too_small_image_is_refused() -> None:
    with pytest.raises(UserError, match=r"image size 16 is too small .* need >= 32 px"):
        fit_spec(named_point("resnest14d"), describe("digits", 16), adapt=True)
    with pytest.raises(UserError, match=r"image size 16 is too small for spec resnest14d"):
        build_trial_config({"spec": "resnest14d", "image_size": 16})


def test_config_errors() -> None:
    with pytest.raises(UserError, match="unknown trial config key"):
        check_config({"spec": "resnest14d", "epoch": 3})
    with pytest.raises(UserError, match="needs 'spec'"):
        check_config({"epochs": 3})
    assert check_config({"spec": "x", "train": {"lr": 0.2}, "_note": 1})["lr"] == 0.2
    with pytest.raises(UserError, match="both at the top level"):
        check_config({"spec": "x", "lr": 0.1, "train": {"lr": 0.2}})
    with pytest.raises(UserError, match="batch_size must be >= 2"):
        TrainConfig(batch_size=1)
    with pytest.raises(UserError, match="optimizer must be one of"):
        TrainConfig(optimizer="lion")


def test_corrupt_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=str(bad)):
        load_checkpoint(tmp_path)


# --- TrialConfig: decided once, JSON-able, exact round trip -----------------------------------
ROUND_TRIP = {
    "tiny spec": {"spec": tiny_spec().to_dict(), "image_size": 8},
    "named point": {"spec": "resnest14d", "image_size": 32, "optimizer": "adamw", "epochs": 2},
    "space sample": {"spec": "resnest:3", "image_size": 8, "train": {"lr": 0.3, "seed": 7},
                     "trial_dir": "/tmp/t0003", "resume_from": "/tmp/t0001/checkpoint.pt",
                     "train_fraction": 0.5, "in_memory": False, "workers": 2, "device": "cpu"},
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIP))
def test_trial_config_round_trips_through_json_exactly(case: str) -> None:
    built = build_trial_config(ROUND_TRIP[case])
    assert (built.spec.num_classes, built.spec.in_channels) == (10, 1)  # adapted to digits
    assert set(built.costs) == {"params", "macs"} and built.costs["macs"] > 0
    text = json.dumps(built.to_dict())
    back = TrialConfig.from_dict(json.loads(text))
    assert back == built and json.dumps(back.to_dict()) == text
    assert TrialConfig.from_flat(built.flat(), built.spec, built.costs) == built
    with_costs = TrialConfig(spec=built.spec, data="digits", image_size=8,
                             costs={"params": 1.5, "macs": 2.0, "latency_ms": 0.25})
    assert TrialConfig.from_dict(json.loads(json.dumps(with_costs.to_dict()))) == with_costs


def test_trial_config_from_dict_refuses_what_it_does_not_know() -> None:
    good = CONFIG.to_dict()
    assert TrialConfig.from_dict({**good, "_case": "ok"}) == CONFIG  # a driver's bookkeeping
    with pytest.raises(UserError, match="unknown TrialConfig key"):
        TrialConfig.from_dict({**good, "epochs": 3})  # training settings live under "train"
    with pytest.raises(UserError, match="needs image_size"):
        TrialConfig.from_dict({k: v for k, v in good.items() if k != "image_size"})
    with pytest.raises(UserError, match="'train' must be a dict"):
        TrialConfig.from_dict({**good, "train": {"epoch": 3}})
    legacy = {**CONFIG.flat(), "image_size": None, "adapt": True}  # an older checkpoint's config
    assert TrialConfig.from_flat(legacy, CONFIG.spec, {}).image_size == 16  # digits' default
