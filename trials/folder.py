"""`folder:PATH` datasets: ImageFolder layout (`train/<class>/*`, `val/<class>/*`, optional `test/`).

Images of any size are resized (short side) and centre-cropped to the training size with PIL.
Folders that fit in `IN_MEMORY_LIMIT_BYTES` are decoded once (DataLoader workers) and then behave
like CIFAR; larger ones are decoded per batch by workers, with augmentation still batched in the
main process so results do not depend on the worker count.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from trials import data as D


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in D.IMAGE_EXTENSIONS)


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(root: Path, split: str, classes: list[str] | None) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, files and labels of `root/split`; labels follow the train split's classes."""
    split_dir = root / split
    dirs = _class_dirs(split_dir)
    if not dirs:
        raise D.DataError(
            f"{split_dir} has no class directories; expected {split}/<class>/<image> (ImageFolder layout)"
        )
    names = [d.name for d in dirs]
    if classes is None:
        if len(names) < 2:
            raise D.DataError(f"{split_dir} has {len(names)} class directory; need at least 2 classes")
        classes = names
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise D.DataError(
            f"{split_dir / unknown[0]} is not a class of {root / 'train'} (classes: {', '.join(classes)})"
        )
    files: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        images = _images_in(d)
        if not images:
            raise D.DataError(f"{d} holds no images (expected files ending {', '.join(D.IMAGE_EXTENSIONS)})")
        files += images
        labels += [classes.index(d.name)] * len(images)
    return classes, files, np.asarray(labels, dtype=np.int64)


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


def decode_batches(split: D.Split, chunks: list[torch.Tensor], size: int,
                   workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches of the files indexed by each chunk, decoded by `workers` processes."""
    assert split.files is not None
    loader = DataLoader(_Images(split.files, size), batch_sampler=[c.tolist() for c in chunks],
                        num_workers=workers)
    for idx, (x, ok) in zip(chunks, loader, strict=True):
        if not bool(ok.all()):
            bad = split.files[int(idx[~ok][0])]
            raise D.DataError(f"cannot read image {bad}: not a decodable image file")
        yield x, split.labels[idx]


def load_folder(spec: str, root: Path, size: int, *, include_test: bool, val_fraction: float,
                in_memory: bool | None, workers: int) -> D.DataBundle:
    """Scan and (when small enough or asked) decode an ImageFolder tree."""
    if not (root / "train").is_dir():
        raise D.DataError(
            f"{root} has no train/ directory; expected train/<class>/<image>, val/<class>/<image> "
            "and optionally test/<class>/<image>"
        )
    classes, files, labels = _scan(root, "train", None)
    if (root / "val").is_dir():
        _, val_files, val_labels = _scan(root, "val", classes)
        train_split = D.Split(torch.from_numpy(labels), files=tuple(files))
        val_split = D.Split(torch.from_numpy(val_labels), files=tuple(val_files))
    else:
        keep, take = D.stratified_split(labels, val_fraction, D.SPLIT_SEED)
        train_split = D.Split(torch.from_numpy(labels[keep]), files=tuple(files[i] for i in keep))
        val_split = D.Split(torch.from_numpy(labels[take]), files=tuple(files[i] for i in take))
    test_split = None
    if include_test and (root / "test").is_dir():
        _, test_files, test_labels = _scan(root, "test", classes)
        test_split = D.Split(torch.from_numpy(test_labels), files=tuple(test_files))
    splits = [s for s in (train_split, val_split, test_split) if s is not None]
    if in_memory is None:
        in_memory = sum(map(len, splits)) * 3 * size * size <= D.IN_MEMORY_LIMIT_BYTES
    if in_memory:
        train_split, val_split = _decode_all(train_split, size, workers), _decode_all(val_split, size, workers)
        test_split = _decode_all(test_split, size, workers) if test_split is not None else None
    mean, std = D._NORMS["folder"]
    return D.DataBundle(
        name=spec, kind="folder", num_classes=len(classes), in_channels=3, image_size=size,
        mean=mean, std=std, classes=tuple(classes), train=train_split, val=val_split,
        test=test_split, augment="crop_flip",
    )


def _decode_all(split: D.Split, size: int, workers: int) -> D.Split:
    order = torch.arange(len(split))
    chunks = [order[i:i + 256] for i in range(0, len(split), 256)]
    images = torch.cat([x for x, _ in decode_batches(split, chunks, size, workers)])
    return D.Split(split.labels, images=images)
