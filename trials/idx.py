"""IDX files, the format of the MNIST family (Fashion-MNIST, MNIST, KMNIST): a big-endian
header (magic 0x0000TTNN: type byte TT, NN dimensions, then NN uint32 sizes) and the raw
values. Read gzip-compressed or plain (told apart by the gzip magic bytes, not the name).

Every malformed file raises one `DataError` line naming the file and what was expected; the
values are numpy arrays (no torch). `read_header` reads only the first bytes, so a dataset's
shape is known without decoding its images.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trials.bundle import DataError

UBYTE = 0x08  # the only value type these datasets use (unsigned bytes)
IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions: N x rows x cols
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension: N
_WHAT = {IMAGES_MAGIC: "uint8 images, N x rows x cols", LABELS_MAGIC: "uint8 labels, N"}
# The standard file names of a split (images, labels), each optionally ending in `.gz`.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxHeader:
    """A checked header: the file, its dimensions, and where the values start."""

    path: Path
    dims: tuple[int, ...]

    @property
    def offset(self) -> int:
        return 4 + 4 * len(self.dims)

    @property
    def count(self) -> int:
        return self.dims[0]


def find_split(root: Path, split: str) -> tuple[Path, Path]:
    """(images, labels) of `split` in `root`, plain or `.gz`; a missing one is one error listing
    every file such a directory holds."""
    found = []
    for stem in SPLIT_FILES[split]:
        path = next((p for p in (root / stem, root / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            expected = ", ".join(n for pair in SPLIT_FILES.values() for n in pair)
            raise DataError(f"{root} is not an idx dataset directory: missing {stem}(.gz) "
                            f"(expected {expected}, each optionally .gz)")
        found.append(path)
    return found[0], found[1]


def has_split(root: Path, split: str) -> bool:
    """Whether `root` holds both files of `split` (plain or `.gz`)."""
    return all((root / s).is_file() or (root / f"{s}.gz").is_file() for s in SPLIT_FILES[split])


def _read(path: Path, limit: int | None = None) -> bytes:
    """The file's bytes, decompressed when it is gzip; `limit` reads only a prefix."""
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not compressed:
                return raw.read(-1 if limit is None else limit)
            with gzip.GzipFile(fileobj=raw) as f:
                return f.read(-1 if limit is None else limit)
    except OSError as err:
        if isinstance(err, gzip.BadGzipFile) or not err.strerror:
            raise DataError(f"{path} is not a readable gzip file: {err}") from None
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    except (EOFError, zlib.error) as err:
        raise DataError(f"{path} is a truncated or corrupt gzip file: {err}") from None


def _parse_header(path: Path, data: bytes, magic: int) -> IdxHeader:
    expected = f"expected an idx file, magic 0x{magic:08x} ({_WHAT[magic]})"
    if len(data) < 4:
        raise DataError(f"{path} holds {len(data)} bytes, too short for a header; {expected}")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DataError(f"{path} has magic number 0x{got:08x}; {expected}")
    ndim = magic & 0xFF
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} ends inside its header ({len(data)} bytes, need {4 + 4 * ndim})"
                        f"; {expected}")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if min(dims) == 0:
        raise DataError(f"{path} header gives dimensions {' x '.join(map(str, dims))}; "
                        "expected at least one non-empty item")
    return IdxHeader(path, dims)


def read_header(path: Path, magic: int) -> IdxHeader:
    """The checked header of the idx file `path` (`IMAGES_MAGIC` or `LABELS_MAGIC`), reading
    only its first bytes."""
    return _parse_header(path, _read(path, 4 + 4 * (magic & 0xFF)), magic)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The values of the idx file `path` as a uint8 array of the header's dimensions; the byte
    size must match the header exactly."""
    data = _read(path)
    header = _parse_header(path, data, magic)
    size = int(np.prod(header.dims))
    if len(data) - header.offset != size:
        shape = " x ".join(map(str, header.dims))
        raise DataError(f"{path}: header says {shape} ({size} bytes of values), the file holds "
                        f"{len(data) - header.offset}; expected exactly the header's size "
                        "(truncated or corrupt file?)")
    values = np.frombuffer(data, dtype=np.uint8, offset=header.offset)
    return values.reshape(header.dims).copy()  # writable, independent of `data`


def check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    """Every label in [0, num_classes), or one error naming the file."""
    if int(labels.max()) >= num_classes:
        raise DataError(f"{path}: labels must be in [0, {num_classes}), got "
                        f"{int(labels.min())}..{int(labels.max())}")


def check_pair(images: IdxHeader, labels: IdxHeader) -> None:
    """As many labels as images."""
    if images.count != labels.count:
        raise DataError(f"{images.path} holds {images.count} images but {labels.path} holds "
                        f"{labels.count} labels; expected one label per image")


def read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x rows x cols, labels N) of `split` in `root`, fully checked."""
    image_path, label_path = find_split(root, split)
    labels = read_idx(label_path, LABELS_MAGIC)
    check_pair(read_header(image_path, IMAGES_MAGIC), IdxHeader(label_path, labels.shape))
    return read_idx(image_path, IMAGES_MAGIC), labels


def encode_idx(values: np.ndarray) -> bytes:
    """The idx bytes of a uint8 array (1 or 3 dimensions): the inverse of `read_idx`."""
    values = np.ascontiguousarray(values, dtype=np.uint8)
    magic = (UBYTE << 8) | values.ndim
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in values.shape)
    return head + values.tobytes()
