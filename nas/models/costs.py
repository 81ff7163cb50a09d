"""Cost model of an architecture: parameters, MACs, peak memory, latency and throughput.

`static_costs` is what the search calls for every candidate. It runs nothing real: each part of
the network (stem, each distinct bottleneck, head) is built on the "meta" device (shapes only,
parameter initialisers skipped) and traced once under a dispatch mode, with `nas.models.meta_kernels`
computing the output shapes of the ops whose meta kernels are slow; parts are cached by their
constructor arguments and input shape and composed per spec, and whole results are cached by
(spec, image_size, batch_size).
`measure_costs` adds wall-clock latency and throughput on a real device, and on CUDA replaces
the memory estimate with the allocator's measurement of the same quantity.

Definitions (state them with every number):
- macs: multiply-accumulates of one forward pass of ONE image at `image_size` (FlopCounterMode's
  FLOP formulas / 2: convolutions and matmuls only, not BN, pooling or elementwise ops; the
  paper's "GFLOPs" are these MACs).
- peak_memory_bytes: peak bytes of tensors allocated during one train-mode forward at
  `batch_size`, excluding weights, buffers and the input. At the end of the forward this is the
  activation memory autograd keeps for backward (plus the logits); the peak adds the largest
  transient temporaries. Backward (gradients), optimizer state and allocator overhead come on top.
  meta/CPU: exact tensor bytes tracked per storage. CUDA: max_memory_allocated minus the bytes
  allocated before the forward (so it also counts cuDNN workspaces and allocator rounding).
- latency_ms: median wall time of an eval forward at batch 1 after warm-up.
- throughput_images_per_s: eval forward images/s at `batch_size` (median over runs).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from nas.models.builder import Bottleneck, build_model, make_stem
from nas.models.meta_kernels import meta_output
from search_spaces.block_plan import BlockArgs, block_plan
from search_spaces.errors import UserError
from search_spaces.registry import SpecLike, resolve_spec
from search_spaces.spec import ArchSpec

DEFAULT_BATCH = 8


@dataclass(frozen=True)
class CostRecord:
    """Costs of one architecture at one input size (see the module docstring for definitions)."""

    params: int
    macs: int
    image_size: int
    peak_memory_bytes: int
    latency_ms: float | None
    throughput_images_per_s: float | None
    device: str
    batch_size: int
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_image_size(spec: ArchSpec) -> int:
    """The usual input side for the spec's regime: 224 for ImageNet stems, 32 for small images."""
    return 224 if spec.input_regime == "imagenet" else 32


class _Tracker(TorchDispatchMode):
    """Counts matmul/conv FLOPs (FlopCounterMode's own formulas) and live bytes of the storages
    created under the mode, each freed when its storage dies.

    Storages that exist on entry (weights, buffers, input) are ignored even when written in
    place (BN running stats), so the numbers cover only what the forward itself allocates. No
    decomposition of unknown ops (FlopCounterMode does that, which is slow on meta tensors).
    """

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self._keep = [t.untyped_storage() for t in existing]  # keeps their ids unique
        self._ignored = {id(st) for st in self._keep}
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.flops = 0

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is _BATCH_NORM and args[0].device.type == "meta":
            out = _meta_batch_norm(*args)
        else:
            out = meta_output(func, args, kwargs)
            if out is None:
                out = func(*args, **kwargs)
        packet = func.overloadpacket
        if packet in flop_registry:
            self.flops += _flop_count(flop_registry[packet], args, kwargs, out)
        outputs = out if isinstance(out, tuple | list) else (out,)
        if any(isinstance(t, tuple | list) for t in outputs):  # nested: rare, flatten it all
            outputs = tree_flatten(out)[0]
        for t in outputs:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._ignored or key in self._live:
                continue
            self._live[key] = size = storage.nbytes()
            self.current += size
            weakref.finalize(storage, self._free, key)
        if self.current > self.peak:
            self.peak = self.current
        return out


_BATCH_NORM = torch.ops.aten.native_batch_norm.default


def _shape(value: Any) -> Any:
    return value.shape if isinstance(value, torch.Tensor) else value


def _flop_count(formula: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """FlopCounterMode's formula for one call. Its registry wraps each shape formula in a
    pytree map from tensors to shapes (~0.3 ms a call on these arguments); for flat arguments
    the shapes are taken here and the formula itself (`__wrapped__`) is called."""
    raw = getattr(formula, "__wrapped__", None)
    nested = any(isinstance(a, list | tuple) and any(isinstance(x, torch.Tensor) for x in a)
                 for a in args)
    if raw is None or nested or not isinstance(out, torch.Tensor):
        return formula(*args, **kwargs, out_val=out)
    return raw(*map(_shape, args), out_shape=out.shape,
               **{k: _shape(v) for k, v in kwargs.items()})


def _meta_batch_norm(x: torch.Tensor, weight: Any, bias: Any, running_mean: Any,
                     running_var: Any, training: bool, *_: Any) -> tuple[torch.Tensor, ...]:
    """The outputs CPU's native_batch_norm allocates (normalised x; per-channel mean and inverse
    std saved for backward in training), without the meta kernel's slow Python decomposition
    (~90% of the time of a meta forward). Running statistics are not updated: meta has no values."""
    stats = (x.shape[1] if training else 0,)
    return (torch.empty(x.shape, dtype=x.dtype, device="meta"),
            torch.empty(stats, dtype=x.dtype, device="meta"),
            torch.empty(stats, dtype=x.dtype, device="meta"))


@dataclass(frozen=True)
class _Piece:
    """Costs of one part of the network (stem, block, head) for one input shape."""

    params: int
    flops: int  # for the whole batch, forward only
    retained: int  # bytes still alive after the forward: saved for backward, plus the output
    peak: int  # the part's own peak during its forward
    out_shape: tuple[int, ...]


def _measure_piece(module: nn.Module, shape: tuple[int, ...]) -> _Piece:
    """Train-mode forward of `module` (on meta) on an input of `shape`, tracked."""
    module.train()
    x = torch.empty(shape, device="meta")
    with _Tracker([*module.parameters(), *module.buffers(), x]) as tracker:
        out = module(x)
        retained = tracker.current
    return _Piece(sum(p.numel() for p in module.parameters()), tracker.flops, retained,
                  tracker.peak, tuple(out.shape))


_META_BUILD = threading.Lock()


@contextlib.contextmanager
def _meta_modules() -> Iterator[None]:
    """Build modules on the meta device without running their initialisers.

    Conv, BatchNorm and Linear layers initialise their parameters in `reset_parameters`, which
    does nothing to meta tensors (they hold no values) but took half the time of building a
    block. For the duration, those classes skip it for modules whose parameters are on meta;
    every other module (another thread's, a real device's) still runs it. Build under this
    context, run outside it (the device context intercepts every torch call)."""
    with _META_BUILD:
        saved = {cls: cls.__dict__.get("reset_parameters") for cls in _INITIALISED}
        for cls in _INITIALISED:
            cls.reset_parameters = _skip_on_meta(cls.reset_parameters)
        try:
            with torch.device("meta"):
                yield
        finally:
            for cls, own in saved.items():
                if own is None:
                    del cls.reset_parameters
                else:
                    cls.reset_parameters = own


_INITIALISED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def _skip_on_meta(reset: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
    @functools.wraps(reset)
    def reset_unless_meta(module: nn.Module) -> None:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.is_meta:
            reset(module)
    return reset_unless_meta


@functools.lru_cache(maxsize=65536)
def _block_piece(args: BlockArgs, shape: tuple[int, ...]) -> _Piece:
    with _meta_modules():
        block = Bottleneck(*args)
    return _measure_piece(block, shape)


@functools.lru_cache(maxsize=4096)
def _stem_piece(stem: str, width: int, regime: str, shape: tuple[int, ...]) -> _Piece:
    with _meta_modules():
        conv1, bn1, pool = make_stem(stem, width, shape[1], regime)
        module = nn.Sequential(conv1, bn1, nn.ReLU(inplace=True), pool)
    return _measure_piece(module, shape)


class _Head(nn.Module):
    """Mirrors `ResNeSt.forward_head` (the tests check the composition against a whole model)."""

    def __init__(self, features: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.mean((2, 3))))


@functools.lru_cache(maxsize=4096)
def _head_piece(num_classes: int, dropout: float, shape: tuple[int, ...]) -> _Piece:
    with _meta_modules():
        head = _Head(shape[1], num_classes, dropout)
    return _measure_piece(head, shape)


def _check_sizes(spec: ArchSpec, image_size: int, batch_size: int) -> None:
    if image_size < spec.min_image_size:
        raise UserError(
            f"image size {image_size} is below this spec's minimum {spec.min_image_size} "
            f"(total stride {spec.total_stride})"
        )
    if batch_size < 2:
        raise UserError(f"batch size must be >= 2 (train-mode BatchNorm), got {batch_size}")


@functools.lru_cache(maxsize=16384)
def _static(spec: ArchSpec, image_size: int, batch_size: int) -> CostRecord:
    """Compose per-part costs. Bytes a part retains stay alive through all later parts (autograd
    holds them for backward), so the forward peak is max over parts of (retained before + the
    part's own peak)."""
    shape: tuple[int, ...] = (batch_size, spec.in_channels, image_size, image_size)
    pieces = []
    piece = _stem_piece(spec.stem, spec.stem_width, spec.input_regime, shape)
    pieces.append(piece)
    for blocks in block_plan(spec):
        for args in blocks:
            piece = _block_piece(args, piece.out_shape)
            pieces.append(piece)
    pieces.append(_head_piece(spec.num_classes, spec.dropout, piece.out_shape))
    retained = peak = 0
    for p in pieces:
        peak = max(peak, retained + p.peak)
        retained += p.retained
    return CostRecord(
        params=sum(p.params for p in pieces),
        macs=sum(p.flops for p in pieces) // (2 * batch_size), image_size=image_size,
        peak_memory_bytes=peak, latency_ms=None, throughput_images_per_s=None,
        device="meta", batch_size=batch_size,
    )


def static_costs(spec: SpecLike, image_size: int | None = None,
                 batch_size: int = DEFAULT_BATCH) -> CostRecord:
    """Params, MACs and train-forward peak memory without any arithmetic (cached)."""
    resolved = resolve_spec(spec)
    size = default_image_size(resolved) if image_size is None else int(image_size)
    _check_sizes(resolved, size, batch_size)
    # ArchSpec is a frozen dataclass compared by value: equal specs share one cache entry
    # whatever object (or name, or JSON) they arrive as.
    return _static(resolved, size, batch_size)


def whole_model_costs(spec: SpecLike, image_size: int, batch_size: int = DEFAULT_BATCH
                      ) -> tuple[int, int, int]:
    """(params, macs, peak bytes) from one tracked forward of the whole model on meta: slower,
    uncached; the reference that `static_costs`' per-part composition is tested against."""
    resolved = resolve_spec(spec)
    with torch.device("meta"):
        model = build_model(resolved)
    piece = _measure_piece(model, (batch_size, resolved.in_channels, image_size, image_size))
    return piece.params, piece.flops // (2 * batch_size), piece.peak


def _median_time(fn, device: torch.device, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cuda_peak(model: nn.Module, x: torch.Tensor) -> int:
    """Same quantity as the meta estimate, from the CUDA caching allocator's statistics."""
    device = x.device
    model.train()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = model(x)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return peak


def measure_costs(spec: SpecLike, image_size: int | None = None, device: str = "cpu",
                  batch_size: int = DEFAULT_BATCH, latency: bool = True, warmup: int = 3,
                  runs: int = 10) -> CostRecord:
    """Static costs plus measured latency (batch 1) and throughput (`batch_size`) on `device`."""
    resolved = resolve_spec(spec)
    static = static_costs(resolved, image_size, batch_size)
    if device not in ("cpu", "cuda"):
        raise UserError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but CUDA is not available")
    dev = torch.device(device)
    peak, lat, thr = static.peak_memory_bytes, None, None
    model = build_model(resolved).to(dev)
    size = static.image_size
    if dev.type == "cuda":
        x = torch.randn(batch_size, resolved.in_channels, size, size, device=dev)
        peak = _cuda_peak(model, x)
    if latency:
        model.eval()
        one = torch.randn(1, resolved.in_channels, size, size, device=dev)
        batch = torch.randn(batch_size, resolved.in_channels, size, size, device=dev)
        with torch.inference_mode():
            lat = 1e3 * _median_time(lambda: model(one), dev, warmup, runs)
            thr = batch_size / _median_time(lambda: model(batch), dev, warmup, runs)
    return CostRecord(
        params=static.params, macs=static.macs, image_size=size, peak_memory_bytes=peak,
        latency_ms=lat, throughput_images_per_s=thr, device=device, batch_size=batch_size,
        threads=torch.get_num_threads() if device == "cpu" else None,
    )
