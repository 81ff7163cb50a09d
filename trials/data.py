"""Datasets selected by one string (`digits`, `cifar10:PATH`, `cifar100:PATH`, `folder:PATH`).

Every split is held as uint8 NCHW tensors at the training size (or, for large image folders, decoded
by DataLoader workers each epoch); augmentation and normalization run batched on tensors with an
explicit `torch.Generator`, so a run is reproducible and cheap on CPU. The search sees only `train`
and `val`; `test` is loaded for final reporting only.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from search_spaces.errors import UserError

DATA_KINDS = ("digits", "cifar10", "cifar100", "folder")
DEFAULT_IMAGE_SIZE = {"digits": 16, "cifar10": 32, "cifar100": 32, "folder": 64}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Folders up to this many bytes (uint8 at the training size) are decoded once and kept in memory.
IN_MEMORY_LIMIT_BYTES = 1 << 30
SPLIT_SEED = 0  # the train/val/test split never depends on a trial's seed: all trials share it
_NORMS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class DataError(UserError):
    """A dataset string, path or file is not what the loader expects."""


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
    augment: str  # "translate" (digits: shifts only, no flips) or "crop_flip"

    @property
    def in_memory(self) -> bool:
        return self.train.images is not None

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
        train = Split(
            labels=self.train.labels[idx.to(self.train.labels.device)],
            images=None if self.train.images is None else self.train.images[idx.to(self.train.images.device)],
            files=None if self.train.files is None else tuple(self.train.files[i] for i in take),
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
        yield from (
            (x.to(device), y.to(device))
            for x, y in _decode_batches(data, chunks, self.image_size, workers)
        )


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random shift (zero fill) and, for `crop_flip`, a horizontal flip. `translate` (digits)
    shifts by up to h/16 (half a native pixel at any upsampling: more hurt in our runs),
    `crop_flip` by h/8 (4 px at 32, the CIFAR standard). Batched: one gather for the whole
    batch; randomness only from `generator`."""
    n, _, h, w = x.shape
    pad = max(1, h // 16 if kind == "translate" else h // 8)
    flips = torch.rand(n, generator=generator) < 0.5 if kind == "crop_flip" else None
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = ox[:, None] + torch.arange(w, device=x.device)
    out = padded[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    out = out.permute(0, 3, 1, 2)
    if flips is not None:
        out = torch.where(flips.to(x.device)[:, None, None, None], out.flip(3), out)
    return out.contiguous()


def parse_data_spec(text: str) -> tuple[str, Path | None]:
    """`digits` or `KIND:PATH` -> (kind, path)."""
    kind, sep, path = str(text).partition(":")
    if kind not in DATA_KINDS:
        raise DataError(
            f"unknown data {text!r}; expected one of: digits, cifar10:PATH, cifar100:PATH, folder:PATH"
        )
    if kind == "digits":
        if sep:
            raise DataError(f"data 'digits' takes no path, got {text!r}")
        return kind, None
    if not path:
        raise DataError(f"data {text!r} needs a path: {kind}:PATH")
    return kind, Path(path).expanduser()


def load_data(spec: str, image_size: int | None = None, *, include_test: bool = True,
              val_fraction: float = 0.1, in_memory: bool | None = None,
              workers: int = 0) -> DataBundle:
    """Load the dataset named by `spec` at `image_size` (the dataset's default when None)."""
    kind, path = parse_data_spec(spec)
    size = DEFAULT_IMAGE_SIZE[kind] if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise DataError(f"image size must be an integer >= 2, got {image_size!r}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val fraction must be in (0, 1), got {val_fraction}")
    if kind == "digits":
        return _load_digits(size, include_test)
    assert path is not None
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if not path.is_dir():
        raise DataError(f"data path {path} is not a directory")
    if kind == "folder":
        from trials.folder import load_folder

        bundle = load_folder(spec, path, size, include_test=include_test, val_fraction=val_fraction,
                             in_memory=in_memory, workers=workers)
    else:
        bundle = _load_cifar(spec, kind, path, size, include_test, val_fraction)
    if len(bundle.train) < 2 or len(bundle.val) < 1:
        raise DataError(f"{path}: need >= 2 training and >= 1 validation images, got "
                        f"{len(bundle.train)} and {len(bundle.val)}")
    return bundle


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NCHW -> uint8 NCHW at size x size (antialiased bilinear); a no-op at the same size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    chunks = []
    for part in images.split(4096):  # bounded float temporaries for 50k-image datasets
        out = F.interpolate(part.float(), size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True)
        chunks.append(out.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def _split(images: torch.Tensor, labels: np.ndarray, idx: np.ndarray) -> Split:
    return Split(labels=torch.as_tensor(labels[idx], dtype=torch.int64),
                 images=images[torch.as_tensor(idx)].contiguous())


def _load_digits(size: int, include_test: bool) -> DataBundle:
    """scikit-learn's bundled 8x8 digits: 70/15/15 stratified train/val/test, upsampled to `size`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    images = _resize(raw.round().to(torch.uint8), size)
    labels = np.asarray(digits.target, dtype=np.int64)
    rest, test = stratified_split(labels, 0.15, SPLIT_SEED)
    train_in_rest, val_in_rest = stratified_split(labels[rest], 0.15 / 0.85, SPLIT_SEED + 1)
    train, val = rest[train_in_rest], rest[val_in_rest]
    pixels = images[torch.as_tensor(train)].float() / 255.0
    return DataBundle(
        name="digits", kind="digits", num_classes=10, in_channels=1, image_size=size,
        mean=(round(pixels.mean().item(), 4),), std=(round(pixels.std().item(), 4),),
        classes=tuple(str(i) for i in range(10)),
        train=_split(images, labels, train), val=_split(images, labels, val),
        test=_split(images, labels, test) if include_test else None, augment="translate",
    )


# --- CIFAR (official python pickles) ---------------------------------------------------------
_CIFAR_FILES = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", "label_names", 10),
    "cifar100": (["train"], "test", "meta", "fine_labels", "fine_label_names", 100),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR files hold (dicts, lists, bytes, numpy arrays): a downloaded
    pickle cannot run arbitrary code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module.split(".")[0] == "numpy" and name in {"_reconstruct", "ndarray", "dtype", "_frombuffer"}) or (
            module == "_codecs" and name == "encode"
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_pickle(path: Path, what: str) -> dict:
    try:
        with path.open("rb") as f:
            data = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    except Exception as err:  # any unpickling failure means a corrupt or foreign file
        raise DataError(f"{path} is not a readable CIFAR pickle ({what}): {err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a CIFAR pickle: expected a dict ({what}), got {type(data).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    what = f"with 'data' N x 3072 uint8 and '{label_key}'"
    batch = _read_pickle(path, what)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path} lacks {'data' if 'data' not in batch else label_key!r}; expected a dict {what}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(
            f"{path}: expected 'data' N x 3072 uint8 with N labels, got {data.dtype} {data.shape} "
            f"and {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(spec: str, kind: str, path: Path, size: int, include_test: bool,
                val_fraction: float) -> DataBundle:
    train_files, test_file, meta_file, label_key, names_key, num_classes = _CIFAR_FILES[kind]
    needed = [*train_files, meta_file] + ([test_file] if include_test else [])
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise DataError(
            f"{path} is not a {kind} python directory: missing {', '.join(missing)} "
            f"(expected {', '.join([*train_files, test_file, meta_file])})"
        )
    meta = _read_pickle(path / meta_file, f"with '{names_key}'")
    names = meta.get(names_key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise DataError(f"{path / meta_file}: expected '{names_key}' with {num_classes} names")
    parts = [_read_cifar_batch(path / f, label_key, num_classes) for f in train_files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    train, val = stratified_split(labels, val_fraction, SPLIT_SEED)
    images = _resize(images, size)
    test = None
    if include_test:
        test_images, test_labels = _read_cifar_batch(path / test_file, label_key, num_classes)
        test = Split(labels=torch.from_numpy(test_labels),
                     images=_resize(torch.from_numpy(test_images), size).contiguous())
    mean, std = _NORMS[kind]
    return DataBundle(
        name=spec, kind=kind, num_classes=num_classes, in_channels=3, image_size=size,
        mean=mean, std=std, classes=tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names),
        train=_split(images, labels, train), val=_split(images, labels, val), test=test,
        augment="crop_flip",
    )


def _decode_batches(data: Split, chunks: list[torch.Tensor], size: int,
                    workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from trials.folder import decode_batches

    return decode_batches(data, chunks, size, workers)


__all__ = [
    "DATA_KINDS", "DEFAULT_IMAGE_SIZE", "DataBundle", "DataError", "Split", "augment",
    "load_data", "parse_data_spec", "stratified_split",
]
