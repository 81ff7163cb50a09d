"""Datasets: digits, CIFAR-10/100 pickles and image folders in their real on-disk formats, the
batched augmentation, every malformed input (one clear DataError naming the path or value), and
`describe`: the shape loading gives, and loading's errors for bad paths, without loading."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import write_cifar10, write_cifar100, write_folder

from search_spaces.errors import UserError
from trials.data import DataError, augment, describe, load_data, parse_data_spec, stratified_split


def _batches(bundle, split="train", seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return list(bundle.batches(split, 8, train=split == "train", generator=g, **kw))


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    a, b = load_data("digits", 8), load_data("digits", 8)
    assert (a.num_classes, a.in_channels, a.image_size, a.augment) == (10, 1, 8, "translate")
    assert (len(a.train), len(a.val), len(a.test)) == (1259, 269, 269)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.train.images, b.train.images)
    assert torch.bincount(a.val.labels).min() >= 26  # every class in val, about equally
    # no image appears in two splits (digits has no exact duplicates across these splits)
    def rows(s):
        return {bytes(x.numpy().tobytes()) for x in s.images}
    assert not rows(a.train) & rows(a.val) and not rows(a.val) & rows(a.test)
    big = load_data("digits", 16, include_test=False)
    assert big.train.images.shape[1:] == (1, 16, 16) and big.test is None
    assert big.train.images.dtype == torch.uint8 and len(big.mean) == len(big.std) == 1


def test_batches_are_normalized_shuffled_and_never_size_one() -> None:
    data = load_data("digits", 8).subset(0.05)  # 10% of classes' images, stratified
    assert len(data.train) < 100 and set(data.train.labels.tolist()) == set(range(10))
    train = _batches(data)
    assert all(len(y) == 8 for _, y in train) and len(train) == len(data.train) // 8
    x = torch.cat([x for x, _ in _batches(data, "val")])
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 0.3
    assert torch.equal(torch.cat([y for _, y in _batches(data, "val")]), data.val.labels)
    same = _batches(data, seed=0)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(train, same, strict=True))
    assert not torch.equal(train[0][1], _batches(data, seed=1)[0][1])
    # fewer images than the batch: one batch of all of them, still >= 2
    tiny = data.subset(0.001)
    sizes = [len(y) for _, y in tiny.batches("train", 64, train=True, generator=torch.Generator())]
    assert sizes == [len(tiny.train)]


def test_augmentation_shifts_digits_without_flipping_and_flips_cifar() -> None:
    x = torch.zeros(64, 1, 16, 16, dtype=torch.uint8)
    x[:, :, 5, 2] = 255  # a dot near the left edge: a flip would move it to column 13
    out = augment(x, "translate", torch.Generator().manual_seed(0))
    pos = [divmod(int(o.flatten().argmax()), 16) for o in out]
    assert all(abs(r - 5) <= 2 and c <= 4 for r, c in pos) and len(set(pos)) > 3
    assert torch.equal(out, augment(x, "translate", torch.Generator().manual_seed(0)))
    flipped = augment(x, "crop_flip", torch.Generator().manual_seed(0))
    cols = [int(o.flatten().argmax()) % 16 for o in flipped]
    assert min(cols) <= 4 and max(cols) >= 11  # some flipped, some not


def test_cifar10_pickles(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "cifar-10-batches-py")
    with (root / "data_batch_2").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0]
    data = load_data(f"cifar10:{root}", val_fraction=0.2)
    shape = (data.num_classes, data.in_channels, data.image_size, data.augment)
    assert shape == (10, 3, 32, "crop_flip")
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 20)
    assert data.classes[:2] == ("airplane", "automobile")
    all_images = torch.cat([data.train.images, data.val.images])
    want = torch.from_numpy(raw.reshape(3, 32, 32))  # channel-major, row-major: the official layout
    assert any(torch.equal(img, want) for img in all_images)
    small = load_data(f"cifar10:{root}", 8, include_test=False)
    assert small.train.images.shape[1:] == (3, 8, 8) and small.test is None


def test_cifar100_pickles(tmp_path: Path) -> None:
    data = load_data(f"cifar100:{write_cifar100(tmp_path / 'c100')}", 16)
    assert (data.num_classes, len(data.test), data.classes[3]) == (100, 100, "class3")
    assert int(data.train.labels.max()) == 99 and len(data.train) + len(data.val) == 200


@pytest.mark.parametrize("in_memory", [True, False])
def test_image_folder(tmp_path: Path, in_memory: bool) -> None:
    root = write_folder(tmp_path / "imgs")
    data = load_data(f"folder:{root}", 12, in_memory=in_memory)
    assert data.classes == ("cat", "dog", "owl") and data.in_memory is in_memory
    assert (len(data.train), len(data.val), len(data.test), data.in_channels) == (18, 6, 6, 3)
    x, y = next(data.batches("val", 6))
    assert x.shape == (6, 3, 12, 12) and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert x[y == 0].mean() < x[y == 2].mean()  # the class colours survive decoding


def test_folder_streaming_equals_in_memory(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs")
    mem, disk = (load_data(f"folder:{root}", 12, in_memory=m) for m in (True, False))
    for (xa, ya), (xb, yb) in zip(_batches(mem), _batches(disk, workers=1), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_folder_without_val_carves_it_from_train(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs", per_class={"train": 10})
    data = load_data(f"folder:{root}", 8, val_fraction=0.2)
    assert (len(data.train), len(data.val), data.test) == (24, 6, None)


def test_stratified_split_keeps_every_class() -> None:
    labels = np.repeat(np.arange(5), [2, 3, 10, 10, 1])
    keep, take = stratified_split(labels, 0.2, seed=0)
    assert set(labels[take]) == {0, 1, 2, 3} and set(labels[keep]) == {0, 1, 2, 3, 4}
    assert not set(keep) & set(take) and len(keep) + len(take) == len(labels)


# --- bad input -------------------------------------------------------------------------------
def _error(spec: str, **kw) -> str:
    with pytest.raises(DataError) as err:
        load_data(spec, **kw)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    return str(err.value)


def test_bad_data_strings(tmp_path: Path) -> None:
    assert "expected one of: fashion-mnist-subset | fashion-mnist[:PATH]" in _error("mnist")
    assert "needs a path" in _error("cifar10:")
    assert str(tmp_path / "nope") in _error(f"cifar10:{tmp_path / 'nope'}")
    assert "image size" in _error("digits", image_size=1)
    with pytest.raises(DataError):
        parse_data_spec("digits:/x")


def test_cifar_wrong_layout_and_corrupt_pickle(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c10")
    assert "missing train, meta" in _error(f"cifar100:{root}")
    (root / "data_batch_3").write_bytes(b"\x80\x02this is not a pickle")
    msg = _error(f"cifar10:{root}")
    assert str(root / "data_batch_3") in msg and "not a readable CIFAR pickle" in msg
    (root / "data_batch_3").unlink()
    assert "missing data_batch_3" in _error(f"cifar10:{root}")


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c10")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with (root / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": Evil()}, f, protocol=2)
    assert "refusing to load __builtin__.print" in _error(f"cifar10:{root}")


def test_cifar_wrong_array_shape(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c10")
    with (root / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f, protocol=2)
    assert "expected 'data' N x 3072 uint8" in _error(f"cifar10:{root}")


def test_folder_wrong_layouts(tmp_path: Path) -> None:
    assert "has no train/ directory" in _error(f"folder:{tmp_path}")
    (tmp_path / "train").mkdir()
    assert "no class directories" in _error(f"folder:{tmp_path}")
    root = write_folder(tmp_path / "imgs")
    (root / "val" / "emu").mkdir()
    assert f"{root / 'val' / 'emu'} is not a class of" in _error(f"folder:{root}")
    (root / "val" / "emu").rmdir()
    for f in (root / "train" / "dog").iterdir():
        f.unlink()
    assert f"{root / 'train' / 'dog'} holds no images" in _error(f"folder:{root}")


@pytest.mark.parametrize("in_memory", [True, False])
def test_folder_unreadable_image_is_named(tmp_path: Path, in_memory: bool) -> None:
    root = write_folder(tmp_path / "imgs")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    if in_memory:
        msg = _error(f"folder:{root}", image_size=8, in_memory=True)
    else:
        data = load_data(f"folder:{root}", 8, in_memory=False)
        with pytest.raises(DataError) as err:
            for _ in data.batches("train", 64, train=True, generator=torch.Generator()):
                pass
        msg = str(err.value)
    assert f"cannot read image {bad}" in msg


# --- describe: the shape without loading ----------------------------------------------------
DATASETS = {
    "digits": lambda root: "digits",
    "cifar10": lambda root: f"cifar10:{write_cifar10(root / 'c10')}",
    "cifar100": lambda root: f"cifar100:{write_cifar100(root / 'c100')}",
    "folder": lambda root: f"folder:{write_folder(root / 'imgs')}",
    "folder without val": lambda root: f"folder:{write_folder(root / 'f', per_class={'train': 4})}",
}


@pytest.mark.parametrize("size", [None, 12])
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_describe_gives_the_shape_loading_gives(tmp_path: Path, name: str, size, monkeypatch):
    spec = DATASETS[name](tmp_path)
    loaded = load_data(spec, size, include_test=False).shape
    for target in ("trials.bundle.read_image", "trials.data._read_pickle",
                   "sklearn.datasets.load_digits"):  # describe reads no image, pickle or array
        monkeypatch.setattr(target, _no_reading)
    assert describe(spec, size) == loaded


def _no_reading(*args, **kwargs):
    raise AssertionError("describe read a dataset file")


def _bad_path(root: Path, case: str) -> str:
    """A data string whose path is wrong in the way `case` names."""
    if case == "missing":
        return f"cifar10:{root / 'nope'}"
    if case == "a file":
        (root / "file").write_text("x")
        return f"folder:{root / 'file'}"
    if case == "cifar layout":
        (root / "empty").mkdir()
        return f"cifar100:{root / 'empty'}"
    if case == "no train dir":
        return f"folder:{root}"
    if case == "no class dirs":
        (root / "train").mkdir()
        return f"folder:{root}"
    if case == "one class":
        return f"folder:{write_folder(root / 'one', classes=('cat',))}"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "a file", "cifar layout", "no train dir",
                                  "no class dirs", "one class"])
def test_describe_fails_like_loading_on_bad_paths(tmp_path: Path, case: str) -> None:
    spec = _bad_path(tmp_path, case)
    with pytest.raises(DataError) as described:
        describe(spec)
    assert str(described.value) == _error(spec, include_test=False)


@pytest.mark.parametrize("spec, size", [("mnist", None), ("cifar10:", None), ("digits", 1),
                                        ("digits:/x", None)])
def test_describe_fails_like_loading_on_bad_strings(spec: str, size) -> None:
    with pytest.raises(DataError) as described:
        describe(spec, size)
    assert str(described.value) == _error(spec, image_size=size)
