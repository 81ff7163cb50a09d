"""Fashion-MNIST and `idx:PATH`: the idx reader (plain and gzip), every malformed file as one
DataError line naming it, `describe` agreeing with loading, the shipped stratified subset and its
checksums, the script that regenerates it byte for byte, and a `trials.train` run on it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import tiny_spec

import nas.search.cli as search_cli
import trials.data as data_module
from search_spaces.errors import UserError
from trials import train as train_cli
from trials.data import (
    DataError,
    DatasetShape,
    augment,
    describe,
    fashion_mnist_dir,
    load_data,
    parse_data_spec,
)
from trials.datasets import FASHION_MNIST_SUBSET, SYSTEM_FASHION_MNIST
from trials.datasets import make_fashion_subset as script
from trials.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    SPLIT_FILES,
    encode_idx,
    has_split,
    read_header,
    read_idx,
)

NAMES = [name for pair in SPLIT_FILES.values() for name in pair]


def _write(path: Path, values: np.ndarray, gz: bool) -> Path:
    raw = encode_idx(values)
    target = path.with_name(path.name + ".gz") if gz else path
    target.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return target


def write_idx_dir(root: Path, per_class: tuple[int, int] = (6, 2), classes: int = 10,
                  gz: bool = True, side: int = 12, seed: int = 0) -> Path:
    """A tiny idx dataset in the standard layout: per-class counts for train and test, shuffled,
    images whose brightness encodes the label."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for (image_name, label_name), n in zip(SPLIT_FILES.values(), per_class, strict=True):
        labels = rng.permutation(np.repeat(np.arange(classes), n)).astype(np.uint8)
        noise = rng.integers(0, 40, size=(len(labels), side, side))
        images = np.clip(labels[:, None, None].astype(np.int64) * 20 + noise, 0, 255)
        _write(root / image_name, images.astype(np.uint8), gz)
        _write(root / label_name, labels, gz)
    return root


@pytest.fixture
def no_system_copy(monkeypatch, tmp_path: Path) -> None:
    """`fashion-mnist` without a path falls back to the shipped subset."""
    monkeypatch.setattr(data_module, "SYSTEM_FASHION_MNIST", tmp_path / "no-such-dir")


# --- the reader ------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("shape", [(7,), (5, 4, 3)])
def test_idx_round_trip(tmp_path: Path, gz: bool, shape: tuple[int, ...]) -> None:
    values = np.random.default_rng(1).integers(0, 256, size=shape).astype(np.uint8)
    path = _write(tmp_path / "x-idx", values, gz)
    magic = LABELS_MAGIC if len(shape) == 1 else IMAGES_MAGIC
    head = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
    assert encode_idx(values) == head + values.tobytes()  # the format, big-endian sizes
    assert read_header(path, magic).dims == shape
    out = read_idx(path, magic)
    assert out.dtype == np.uint8 and np.array_equal(out, values) and out.flags.writeable


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_directory_loads_and_describes_alike(tmp_path: Path, gz: bool) -> None:
    root = write_idx_dir(tmp_path / "d", per_class=(10, 3), classes=4, gz=gz, side=10)
    spec = f"idx:{root}"
    data = load_data(spec, 8, val_fraction=0.2)
    assert describe(spec, 8) == data.shape
    assert (data.num_classes, data.in_channels, data.image_size) == (4, 1, 8)
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 12)
    assert data.classes == ("0", "1", "2", "3") and data.augment == "crop"
    assert torch.bincount(data.val.labels).tolist() == [2, 2, 2, 2]  # stratified, SPLIT_SEED
    assert torch.equal(load_data(spec, 8, val_fraction=0.2).val.images, data.val.images)
    assert data.train.images.shape[1:] == (1, 8, 8) and data.train.images.dtype == torch.uint8
    assert 0 < data.mean[0] < 1 and 0 < data.std[0] < 1
    assert load_data(spec, include_test=False).test is None
    assert load_data(spec).image_size == 28  # the default for idx datasets


def test_fashion_mnist_from_a_path_and_from_the_shipped_subset(tmp_path: Path,
                                                               no_system_copy: None) -> None:
    root = write_idx_dir(tmp_path / "fm", gz=False)
    spec = f"fashion-mnist:{root}"
    data = load_data(spec, 12)
    assert describe(spec, 12) == data.shape == DatasetShape(spec, 12, 10, 1)
    assert data.classes[0] == "T-shirt/top" and data.augment == "crop_flip"
    assert (data.mean, data.std) == ((0.2860,), (0.3530,))
    assert fashion_mnist_dir() == FASHION_MNIST_SUBSET
    shipped = load_data("fashion-mnist", include_test=True)
    assert describe("fashion-mnist") == shipped.shape
    assert shipped.shape.image_size == 28 and shipped.num_classes == 10
    assert shipped.describe()["sizes"] == {"train": 9000, "val": 1000, "test": 2000}
    assert parse_data_spec("fashion-mnist") == ("fashion-mnist", None)


def test_the_system_copy_is_preferred_when_complete(tmp_path: Path, monkeypatch) -> None:
    system = write_idx_dir(tmp_path / "system")
    monkeypatch.setattr(data_module, "SYSTEM_FASHION_MNIST", system)
    assert fashion_mnist_dir() == system
    assert len(load_data("fashion-mnist", 12).train) == 50  # 1 per class to val
    (system / "t10k-labels-idx1-ubyte.gz").unlink()  # an incomplete copy is passed over
    assert fashion_mnist_dir() == FASHION_MNIST_SUBSET


def test_the_search_resolves_fashion_mnist_once_for_every_worker(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """A driver with Debian's copy must not send workers without it to the shipped subset."""
    system = write_idx_dir(tmp_path / "system")
    monkeypatch.setattr(data_module, "SYSTEM_FASHION_MNIST", system)
    parser = search_cli.build_parser()
    config, _ = search_cli.config_from_args(parser.parse_args(["--data", "fashion-mnist"]))
    assert config.data == f"fashion-mnist:{system}"
    for given in (f"fashion-mnist:{tmp_path}", "fashion-mnist-subset", "digits"):
        assert search_cli.config_from_args(parser.parse_args(["--data", given]))[0].data == given


@pytest.mark.parametrize(("kind", "flips"), [("crop", False), ("crop_flip", True)])
def test_augmentation_shifts_by_an_eighth_and_flips_only_clothing(kind: str, flips: bool) -> None:
    x = torch.zeros(256, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 14, 4] = 255  # a dot near the left edge: a flip moves it to column 23
    out = augment(x, kind, torch.Generator().manual_seed(0))
    rows, cols = zip(*(divmod(int(o.flatten().argmax()), 28) for o in out), strict=True)
    assert set(rows) == set(range(11, 18))  # shifts of up to 28 // 8 = 3 px either way
    assert (max(cols) >= 20) == flips and min(cols) == 1


# --- bad input -------------------------------------------------------------------------------
def _corrupt(root: Path, case: str) -> tuple[str, str, bool]:
    """Damage the dataset in `root`: (file the error names, text it holds, also in describe)."""
    images, labels = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte"
    if case == "missing file":
        (root / "t10k-labels-idx1-ubyte").unlink()
        return str(root), "missing t10k-labels-idx1-ubyte(.gz)", True
    if case == "wrong magic":
        images.write_bytes(labels.read_bytes())
        return str(images), "magic number 0x00000801; expected an idx file, magic 0x00000803", True
    if case == "wrong dtype":
        raw = bytearray(images.read_bytes())
        raw[2] = 0x0D  # float32
        images.write_bytes(bytes(raw))
        return str(images), "magic number 0x00000d03", True
    if case == "short header":
        labels.write_bytes(b"\x00\x00\x08\x01\x00")
        return str(labels), "ends inside its header", True
    if case == "truncated":
        images.write_bytes(images.read_bytes()[:-7])
        return str(images), "the file holds 8633; expected exactly the header's size", False
    if case == "too long":
        images.write_bytes(images.read_bytes() + b"\x00")
        return str(images), "(8640 bytes of values), the file holds 8641", False
    if case == "corrupt gzip":
        gz = root / "t10k-images-idx3-ubyte.gz"
        gz.write_bytes(gzip.compress((root / "t10k-images-idx3-ubyte").read_bytes())[:40])
        (root / "t10k-images-idx3-ubyte").unlink()
        return str(gz), "truncated or corrupt gzip file", True
    if case == "label out of range":
        _write(labels, np.array([0, 1, 2, 3, 4, 5, 10, 7, 8, 9] * 6, dtype=np.uint8), False)
        return str(labels), "labels must be in [0, 10), got 0..10", True
    if case == "count mismatch":
        _write(labels, np.arange(10, dtype=np.uint8).repeat(5), False)
        return str(images), "holds 60 images but", True
    raise AssertionError(case)


BAD_FILES = ["missing file", "wrong magic", "wrong dtype", "short header", "truncated",
             "too long", "corrupt gzip", "label out of range", "count mismatch"]


def _one_line(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        call(*args, **kwargs)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("kind", ["fashion-mnist", "idx"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_give_one_line_naming_the_file(tmp_path: Path, case: str, kind: str) -> None:
    root = write_idx_dir(tmp_path / "d", gz=False, side=12)  # 60 train images of 144 bytes
    named, text, at_describe = _corrupt(root, case)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    spec = f"{kind}:{root}"
    if kind == "idx" and case == "label out of range":  # idx: 11 classes, class 6 empty
        text = "leave classes 6 without images"
    message = _one_line(load_data, spec, 12)
    assert named in message and text in message, message
    if at_describe:
        assert message == _one_line(describe, spec, 12)
    else:  # describe reads only headers and labels, never the image values
        assert describe(spec, 12).num_classes == 10
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before  # reading changes nothing


@pytest.mark.parametrize(("spec", "text"), [
    ("fashion-mnist:", "needs a path: fashion-mnist:PATH"),
    ("idx", "needs a path: idx:PATH"),
    ("mnist", "fashion-mnist-subset | fashion-mnist[:PATH] | digits | idx:PATH"),
    ("fashion-mnist-subset:/x", "data 'fashion-mnist-subset' takes no path"),
])
def test_bad_data_strings(spec: str, text: str) -> None:
    assert text in _one_line(load_data, spec)


@pytest.mark.parametrize(("split", "labels", "text"), [
    ("t10k", [0, 1, 2, 3, 0, 1], "labels must be in [0, 3), got 0..3"),
    ("train", [0] * 18, "every label is 0; expected labels 0..K-1, K >= 2"),
    ("train", [0, 2] * 9, "labels 0..2 leave classes 1 without images"),
])
def test_idx_class_count_is_checked(tmp_path: Path, split: str, labels: list[int],
                                    text: str) -> None:
    root = write_idx_dir(tmp_path / "d", classes=3, gz=False)
    path = root / f"{split}-labels-idx1-ubyte"
    _write(path, np.array(labels, dtype=np.uint8), False)
    message = _one_line(describe, f"idx:{root}")
    assert message.startswith(f"{path}: ") and text in message
    assert message == _one_line(load_data, f"idx:{root}")


def test_image_size_too_small_for_the_spec(tmp_path: Path, capsys) -> None:
    root = write_idx_dir(tmp_path / "d", gz=False)
    assert "image size must be an integer >= 2" in _one_line(load_data, f"idx:{root}", 1)
    argv = ["--arch", "resnest:0", "--data", f"fashion-mnist:{root}", "--image-size", "4",
            "--out", str(tmp_path / "run"), "--quiet"]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image size 4 is too small" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --- the shipped subset and its script -------------------------------------------------------
def test_shipped_subset_is_stratified_with_the_recorded_checksums() -> None:
    for split, (image_name, label_name) in SPLIT_FILES.items():
        labels = read_idx(FASHION_MNIST_SUBSET / f"{label_name}.gz", LABELS_MAGIC)
        header = read_header(FASHION_MNIST_SUBSET / f"{image_name}.gz", IMAGES_MAGIC)
        per_class = script.PER_CLASS[split]
        assert np.bincount(labels).tolist() == [per_class] * 10
        assert header.dims == (10 * per_class, 28, 28)
    shipped = {name: (FASHION_MNIST_SUBSET / name).read_bytes() for name in script.SUBSET_SHA256}
    assert set(shipped) == {f"{name}.gz" for name in NAMES}
    assert script.check_subset(shipped) == []  # contents and the gzip bytes both match
    assert {p.name for p in FASHION_MNIST_SUBSET.iterdir()} == {*shipped, "LICENSE", "README.md"}
    assert "Zalando SE" in (FASHION_MNIST_SUBSET / "LICENSE").read_text()
    assert "arXiv:1708.07747" in (FASHION_MNIST_SUBSET / "README.md").read_text()


def test_the_script_regenerates_the_subset(tmp_path: Path, capsys) -> None:
    """From Debian's files where installed: the shipped bytes exactly. Elsewhere from a tiny
    synthetic "official" set (whose checksums are not the official ones): deterministic."""
    out = tmp_path / "out"
    if all(has_split(SYSTEM_FASHION_MNIST, split) for split in SPLIT_FILES):
        assert script.main(["--source", str(SYSTEM_FASHION_MNIST), "--out", str(out)]) == 0
        for name in script.SUBSET_SHA256:
            assert (out / name).read_bytes() == (FASHION_MNIST_SUBSET / name).read_bytes()
        assert capsys.readouterr().err == ""
    else:
        test_the_subset_of_a_synthetic_set_is_deterministic(tmp_path)


def test_the_subset_of_a_synthetic_set_is_deterministic(tmp_path: Path) -> None:
    source = write_idx_dir(tmp_path / "official", per_class=(5, 3))
    per_class = {"train": 4, "test": 2}
    first = script.make_subset(source, per_class=per_class, expected=None)
    assert first == script.make_subset(source, per_class=per_class, expected=None)
    labels = np.frombuffer(gzip.decompress(first["train-labels-idx1-ubyte.gz"])[8:], np.uint8)
    assert np.bincount(labels).tolist() == [4] * 10
    official = read_idx(source / "train-labels-idx1-ubyte.gz", LABELS_MAGIC)
    first_four = np.sort(np.concatenate([np.flatnonzero(official == c)[:4] for c in range(10)]))
    assert np.array_equal(labels, official[first_four])  # the first of each class, in order


def test_the_script_checks_before_writing(tmp_path: Path, capsys) -> None:
    source = write_idx_dir(tmp_path / "official", per_class=(3, 1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-images-idx3-ubyte.gz").write_bytes(b"earlier")
    assert script.main(["--source", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err and "train-images-idx3-ubyte" in err
    assert [p.name for p in out.iterdir()] == ["train-images-idx3-ubyte.gz"]
    assert (out / "train-images-idx3-ubyte.gz").read_bytes() == b"earlier"
    with pytest.raises(DataError, match="holds 1 items of class 0; the subset needs 2"):
        script.make_subset(source, per_class={"train": 2, "test": 2}, expected=None)
    assert script.main(["--source", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "is not a directory" in capsys.readouterr().err


# --- a run ----------------------------------------------------------------------------------
def test_train_runs_on_the_shipped_subset(tmp_path: Path, no_system_copy: None, capsys) -> None:
    before = torch.get_num_threads()
    run, spec = tmp_path / "run", tmp_path / "tiny.json"
    spec.write_text(tiny_spec().to_json())
    argv = ["--arch", str(spec), "--data", "fashion-mnist", "--epochs", "1", "--image-size", "8",
            "--train-fraction", "0.02", "--val-fraction", "0.05", "--batch-size", "32",
            "--threads", "1", "--out", str(run), "--quiet"]
    try:
        assert train_cli.main(argv) == 0
    finally:
        torch.set_num_threads(before)
    printed = capsys.readouterr()
    assert "train/val/test 190/500/2000" in printed.out + printed.err
    result = json.loads((run / "result.json").read_text())
    assert result["data"] == "fashion-mnist" and result["image_size"] == 8
    assert result["state"] == "COMPLETE" and 0 <= result["test_top1"] <= 1
