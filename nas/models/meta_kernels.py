"""Output-shape kernels for the ops that dominate a meta-device trace of a ResNeSt block.

On the meta device, torch computes the output of convolution, addmm, broadcasting mul,
reductions, pooling, softmax and sigmoid with Python decompositions and reference
implementations (0.1-1 ms per call), which made them the largest part of `nas.costs`' static
costs, the cost model every search trial pays before it starts (docs/benchmarks.md, "Framework
overhead at scale"). Each kernel here returns a new meta tensor of the output's shape and dtype,
which is all a meta trace needs (meta tensors hold no values). A kernel returns None where its
case is not the common one (transposed convolution, integer dtypes, a full reduction, ...) and
the caller falls back to torch's own meta kernel; tests/test_meta_kernels.py checks every
kernel against torch's on a grid of cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

aten = torch.ops.aten


def _floating(*tensors: torch.Tensor) -> bool:
    return all(t.dtype.is_floating_point for t in tensors)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return (int(value[0]), int(value[0])) if len(value) == 1 else (int(value[0]), int(value[1]))


def _new(shape: Sequence[int], like: torch.Tensor, dtype: torch.dtype | None = None
         ) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype or like.dtype, device="meta")


def _convolution(x: torch.Tensor, weight: torch.Tensor, bias: Any, stride: Sequence[int],
                 padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                 output_padding: Sequence[int], groups: int) -> torch.Tensor | None:
    spatial = x.dim() - 2
    if transposed or spatial < 1 or weight.dim() != x.dim() or not _floating(x, weight):
        return None
    if not (len(stride) == len(padding) == len(dilation) == spatial):
        return None
    out = [x.shape[0], weight.shape[0]]
    for i in range(spatial):
        extent = dilation[i] * (weight.shape[2 + i] - 1) + 1
        out.append((x.shape[2 + i] + 2 * padding[i] - extent) // stride[i] + 1)
    return _new(out, x)


def _mul(a: torch.Tensor, b: Any) -> torch.Tensor | None:
    if isinstance(b, torch.Tensor):
        if not _floating(a, b):
            return None
        return _new(torch.broadcast_shapes(a.shape, b.shape), a, torch.result_type(a, b))
    if not _floating(a) or not isinstance(b, float | int) or isinstance(b, bool):
        return None
    return _new(a.shape, a)


def _addmm(bias: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, **_: Any
           ) -> torch.Tensor | None:
    if m1.dim() != 2 or m2.dim() != 2 or not _floating(bias, m1, m2):
        return None
    return _new((m1.shape[0], m2.shape[1]), m1)


def _reduce(x: torch.Tensor, dim: Sequence[int] | None, keepdim: bool = False, *,
            dtype: torch.dtype | None = None) -> torch.Tensor | None:
    if not dim or dtype is not None or not _floating(x):
        return None
    axes = {d % x.dim() for d in dim}
    if keepdim:
        shape = [1 if i in axes else s for i, s in enumerate(x.shape)]
    else:
        shape = [s for i, s in enumerate(x.shape) if i not in axes]
    return _new(shape, x)


def _pooled(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """torch's pooling output length, including its ceil-mode rule: the last window must start
    inside the input or its left padding."""
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _avg_pool2d(x: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int] = (),
                padding: int | Sequence[int] = 0, ceil_mode: bool = False,
                count_include_pad: bool = True, divisor_override: int | None = None
                ) -> torch.Tensor | None:
    if x.dim() != 4 or not _floating(x):
        return None
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride) if stride else (kh, kw)
    ph, pw = _pair(padding)
    height = _pooled(x.shape[2], kh, sh, ph, ceil_mode)
    width = _pooled(x.shape[3], kw, sw, pw, ceil_mode)
    if height < 1 or width < 1:
        return None  # torch raises its own error for this
    return _new((x.shape[0], x.shape[1], height, width), x)


def _softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor | None:
    if half_to_float or not _floating(x):
        return None
    return _new(x.shape, x)


def _sigmoid(x: torch.Tensor) -> torch.Tensor | None:
    return _new(x.shape, x) if _floating(x) else None


KERNELS: dict[Any, Callable[..., torch.Tensor | None]] = {
    aten.convolution.default: _convolution,
    aten.mul.Tensor: _mul,
    aten.addmm.default: _addmm,
    aten.sum.dim_IntList: _reduce,
    aten.mean.dim: _reduce,
    aten.avg_pool2d.default: _avg_pool2d,
    aten._softmax.default: _softmax,
    aten.sigmoid.default: _sigmoid,
}


def meta_output(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> torch.Tensor | None:
    """The output of `func(*args, **kwargs)` on meta tensors, or None for torch to compute."""
    kernel = KERNELS.get(func)
    if kernel is None or not all(a.device.type == "meta" for a in args
                                 if isinstance(a, torch.Tensor)):
        return None
    return kernel(*args, **kwargs)
