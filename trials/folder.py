"""`folder:PATH` datasets: ImageFolder layout (`train/<class>/*`, `val/<class>/*`, optional
`test/`).

Images of any size are resized (short side) and centre-cropped to the training size with PIL.
Folders that fit in `IN_MEMORY_LIMIT_BYTES` are decoded once (DataLoader workers) and then behave
like CIFAR; larger ones are decoded per batch by workers, with augmentation still batched in the
main process so results do not depend on the worker count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trials.bundle import (
    IMAGE_EXTENSIONS,
    IN_MEMORY_LIMIT_BYTES,
    NORMS,
    SPLIT_SEED,
    DataBundle,
    DataError,
    Split,
    decode_batches,
    stratified_split,
)


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def class_names(root: Path, split: str = "train", known: list[str] | None = None) -> list[str]:
    """The class directories of `root/split` (no file is opened); the train split needs >= 2,
    other splits may hold only classes of `known`."""
    if split == "train" and not (root / "train").is_dir():
        raise DataError(
            f"{root} has no train/ directory; expected train/<class>/<image>, val/<class>/<image> "
            "and optionally test/<class>/<image>"
        )
    split_dir = root / split
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{split_dir} has no class directories; expected {split}/<class>/<image> "
                        "(ImageFolder layout)")
    if known is None:
        if len(names) < 2:
            raise DataError(f"{split_dir} has {len(names)} class directory; "
                            "need at least 2 classes")
        return names
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DataError(f"{split_dir / unknown[0]} is not a class of {root / 'train'} "
                        f"(classes: {', '.join(known)})")
    return names


def _scan(root: Path, split: str, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Files and labels of `root/split`; labels follow the train split's `classes`."""
    files: list[Path] = []
    labels: list[int] = []
    for name in classes if split == "train" else class_names(root, split, classes):
        images = _images_in(root / split / name)
        if not images:
            raise DataError(f"{root / split / name} holds no images (expected files ending "
                            f"{', '.join(IMAGE_EXTENSIONS)})")
        files += images
        labels += [classes.index(name)] * len(images)
    return files, np.asarray(labels, dtype=np.int64)


def load_folder(spec: str, root: Path, size: int, *, include_test: bool, val_fraction: float,
                in_memory: bool | None, workers: int) -> DataBundle:
    """Scan and (when small enough or asked) decode an ImageFolder tree."""
    classes = class_names(root)
    files, labels = _scan(root, "train", classes)
    if (root / "val").is_dir():
        val_files, val_labels = _scan(root, "val", classes)
        train_split = Split(torch.from_numpy(labels), files=tuple(files))
        val_split = Split(torch.from_numpy(val_labels), files=tuple(val_files))
    else:
        keep, take = stratified_split(labels, val_fraction, SPLIT_SEED)
        train_split = Split(torch.from_numpy(labels[keep]), files=tuple(files[i] for i in keep))
        val_split = Split(torch.from_numpy(labels[take]), files=tuple(files[i] for i in take))
    test_split = None
    if include_test and (root / "test").is_dir():
        test_files, test_labels = _scan(root, "test", classes)
        test_split = Split(torch.from_numpy(test_labels), files=tuple(test_files))
    splits = [s for s in (train_split, val_split, test_split) if s is not None]
    if in_memory is None:
        in_memory = sum(map(len, splits)) * 3 * size * size <= IN_MEMORY_LIMIT_BYTES
    if in_memory:
        train_split = _decode_all(train_split, size, workers)
        val_split = _decode_all(val_split, size, workers)
        test_split = _decode_all(test_split, size, workers) if test_split is not None else None
    mean, std = NORMS["folder"]
    return DataBundle(
        name=spec, kind="folder", num_classes=len(classes), in_channels=3, image_size=size,
        mean=mean, std=std, classes=tuple(classes), train=train_split, val=val_split,
        test=test_split, augment="crop_flip",
    )


def _decode_all(split: Split, size: int, workers: int) -> Split:
    order = torch.arange(len(split))
    chunks = [order[i:i + 256] for i in range(0, len(split), 256)]
    images = torch.cat([x for x, _ in decode_batches(split, chunks, size, workers)])
    return Split(split.labels, images=images)
