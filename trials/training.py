"""The training loop: one `Trainer` per trial, epoch by epoch, resumable bit for bit on CPU.

Randomness comes only from `seed` and the epoch number (the data generator and torch's global RNG
are re-seeded at each epoch start), and the checkpoint holds model, optimizer, schedule and curve,
so `2 epochs + resume 1` equals `3 epochs` exactly on CPU.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.errors import UserError
from search_spaces.files import atomic_write_bytes
from trials.bundle import DataBundle
from trials.run_dir import RunDir

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.1, "adamw": 2e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
CHECKPOINT_FORMAT = "resnest-nas/checkpoint/1"


class TrainingFailed(Exception):
    """The run cannot go on (non-finite loss): the trial is FAIL with `reason`, not a crash."""

    def __init__(self, reason: str, epoch: int) -> None:
        super().__init__(reason)
        self.reason, self.epoch = reason, epoch


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters. `lr`/`weight_decay` None take the optimizer's default; `amp` and
    `channels_last` None mean "on CUDA only" (bf16 autocast; channels_last memory format)."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0
    seed: int = 0
    amp: bool | None = None
    channels_last: bool | None = None
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                            f"got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size < 2:
            raise UserError("batch_size must be >= 2 (batch norm needs two images), "
                            f"got {self.batch_size}")
        for name in ("lr", "weight_decay", "momentum", "label_smoothing", "warmup_epochs",
                     "grad_clip"):
            value = getattr(self, name)
            number = isinstance(value, (int, float))
            if value is not None and (not number or not value >= 0 or math.isinf(value)):
                raise UserError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr is not None and self.lr <= 0:
            raise UserError(f"lr must be > 0, got {self.lr}")
        if self.label_smoothing >= 1:
            raise UserError(f"label_smoothing must be < 1, got {self.label_smoothing}")

    @property
    def resolved_lr(self) -> float:
        return float(DEFAULT_LR[self.optimizer] if self.lr is None else self.lr)

    @property
    def resolved_weight_decay(self) -> float:
        wd = self.weight_decay
        return float(DEFAULT_WEIGHT_DECAY[self.optimizer] if wd is None else wd)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Only the keys this class knows are used (a trial config holds more)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: data[k] for k in names if k in data})


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch` (1-based): a pure function, so resume needs no RNG replay."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only; norms and biases (1-D tensors) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor for optimizer step `step` (0-based): linear warm-up, then cosine to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                            epochs: int, warmup_epochs: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of every trainer here: `warmup_epochs` of linear warm-up (at most
    half the steps), then cosine to zero at the last step."""
    total = steps_per_epoch * epochs
    warmup = min(round(warmup_epochs * steps_per_epoch), total // 2)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total))


class Trainer:
    """Trains `model` on `data`; `epoch` counts finished epochs and `curve` their records."""

    def __init__(self, model: nn.Module, data: DataBundle, config: TrainConfig,
                 device: torch.device | str = "cpu", workers: int = 0) -> None:
        self.config, self.device, self.workers = config, torch.device(device), workers
        cuda = self.device.type == "cuda"
        self.amp = cuda if config.amp is None else bool(config.amp and cuda)
        self.channels_last = cuda if config.channels_last is None else bool(config.channels_last)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.data = data.to(self.device) if data.in_memory else data
        self.model = model.to(self.device, memory_format=self.memory_format)
        groups = param_groups(self.model, config.resolved_weight_decay)
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=config.resolved_lr, momentum=config.momentum,
                nesterov=config.momentum > 0)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=config.resolved_lr)
        self.steps_per_epoch = data.steps_per_epoch(config.batch_size)
        self.scheduler = warmup_cosine_scheduler(self.optimizer, self.steps_per_epoch,
                                                 config.epochs, config.warmup_epochs)
        self.generator = torch.Generator()
        self.epoch = 0
        self.curve: list[dict[str, Any]] = []
        self.on_step: Callable[[], None] | None = None  # progress hook, called after each step

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate on val, append and return the epoch record."""
        cfg, epoch = self.config, self.epoch + 1
        start = time.perf_counter()
        self.generator.manual_seed(epoch_seed(cfg.seed, epoch))
        torch.manual_seed(epoch_seed(cfg.seed, epoch))  # dropout and any other global-RNG op
        self.model.train()
        # .item() syncs a GPU: check less often there
        check_every = 1 if self.device.type == "cpu" else 25
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        batches = self.data.batches("train", cfg.batch_size, train=True, generator=self.generator,
                                    device=self.device, workers=self.workers)
        for step, (x, y) in enumerate(batches):
            with self._autocast():
                logits = self.model(self._input(x))
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if (step + 1) % check_every == 0 and not math.isfinite(loss_sum.item()):
                self._fail(loss_sum.item(), epoch, step)
            if self.on_step is not None:
                self.on_step()
        train_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            self._fail(train_loss, epoch, self.steps_per_epoch - 1)
        train_seconds = time.perf_counter() - start
        val = self.evaluate("val")
        record: dict[str, Any] = {
            "epoch": epoch, "train_loss": train_loss, "train_top1": correct.item() / max(seen, 1),
            "val_loss": val["loss"], "val_top1": val["top1"],
        }
        if "top5" in val:
            record["val_top5"] = val["top5"]
        record.update({
            "epoch_seconds": time.perf_counter() - start,  # training + validation
            # training images per second of training time (augmentation included)
            "images_per_s": seen / train_seconds if train_seconds > 0 else 0.0,
            "lr": self.optimizer.param_groups[0]["lr"],
        })
        self.epoch = epoch
        self.curve.append(record)
        return record

    def _fail(self, value: float, epoch: int, step: int) -> None:
        raise TrainingFailed(
            f"non-finite training loss ({value}) in epoch {epoch} by step {step + 1}; "
            f"try a lower learning rate (lr={self.config.resolved_lr:g})", epoch)

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Mean cross-entropy (no smoothing), top-1 and, with >= 10 classes, top-5 on `split`."""
        self.model.eval()
        loss = torch.zeros((), device=self.device, dtype=torch.float64)
        top1 = torch.zeros((), device=self.device, dtype=torch.int64)
        top5 = torch.zeros((), device=self.device, dtype=torch.int64)
        n = 0
        five = self.data.num_classes >= 10
        for x, y in self.data.batches(split, self.config.eval_batch_size, device=self.device,
                                      workers=self.workers):
            with self._autocast():
                logits = self.model(self._input(x)).float()
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            top1 += (logits.argmax(1) == y).sum()
            if five:
                top5 += (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum()
            n += len(y)
        out = {"loss": loss.item() / n, "top1": top1.item() / n}
        if five:
            out["top5"] = top5.item() / n
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything resume needs, tensors on CPU."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            "epoch": self.epoch,
            "curve": [dict(r) for r in self.curve],
            "train_config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        self.epoch = int(state["epoch"])
        self.curve = [dict(r) for r in state["curve"]]


def to_cpu(obj: Any) -> Any:
    """A copy of a (nested dict/list of) state on the CPU, so a checkpoint loads anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    return obj


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (temp file + rename): a kill mid-write never leaves a torn checkpoint."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file (or a run directory's) without executing pickles."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).checkpoint
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/foreign files
        first = str(err).splitlines()[0]
        raise UserError(f"{path} is not a readable checkpoint: {first}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return state
