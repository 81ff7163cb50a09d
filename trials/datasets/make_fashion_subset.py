"""Regenerate the shipped Fashion-MNIST subset byte for byte from the official files:

    python -m trials.datasets.make_fashion_subset --source /usr/share/datasets/fashion-mnist \
        --out DIR

The subset holds the first `PER_CLASS[split]` images of each class of the official split, in
the files' own order (the official files are shuffled already, so no random generator, whose
streams may change between numpy versions, is involved). Each file is written as idx gzip at
level 9 with mtime 0 and no file name, so its bytes depend only on the data and zlib. The
inputs' idx content (plain or `.gz`: Debian's and upstream's archives differ only in their
compression) and the outputs are checked against the SHA-256 sums below before anything is
written.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from search_spaces.cli import OneLineParser, run_cli
from search_spaces.files import atomic_write_bytes
from trials.bundle import DataError
from trials.datasets import FASHION_MNIST_SUBSET, SYSTEM_FASHION_MNIST
from trials.idx import SPLIT_FILES, encode_idx, read_split

PER_CLASS = {"train": 1000, "test": 200}
NUM_CLASSES = 10
# SHA-256 of the official files' idx content (after decompression).
SOURCE_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# SHA-256 of the shipped files: (the .gz bytes, their idx content).
SUBSET_SHA256 = {
    "train-images-idx3-ubyte.gz": (
        "fb5d76be9a26fa809a3b13c18f7191e33c2115c6e377baf29656711358a51b1d",
        "d33512cfdc636a0d8972818e6659995be209a88891df7fa2109d7895922c8985",
    ),
    "train-labels-idx1-ubyte.gz": (
        "4cc57b2814542612de157ac954fec39e17b40ac7cc646602198dc0f4c7c97fc9",
        "620cb8e3b9348037c5ff9a07b02d773ab165330e072dfd19e0d21c59f8042dcf",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "f63b5f3a005caedab708d16a900babd905c8331b1cd2188b91245c032cfe6acd",
        "15a92dd1e9b16ea361928086e77df4dfa890c255c00b5a8c8162c1040ce8eef1",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "09f5dc909c8586184bae0fbde44202a1b007bf6f2bd2bc952652fa22dc323f95",
        "234596aeb6eb48133ec99a62541f90bc0728c9559a681f1e0638037462458f2c",
    ),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _select(labels: np.ndarray, per_class: int, num_classes: int, where: str) -> np.ndarray:
    """Indices of the first `per_class` items of every class, in file order."""
    picked = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise DataError(f"{where} holds {len(idx)} items of class {c}; the subset needs "
                            f"{per_class} of each of {num_classes} classes")
        picked.append(idx[:per_class])
    return np.sort(np.concatenate(picked))


def make_subset(source: Path, *, per_class: Mapping[str, int] = PER_CLASS,
                num_classes: int = NUM_CLASSES,
                expected: Mapping[str, str] | None = SOURCE_SHA256) -> dict[str, bytes]:
    """{file name: gz bytes} of the subset of the idx dataset in `source`; the inputs' content
    is checked against `expected` (None: not checked, for other idx datasets)."""
    out: dict[str, bytes] = {}
    for split, (image_stem, label_stem) in SPLIT_FILES.items():
        images, labels = read_split(source, split)
        for stem, values in ((image_stem, images), (label_stem, labels)):
            got = sha256(encode_idx(values))
            if expected is not None and got != expected[stem]:
                raise DataError(f"{source / stem}(.gz) has idx content sha256 {got}; expected "
                                f"{expected[stem]} (the official Fashion-MNIST file)")
        take = _select(labels, per_class[split], num_classes, f"{source / label_stem}(.gz)")
        for stem, values in ((image_stem, images[take]), (label_stem, labels[take])):
            out[f"{stem}.gz"] = gzip.compress(encode_idx(values), compresslevel=9, mtime=0)
    return out


def check_subset(files: Mapping[str, bytes],
                 expected: Mapping[str, tuple[str, str]] = SUBSET_SHA256) -> list[str]:
    """Compare with the recorded sums: raise when an idx content differs; return a note per
    file whose content matches but whose gzip bytes differ (another zlib build)."""
    notes = []
    for name, data in files.items():
        gz_sum, content_sum = expected[name]
        content = sha256(gzip.decompress(data))
        if content != content_sum:
            raise DataError(f"{name}: idx content sha256 {content}, expected {content_sum}")
        if sha256(data) != gz_sum:
            notes.append(f"{name}: same idx content, but this zlib compresses it to other bytes "
                         f"(sha256 {sha256(data)}, shipped {gz_sum})")
    return notes


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m trials.datasets.make_fashion_subset",
                      description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", type=Path, default=SYSTEM_FASHION_MNIST,
                   help="directory of the four official idx files (plain or .gz)")
    p.add_argument("--out", type=Path, default=FASHION_MNIST_SUBSET,
                   help="directory to write the subset's four .gz files to")
    return p


def _run(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    if not args.source.is_dir():
        raise DataError(f"--source {args.source} is not a directory; expected the official "
                        "Fashion-MNIST idx files (Debian: apt install dataset-fashion-mnist)")
    files = make_subset(args.source)
    notes = check_subset(files)  # raises before anything is written
    for name, data in files.items():
        atomic_write_bytes(args.out / name, data)
        print(f"{args.out / name}  sha256 {sha256(data)}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
