"""What every dataset loader produces and shares: `DataBundle` (splits plus preprocessing facts),
`Split`, `DatasetShape`, `DataError`, the stratified split, batched augmentation and the per-batch
decoding of image files that streamed folders use. The loaders (`trials.data`, `trials.folder`,
`trials.idx`) import this module; it imports none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from search_spaces.errors import UserError

DATA_KINDS = ("digits", "cifar10", "cifar100", "folder", "fashion-mnist", "fashion-mnist-subset",
              "idx")
# How a data string is written, for help texts and errors.
DATA_FORMS = ("fashion-mnist-subset | fashion-mnist[:PATH] | digits | idx:PATH | cifar10:PATH | "
              "cifar100:PATH | folder:PATH")
# The training side in px when none is given: digits upsampled from 8, the shipped Fashion-MNIST
# subset at the quick start's 16 px (docs/benchmarks.md, "Calibrating the quick start"), the
# others native.
DEFAULT_IMAGE_SIZE = {"digits": 16, "cifar10": 32, "cifar100": 32, "folder": 64,
                      "fashion-mnist": 28, "fashion-mnist-subset": 16, "idx": 28}
IMAGE_SIZE_HELP = ", ".join(f"{k} {v}" for k, v in DEFAULT_IMAGE_SIZE.items())
# The share of the train split a trial trains on when none is given: the quick start's subset
# trains on a quarter of its 9,000 train images (same calibration); every other dataset on all.
DEFAULT_TRAIN_FRACTION = {"fashion-mnist-subset": 0.25}
TRAIN_FRACTION_HELP = ", ".join(f"{k} {v}" for k, v in DEFAULT_TRAIN_FRACTION.items()) + ", else 1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")
# Folders up to this many bytes (uint8 at the training size) are decoded once and kept in memory.
IN_MEMORY_LIMIT_BYTES = 1 << 30
SPLIT_SEED = 0  # the train/val/test split never depends on a trial's seed: all trials share it
NORMS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fashion-mnist": ((0.2860,), (0.3530,)),  # of the official 60,000 train images
}
NORMS["fashion-mnist-subset"] = NORMS["fashion-mnist"]  # the same normalisation as the full set


class DataError(UserError):
    """A dataset string, path or file is not what the loader expects."""


@dataclass(frozen=True)
class DatasetShape:
    """What a model must match to train on a dataset (the search driver needs only this)."""

    name: str
    image_size: int
    num_classes: int
    in_channels: int


@dataclass(frozen=True)
class Split:
    """Images (uint8 NCHW, in memory) or image files (decoded per batch), with int64 labels."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    files: tuple[Path, ...] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DataBundle:
    """A dataset ready for training: splits plus what an exported model needs to preprocess."""

    name: str
    kind: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split | None
    augment: str  # "translate" (digits), "crop" (shifts, no flips: idx) or "crop_flip"

    @property
    def in_memory(self) -> bool:
        return self.train.images is not None

    @property
    def shape(self) -> DatasetShape:
        return DatasetShape(self.name, self.image_size, self.num_classes, self.in_channels)

    def describe(self) -> dict[str, Any]:
        """JSON-ready preprocessing facts, stored in checkpoints and exports."""
        return {
            "data": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels,
            "image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
            "classes": list(self.classes),
            "sizes": {k: len(s) for k in ("train", "val", "test") if (s := getattr(self, k))},
        }

    def to(self, device: torch.device | str) -> DataBundle:
        """A copy with in-memory tensors on `device` (batches are then cut on the device)."""
        def move(split: Split | None) -> Split | None:
            if split is None or split.images is None:
                return split
            return replace(split, images=split.images.to(device), labels=split.labels.to(device))
        return replace(self, train=move(self.train), val=move(self.val), test=move(self.test))

    def subset(self, fraction: float) -> DataBundle:
        """A copy training on a fixed stratified `fraction` of the train split (val/test kept):
        cheap low-fidelity runs and quick tests."""
        if not 0.0 < fraction <= 1.0:
            raise DataError(f"train fraction must be in (0, 1], got {fraction}")
        if fraction == 1.0:
            return self
        _, take = stratified_split(self.train.labels.cpu().numpy(), fraction, SPLIT_SEED)
        idx = torch.as_tensor(take)
        images, files = self.train.images, self.train.files
        train = Split(
            labels=self.train.labels[idx.to(self.train.labels.device)],
            images=None if images is None else images[idx.to(images.device)],
            files=None if files is None else tuple(files[i] for i in take),
        )
        return replace(self, train=train)

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.train) // batch_size)

    def batches(self, split: str, batch_size: int, *, train: bool = False,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalized float batches. Training batches are shuffled, augmented and never smaller
        than 2 (batch norm in the attention sees one value per channel at batch size 1)."""
        data: Split = getattr(self, split)
        if data is None:
            raise DataError(f"{self.name} has no {split} split")
        n = len(data)
        if train:
            if generator is None:
                raise ValueError("training batches need an explicit generator")
            order = torch.randperm(n, generator=generator)
            batch_size = min(batch_size, n)
            chunks = [order[i * batch_size:(i + 1) * batch_size] for i in range(n // batch_size)]
        else:
            order = torch.arange(n)
            chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        for x, y in self._raw_batches(data, chunks, device, workers):
            if train:
                x = augment(x, self.augment, generator)
            yield (x.float().div_(255.0) - mean) / std, y

    def _raw_batches(self, data: Split, chunks: list[torch.Tensor], device: Any,
                     workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if data.images is not None:
            for idx in chunks:
                idx = idx.to(data.images.device)
                yield data.images[idx].to(device), data.labels[idx].to(device)
            return
        for x, y in decode_batches(data, chunks, self.image_size, workers):
            yield x.to(device), y.to(device)


def stratified_split(labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, take) index arrays: about `fraction` of each class taken, at least one of any class
    with two or more members; seeded, independent of any global RNG."""
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    take: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1 if len(idx) >= 2 else 0)
        take.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(take))


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random shift (zero fill) and, for `crop_flip`, a horizontal flip. `translate` (digits)
    shifts by up to h/16, half a native pixel at any upsampling (larger shifts hurt accuracy);
    `crop` and `crop_flip` by h/8 (4 px at 32, the CIFAR standard; 3 px at 28). `crop` is for
    idx datasets of digits or characters, which a mirror would change into other symbols.
    Batched: one gather for the whole batch; randomness only from `generator`."""
    n, _, h, w = x.shape
    pad = max(1, h // 16 if kind == "translate" else h // 8)
    flips = torch.rand(n, generator=generator) < 0.5 if kind == "crop_flip" else None
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flips is not None:
        out = torch.where(flips.to(x.device)[:, None, None, None], out.flip(3), out)
    return out.contiguous()


# --- image files (folder datasets) -----------------------------------------------------------
def read_image(path: Path, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3): short side resized to `size`, then centre-cropped."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.array(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


class _Images(Dataset):
    """Decodes one file; a failure is returned as a flag so the main process can name the file."""

    def __init__(self, files: tuple[Path, ...], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            return torch.from_numpy(read_image(self.files[i], self.size)).permute(2, 0, 1), True
        except Exception:  # unreadable/truncated/not an image: reported with its path below
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False


def decode_batches(split: Split, chunks: list[torch.Tensor], size: int,
                   workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches of the files indexed by each chunk, decoded by `workers` processes."""
    assert split.files is not None
    loader = DataLoader(_Images(split.files, size), batch_sampler=[c.tolist() for c in chunks],
                        num_workers=workers)
    for idx, (x, ok) in zip(chunks, loader, strict=True):
        if not bool(ok.all()):
            bad = split.files[int(idx[~ok][0])]
            raise DataError(f"cannot read image {bad}: not a decodable image file")
        yield x, split.labels[idx]
