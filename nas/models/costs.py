"""Cost model of an architecture: parameters, MACs, peak memory, latency and throughput.

`static_costs` is what the search calls for every candidate: params and MACs in closed form
from the spec (`search_spaces.counts`), and peak memory only when asked, traced by one forward of
the real model on the "meta" device (shapes only, no arithmetic). `measure_costs` adds wall-clock
latency and throughput on a real device, and on CUDA takes memory from the allocator instead.

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
  None when not asked for.
- latency_ms: median wall time of `runs` eval forwards after `warmup` untimed ones, by the
  latency backend `latency` describes (`nas.models.latency`: torch eager, torch.compile or
  onnxruntime, at its batch size, threads and precision; torch eager at batch 1 by default).
- throughput_images_per_s: eval forward images/s at `batch_size` (median over runs).
- device: "meta" for static costs (nothing ran on a real device), else where it was measured.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nas.models.builder import build_model
from nas.models.latency import LatencyBackend, LatencySettings, device_sync, median_ms
from search_spaces import counts
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
    peak_memory_bytes: int | None
    latency_ms: float | None
    throughput_images_per_s: float | None
    device: str
    batch_size: int
    threads: int | None = None
    latency: dict[str, Any] | None = None  # the latency's settings (`LatencySettings`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_image_size(spec: ArchSpec) -> int:
    """The usual input side for the spec's regime: 224 for ImageNet stems, 32 for small images."""
    return 224 if spec.input_regime == "imagenet" else 32


class _PeakTracker(TorchDispatchMode):
    """Live bytes of the storages created under the mode, each freed when its storage dies.

    Storages that exist on entry (weights, buffers, input) are ignored even when written in
    place (BN running stats), so the peak covers only what the forward itself allocates.
    Private torch API: no public hook sees every op's outputs below autograd.
    """

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self._keep = [t.untyped_storage() for t in existing]  # keeps their ids unique
        self._ignored = {id(st) for st in self._keep}
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._ignored or key in self._live:
                continue
            self._live[key] = size = storage.nbytes()
            self.current += size
            weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)
        return out


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _tensors(item)


def _traced_peak(spec: ArchSpec, image_size: int, batch_size: int) -> int:
    """Peak forward bytes of the real model built and run on meta (see the definition above)."""
    with torch.device("meta"):
        model = build_model(spec)
    model.train()
    x = torch.empty(batch_size, spec.in_channels, image_size, image_size, device="meta")
    with _PeakTracker([*model.parameters(), *model.buffers(), x]) as tracker:
        model(x)
    return tracker.peak


def _check_sizes(spec: ArchSpec, image_size: int, batch_size: int) -> None:
    if image_size < spec.min_image_size:
        raise UserError(
            f"image size {image_size} is below this spec's minimum {spec.min_image_size} "
            f"(total stride {spec.total_stride})"
        )
    if batch_size < 2:
        raise UserError(f"batch size must be >= 2 (train-mode BatchNorm), got {batch_size}")


@functools.lru_cache(maxsize=16384)
def _static(spec: ArchSpec, image_size: int, batch_size: int, memory: bool) -> CostRecord:
    return CostRecord(
        params=counts.params(spec), macs=counts.macs(spec, image_size), image_size=image_size,
        peak_memory_bytes=_traced_peak(spec, image_size, batch_size) if memory else None,
        latency_ms=None, throughput_images_per_s=None, device="meta", batch_size=batch_size,
    )


def static_costs(spec: SpecLike, image_size: int | None = None,
                 batch_size: int = DEFAULT_BATCH, memory: bool = False) -> CostRecord:
    """Params and MACs (closed form), plus train-forward peak memory if `memory` (cached)."""
    resolved = resolve_spec(spec)
    size = default_image_size(resolved) if image_size is None else int(image_size)
    _check_sizes(resolved, size, batch_size)
    # ArchSpec is a frozen dataclass compared by value: equal specs share one cache entry
    # whatever object (or name, or JSON) they arrive as.
    return _static(resolved, size, batch_size, bool(memory))


def _cuda_peak(model: nn.Module, x: torch.Tensor) -> int:
    """Same quantity as the meta trace, from the CUDA caching allocator's statistics."""
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
                  runs: int = 10, memory: bool = True,
                  latency_settings: LatencySettings | None = None) -> CostRecord:
    """Static costs plus measured latency (`latency_settings`; default torch eager at batch 1
    on `device` with torch's current threads) and eager throughput (`batch_size`) on `device`;
    peak memory (if `memory`) from the CUDA allocator on CUDA, else traced on meta."""
    resolved = resolve_spec(spec)
    if device not in ("cpu", "cuda"):
        raise UserError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but CUDA is not available")
    static = static_costs(resolved, image_size, batch_size, memory=memory and device == "cpu")
    dev = torch.device(device)
    peak, lat, thr, how = static.peak_memory_bytes, None, None, None
    size = static.image_size
    if (memory and dev.type == "cuda") or latency:
        model = build_model(resolved).to(dev)
    if memory and dev.type == "cuda":
        x = torch.randn(batch_size, resolved.in_channels, size, size, device=dev)
        peak = _cuda_peak(model, x)
    if latency:
        settings = latency_settings or LatencySettings(
            device=device, threads=torch.get_num_threads(), warmup=warmup, runs=runs)
        how = settings.to_dict()
        lat = LatencyBackend(settings).measure(model, (resolved.in_channels, size, size))
        model.to(dev).eval()
        batch = torch.randn(batch_size, resolved.in_channels, size, size, device=dev)
        with torch.inference_mode():
            thr = 1e3 * batch_size / median_ms(lambda: model(batch), warmup, runs,
                                               device_sync(dev))
    return CostRecord(
        params=static.params, macs=static.macs, image_size=size, peak_memory_bytes=peak,
        latency_ms=lat, throughput_images_per_s=thr, device=device, batch_size=batch_size,
        threads=torch.get_num_threads() if device == "cpu" else None, latency=how,
    )
