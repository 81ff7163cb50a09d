"""Datasets selected by one string (`fashion-mnist-subset`, `fashion-mnist[:PATH]`, `digits`,
`cifar10:PATH`, `cifar100:PATH`, `folder:PATH`, `idx:PATH`).

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
    DATA_FORMS,
    DATA_KINDS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_TRAIN_FRACTION,
    NORMS,
    SPLIT_SEED,
    DataBundle,
    DataError,
    DatasetShape,
    Split,
    augment,
    stratified_split,
)
from trials.datasets import FASHION_MNIST_SUBSET, SYSTEM_FASHION_MNIST
from trials.folder import class_names, load_folder
from trials.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    SPLIT_FILES,
    IdxHeader,
    check_labels,
    check_pair,
    find_split,
    has_split,
    read_header,
    read_idx,
    read_split,
)

_DIGITS_SHAPE = (10, 1)  # (classes, channels) of scikit-learn's 8x8 grey digits
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


def parse_data_spec(text: str) -> tuple[str, Path | None]:
    """`digits`, `fashion-mnist-subset`, `fashion-mnist` or `KIND:PATH` -> (kind, path); a path
    of None means the dataset's own location (`fashion_mnist_dir`, the shipped subset)."""
    kind, sep, path = str(text).partition(":")
    if kind not in DATA_KINDS:
        raise DataError(f"unknown data {text!r}; expected one of: {DATA_FORMS}")
    if kind in ("digits", "fashion-mnist-subset"):
        if sep:
            raise DataError(f"data {kind!r} takes no path, got {text!r}")
        return kind, None
    if kind == "fashion-mnist" and not sep:
        return kind, None
    if not path:
        raise DataError(f"data {text!r} needs a path: {kind}:PATH")
    return kind, Path(path).expanduser()


def _checked(spec: str, image_size: int | None) -> tuple[str, Path | None, int]:
    """(kind, path, size) after the checks loading and describing share: the data string, the
    image size and, for datasets on disk, that the path is a directory."""
    kind, path = parse_data_spec(spec)
    if kind == "fashion-mnist" and path is None:
        path = fashion_mnist_dir()
    elif kind == "fashion-mnist-subset":
        path = FASHION_MNIST_SUBSET
    size = DEFAULT_IMAGE_SIZE[kind] if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise DataError(f"image size must be an integer >= 2, got {image_size!r}")
    if path is not None and not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path is not None and not path.is_dir():
        raise DataError(f"data path {path} is not a directory")
    return kind, path, size


def default_train_fraction(spec: str) -> float:
    """The share of the train split trials use on `spec` when none is given."""
    return DEFAULT_TRAIN_FRACTION.get(parse_data_spec(spec)[0], 1.0)


def fashion_mnist_dir() -> Path:
    """Where `fashion-mnist` without a path reads: Debian's package `dataset-fashion-mnist` when
    it holds the train and test files, else the stratified subset shipped in the package."""
    if all(has_split(SYSTEM_FASHION_MNIST, split) for split in SPLIT_FILES):
        return SYSTEM_FASHION_MNIST
    return FASHION_MNIST_SUBSET


def describe(spec: str, image_size: int | None = None) -> DatasetShape:
    """The dataset's shape at `image_size` without decoding or reading any image: the checks of
    `load_data` on the string, size and paths, then constants (digits, CIFAR, after checking the
    files exist), the class directories (folder) or the idx headers and labels (fashion-mnist,
    idx)."""
    kind, path, size = _checked(spec, image_size)
    if kind == "digits":
        return DatasetShape("digits", size, *_DIGITS_SHAPE)
    assert path is not None
    if kind == "folder":
        return DatasetShape(spec, size, len(class_names(path)), 3)
    if kind in _IDX_KINDS:
        return DatasetShape(spec, size, _idx_classes(kind, path), 1)
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
    elif kind in _IDX_KINDS:
        bundle = _load_idx(spec, kind, path, size, include_test, val_fraction)
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


# --- idx files (Fashion-MNIST, and MNIST-like datasets with `idx:PATH`) ----------------------
_IDX_KINDS = ("fashion-mnist", "fashion-mnist-subset", "idx")
_FASHION = ("fashion-mnist", "fashion-mnist-subset")


def _labels_of(path: Path, split: str) -> tuple[Path, np.ndarray]:
    """(labels file, labels) of `split`, after checking that its image header has as many."""
    image_path, label_path = find_split(path, split)
    labels = read_idx(label_path, LABELS_MAGIC)
    check_pair(read_header(image_path, IMAGES_MAGIC), IdxHeader(label_path, labels.shape))
    return label_path, labels


def _idx_classes(kind: str, path: Path) -> int:
    """The class count of an idx directory from its labels alone (no image is decoded):
    Fashion-MNIST's 10, or for `idx` the largest train label + 1, each class present in train;
    every test label must be one of them."""
    label_path, labels = _labels_of(path, "train")
    if kind in _FASHION:
        num_classes = len(FASHION_MNIST_CLASSES)
        check_labels(label_path, labels, num_classes)
    else:
        num_classes = int(labels.max()) + 1
        missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
        if num_classes < 2:
            raise DataError(f"{label_path}: every label is 0; expected labels 0..K-1, K >= 2")
        if missing:
            raise DataError(
                f"{label_path}: labels 0..{num_classes - 1} leave classes "
                f"{', '.join(map(str, missing))} without images; expected every class of "
                "0..K-1 in train"
            )
    test_path, test_labels = _labels_of(path, "test")
    check_labels(test_path, test_labels, num_classes)
    return num_classes


def _pixel_norm(images: torch.Tensor) -> tuple[tuple[float], tuple[float]]:
    """(mean,), (std,) of uint8 grey images in [0, 1], exact from the value histogram."""
    counts = np.bincount(images.numpy().ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = float(counts @ values / counts.sum())
    std = float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
    return (round(mean, 4),), (round(std, 4),)


def _load_idx(spec: str, kind: str, path: Path, size: int, include_test: bool,
              val_fraction: float) -> DataBundle:
    num_classes = _idx_classes(kind, path)  # every file's header and every label checked
    raw, labels = read_split(path, "train")
    images = _resize(torch.from_numpy(raw).unsqueeze(1), size)
    labels = labels.astype(np.int64)
    train, val = stratified_split(labels, val_fraction, SPLIT_SEED)
    test = None
    if include_test:
        test_images, test_labels = read_split(path, "test")
        test = Split(labels=torch.from_numpy(test_labels.astype(np.int64)),
                     images=_resize(torch.from_numpy(test_images).unsqueeze(1), size))
    if kind in _FASHION:
        (mean, std), classes = NORMS[kind], FASHION_MNIST_CLASSES
    else:
        mean, std = _pixel_norm(images[torch.as_tensor(train)])
        classes = tuple(str(i) for i in range(num_classes))
    return DataBundle(
        name=spec, kind=kind, num_classes=num_classes, in_channels=1, image_size=size,
        mean=mean, std=std, classes=classes,
        train=_split(images, labels, train), val=_split(images, labels, val), test=test,
        augment="crop_flip" if kind in _FASHION else "crop",
    )


__all__ = [
    "DATA_FORMS", "DATA_KINDS", "DEFAULT_IMAGE_SIZE", "FASHION_MNIST_CLASSES", "DataBundle",
    "DataError", "DatasetShape", "Split", "augment", "default_train_fraction", "describe",
    "fashion_mnist_dir", "load_data", "parse_data_spec", "stratified_split",
]
