"""Writers of tiny datasets in the real on-disk formats (CIFAR python pickles, ImageFolder PNGs),
shared by the data, training and CLI tests, plus the small spec they train."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from search_spaces.spec import ArchSpec, uniform_stages


def tiny_spec(num_classes: int = 10, in_channels: int = 1) -> ArchSpec:
    """1-1-1-1 radix-2 blocks at width 16, deep stem of width 8, small-image regime (>= 8 px)."""
    return ArchSpec(stages=uniform_stages((1, 1, 1, 1), 2, 1, 16), stem="deep", stem_width=8,
                    base_planes=16, attn_min_width=8, input_regime="small",
                    num_classes=num_classes, in_channels=in_channels)


def cifar_rows(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """N x 3072 uint8 rows (1024 R, 1024 G, 1024 B, each row-major) whose mean encodes the label,
    so a model can learn it."""
    base = (labels[:, None] * 20 + 30).astype(np.int64)
    noise = rng.integers(-20, 21, size=(len(labels), 3072))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _dump(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are protocol-2 pickles


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> Path:
    """data_batch_1..5, test_batch, batches.meta with bytes keys, as the official archive."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    batches = [(f"data_batch_{b}", per_batch) for b in range(1, 6)] + [("test_batch", test)]
    for i, (name, n) in enumerate(batches):
        labels = np.arange(n) % 10
        _dump(root / name, {b"batch_label": f"batch {i}".encode(), b"labels": labels.tolist(),
                            b"data": cifar_rows(rng, labels),
                            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    _dump(root / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch,
                                  b"num_vis": 3072})
    return root


def write_cifar100(root: Path, train: int = 200, test: int = 100, seed: int = 0) -> Path:
    """train, test, meta with fine and coarse labels, as the official archive."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", test)):
        labels = np.arange(n) % 100
        _dump(root / name, {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                            b"fine_labels": labels.tolist(),
                            b"coarse_labels": (labels // 5).tolist(),
                            b"data": cifar_rows(rng, labels % 10)})
    _dump(root / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                          b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    return root


def write_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "owl"),
                 per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    """train/, val/, test/ with PNG/JPEG images of mixed sizes and modes; class colour differs."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {"train": 6, "val": 2, "test": 2}
    for split, n in per_class.items():
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                h, w = [(20, 30), (37, 25), (16, 16)][j % 3]
                pixels = np.clip(rng.normal(60 + 60 * c, 25, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if j % 3 == 1:
                    image.convert("L").save(d / f"{j}.jpg", quality=95)
                else:
                    image.save(d / f"{j}.png")
    return root
