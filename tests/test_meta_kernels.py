"""`nas.models.meta_kernels` against torch's own meta kernels: same output shape and dtype on a grid of
cases per kernel (strides, padding, dilation, groups, ceil mode, broadcasting, promotion), and
None (torch decides) for the cases the kernels leave to torch."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nas.models.meta_kernels import KERNELS, meta_output

aten = torch.ops.aten


def m(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def conv(x: tuple[int, ...], w: tuple[int, ...], stride: list[int], padding: list[int],
         dilation: list[int], groups: int, bias: bool = False) -> tuple[Any, tuple, dict]:
    spatial = len(x) - 2
    return (aten.convolution.default,
            (m(*x), m(*w), m(w[0]) if bias else None, stride, padding, dilation, False,
             [0] * spatial, groups), {})


CASES: list[tuple[Any, tuple, dict]] = [
    conv((8, 16, 32, 32), (32, 16, 1, 1), [1, 1], [0, 0], [1, 1], 1),
    conv((8, 16, 32, 32), (64, 4, 3, 3), [2, 2], [1, 1], [1, 1], 4, bias=True),
    conv((2, 6, 7, 9), (6, 1, 3, 3), [2, 1], [1, 0], [1, 1], 6),
    conv((2, 6, 13, 11), (12, 3, 3, 5), [3, 2], [2, 1], [2, 1], 2),
    conv((4, 3, 224, 224), (32, 3, 7, 7), [2, 2], [3, 3], [1, 1], 1),
    conv((2, 4, 9), (8, 4, 3), [2], [1], [1], 1),
    (aten.mul.Tensor, (m(8, 64, 4, 4), m(8, 64, 1, 1)), {}),
    (aten.mul.Tensor, (m(8, 2, 32, 4, 4), m(8, 2, 32, 1, 1)), {}),
    (aten.mul.Tensor, (m(8, 64, 1, 1), 0.0625), {}),
    (aten.mul.Tensor, (m(3, 5), 2), {}),
    (aten.mul.Tensor, (m(3, 5), m(dtype=torch.float64)), {}),
    (aten.mul.Tensor, (m(3, 5, dtype=torch.float16), m(3, 5)), {}),
    (aten.mul.Tensor, (m(1, 5), m(4, 1, dtype=torch.float64)), {}),
    (aten.addmm.default, (m(10), m(8, 64), m(64, 10)), {}),
    (aten.addmm.default, (m(1, 32), m(2, 16), m(16, 32)), {"beta": 0.5, "alpha": 2}),
    (aten.sum.dim_IntList, (m(8, 2, 32, 4, 4), [3, 4]), {}),
    (aten.sum.dim_IntList, (m(8, 2, 32), [1]), {}),
    (aten.sum.dim_IntList, (m(8, 64, 4, 4), [2, 3], True), {}),
    (aten.sum.dim_IntList, (m(8, 64, 4, 4), [-1, -2]), {}),
    (aten.mean.dim, (m(8, 64, 4, 4), [2, 3]), {}),
    (aten.mean.dim, (m(8, 64, 4, 4), [-1], True), {}),
    (aten.avg_pool2d.default, (m(8, 32, 16, 16), [3, 3], [2, 2], [1, 1]), {}),
    (aten.avg_pool2d.default, (m(8, 32, 7, 7), [2, 2], [2, 2], [0, 0], True, False), {}),
    (aten.avg_pool2d.default, (m(8, 32, 5, 6), [3, 3], [2, 2], [1, 1], True), {}),
    (aten.avg_pool2d.default, (m(2, 4, 9, 9), [3, 3], [3, 3], [1, 1], True), {}),
    (aten.avg_pool2d.default, (m(2, 4, 5, 5), [3, 3], [3, 3], [1, 1], True), {}),
    (aten.avg_pool2d.default, (m(2, 4, 8, 8), [2, 2]), {}),
    (aten.avg_pool2d.default, (m(2, 4, 8, 8), [3], [2], [1]), {}),
    (aten.avg_pool2d.default, (m(2, 4, 1, 1), [2, 2], [2, 2], [0, 0], True, False), {}),
    (aten._softmax.default, (m(8, 2, 4, 16), 1, False), {}),
    (aten.sigmoid.default, (m(8, 64, 1, 1),), {}),
]

LEFT_TO_TORCH: list[tuple[Any, tuple, dict]] = [
    (aten.convolution.default,
     (m(2, 4, 8, 8), m(4, 8, 3, 3), None, [2, 2], [1, 1], [1, 1], True, [1, 1], 1), {}),
    (aten.mul.Tensor, (m(3, 5, dtype=torch.int64), 2), {}),
    (aten.sum.dim_IntList, (m(8, 64), []), {}),
    (aten.sum.dim_IntList, (m(8, 64), None), {}),
    (aten.sum.dim_IntList, (m(8, 64), [1]), {"dtype": torch.float64}),
    (aten._softmax.default, (m(4, 8, dtype=torch.float16), 1, True), {}),
    (aten.sigmoid.default, (torch.ones(3),), {}),  # not meta: torch computes values
    (aten.add.Tensor, (m(3), m(3)), {}),  # no kernel here
]


def _name(case: tuple[Any, tuple, dict]) -> str:
    func, args, _ = case
    shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
    return f"{func}-{shapes}"


@pytest.mark.parametrize("case", CASES, ids=[_name(c) for c in CASES])
def test_kernel_matches_torch_meta(case: tuple[Any, tuple, dict]) -> None:
    func, args, kwargs = case
    expected = func(*args, **kwargs)
    ours = meta_output(func, args, kwargs)
    assert ours is not None
    assert ours.device.type == "meta"
    assert (tuple(ours.shape), ours.dtype) == (tuple(expected.shape), expected.dtype)


@pytest.mark.parametrize("case", LEFT_TO_TORCH, ids=[_name(c) for c in LEFT_TO_TORCH])
def test_unusual_cases_are_left_to_torch(case: tuple[Any, tuple, dict]) -> None:
    func, args, kwargs = case
    assert meta_output(func, args, kwargs) is None


def test_every_kernel_is_checked() -> None:
    assert {func for func, _, _ in CASES} == set(KERNELS)


def test_pooling_sizes_match_torch_exhaustively() -> None:
    """Every small (size, kernel, stride, padding, ceil_mode) torch accepts, including the
    ceil-mode windows that would start in the right padding."""
    checked = 0
    for size in range(1, 13):
        for kernel in range(1, 5):
            for stride in range(1, 4):
                for pad in range(0, kernel // 2 + 1):
                    for ceil in (False, True):
                        args = (m(1, 1, size, size + 1), [kernel, kernel], [stride, stride],
                                [pad, pad], ceil)
                        try:
                            expected = aten.avg_pool2d.default(*args)
                        except RuntimeError:
                            assert meta_output(aten.avg_pool2d.default, args, {}) is None
                            continue
                        ours = meta_output(aten.avg_pool2d.default, args, {})
                        assert ours is not None and ours.shape == expected.shape, args[1:]
                        checked += 1
    assert checked > 500
