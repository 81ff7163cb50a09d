"""Datasets selected by one string (`digits`, `cifar10:PATH`, `cifar100:PATH`, `folder:PATH`).

Every split is held as uint8 NCHW tensors at the training size (or, for large image folders, decoded
by DataLoader workers each epoch); augmentation and normalization run batched on tensors with an
explicit `torch.Generator`, so a run is reproducible and cheap on CPU. The search sees only `train`
and `val`; `test` is loaded for final reporting only. `describe` gives a dataset's shape without
loading it (what the search driver needs).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trials.bundle import (
    DATA_KINDS,
    DEFAULT_IMAGE_SIZE,
    NORMS,
    SPLIT_SEED,
    DataBundle,
    DataError,
    DatasetShape,
    Split,
    augment,
    stratified_split,
)
from trials.folder import class_names, load_folder

_DIGITS_SHAPE = (10, 1)  # (classes, channels) of scikit-learn's 8x8 grey digits


def parse_data_spec(text: str) -> tuple[str, Path | None]:
    """`digits` or `KIND:PATH` -> (kind, path)."""
    kind, sep, path = str(text).partition(":")
    if kind not in DATA_KINDS:
        raise DataError(
            f"unknown data {text!r}; expected one of: digits, cifar10:PATH, cifar100:PATH, "
            "folder:PATH"
        )
    if kind == "digits":
        if sep:
            raise DataError(f"data 'digits' takes no path, got {text!r}")
        return kind, None
    if not path:
        raise DataError(f"data {text!r} needs a path: {kind}:PATH")
    return kind, Path(path).expanduser()


def _checked(spec: str, image_size: int | None) -> tuple[str, Path | None, int]:
    """(kind, path, size) after the checks loading and describing share: the data string, the
    image size and, for datasets on disk, that the path is a directory."""
    kind, path = parse_data_spec(spec)
    size = DEFAULT_IMAGE_SIZE[kind] if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise DataError(f"image size must be an integer >= 2, got {image_size!r}")
    if path is not None and not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path is not None and not path.is_dir():
        raise DataError(f"data path {path} is not a directory")
    return kind, path, size


def describe(spec: str, image_size: int | None = None) -> DatasetShape:
    """The dataset's shape at `image_size` without decoding or reading any image: the checks of
    `load_data` on the string, size and paths, then constants (digits, CIFAR, after checking the
    files exist) or the class directories (folder)."""
    kind, path, size = _checked(spec, image_size)
    if kind == "digits":
        return DatasetShape("digits", size, *_DIGITS_SHAPE)
    assert path is not None
    if kind == "folder":
        return DatasetShape(spec, size, len(class_names(path)), 3)
    _check_cifar_files(kind, path, include_test=False)
    return DatasetShape(spec, size, _CIFAR_FILES[kind][-1], 3)


def load_data(spec: str, image_size: int | None = None, *, include_test: bool = True,
              val_fraction: float = 0.1, in_memory: bool | None = None,
              workers: int = 0) -> DataBundle:
    """Load the dataset named by `spec` at `image_size` (the dataset's default when None)."""
    kind, path, size = _checked(spec, image_size)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val fraction must be in (0, 1), got {val_fraction}")
    if kind == "digits":
        return _load_digits(size, include_test)
    assert path is not None
    if kind == "folder":
        bundle = load_folder(spec, path, size, include_test=include_test,
                             val_fraction=val_fraction, in_memory=in_memory, workers=workers)
    else:
        bundle = _load_cifar(spec, kind, path, size, include_test, val_fraction)
    if len(bundle.train) < 2 or len(bundle.val) < 1:
        raise DataError(f"{path}: need >= 2 training and >= 1 validation images, got "
                        f"{len(bundle.train)} and {len(bundle.val)}")
    return bundle


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
    """scikit-learn's bundled 8x8 digits: 70/15/15 stratified train/val/test, upsampled to
    `size`."""
    # Lazy: importing sklearn.datasets is slow, and only runs on digits need it.
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
        name="digits", kind="digits", num_classes=_DIGITS_SHAPE[0], in_channels=_DIGITS_SHAPE[1],
        image_size=size,
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
        numpy = {"_reconstruct", "ndarray", "dtype", "_frombuffer"}
        if (module.split(".")[0] == "numpy" and name in numpy) or (
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
        raise DataError(f"{path} is not a CIFAR pickle: expected a dict ({what}), got "
                        f"{type(data).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _read_cifar_batch(path: Path, label_key: str,
                      num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    what = f"with 'data' N x 3072 uint8 and '{label_key}'"
    batch = _read_pickle(path, what)
    if "data" not in batch or label_key not in batch:
        lacks = "'data'" if "data" not in batch else repr(label_key)
        raise DataError(f"{path} lacks {lacks}; expected a dict {what}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072
            or len(labels) != len(data)):
        raise DataError(
            f"{path}: expected 'data' N x 3072 uint8 with N labels, got {data.dtype} {data.shape} "
            f"and {len(labels)} labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must be in [0, {num_classes}), got "
                        f"{labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def _check_cifar_files(kind: str, path: Path, include_test: bool) -> None:
    train_files, test_file, meta_file = _CIFAR_FILES[kind][:3]
    needed = [*train_files, meta_file] + ([test_file] if include_test else [])
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise DataError(
            f"{path} is not a {kind} python directory: missing {', '.join(missing)} "
            f"(expected {', '.join([*train_files, test_file, meta_file])})"
        )


def _load_cifar(spec: str, kind: str, path: Path, size: int, include_test: bool,
                val_fraction: float) -> DataBundle:
    train_files, test_file, meta_file, label_key, names_key, num_classes = _CIFAR_FILES[kind]
    _check_cifar_files(kind, path, include_test)
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
    mean, std = NORMS[kind]
    return DataBundle(
        name=spec, kind=kind, num_classes=num_classes, in_channels=3, image_size=size,
        mean=mean, std=std,
        classes=tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names),
        train=_split(images, labels, train), val=_split(images, labels, val), test=test,
        augment="crop_flip",
    )


__all__ = [
    "DATA_KINDS", "DEFAULT_IMAGE_SIZE", "DataBundle", "DataError", "DatasetShape", "Split",
    "augment", "describe", "load_data", "parse_data_spec", "stratified_split",
]
