"""Latency backends: one definition of the figure, measured the way a model will be deployed.

The figure (state it with every number): the MEDIAN wall time of `runs` timed forward passes of
ONE batch of `batch_size` random images, after `warmup` untimed ones, in eval mode without
autograd, on `threads` CPU threads (intra-op; one inter-op thread) or on CUDA, in `precision`; in
milliseconds per forward (not per image). `LatencySettings.describe()` says all of it in one line.

Backends (one small interface, variants as constructor arguments):
- `torch`: PyTorch eager (`torch.inference_mode`); bf16/fp16 through autocast.
- `compile`: `torch.compile` (Inductor) of the same module; compiled once, before the warm-up.
- `onnxruntime`: the module exported to ONNX (opset 17, TorchScript exporter) and run in an
  `onnxruntime.InferenceSession`: CPUExecutionProvider on cpu, CUDAExecutionProvider on cuda
  (when the installed onnxruntime has it). fp32 only. Needs the `[onnx]` extra, imported lazily.

A backend measures any `nn.Module` at an input shape, so whole networks and their parts (stem,
one block, head: `nas.latency`) are timed by the same code.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.models.builder import build_model
from search_spaces.errors import UserError
from search_spaces.registry import SpecLike, resolve_spec

BACKENDS = ("torch", "compile", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("cpu", "cuda")
ONNX_EXTRA = "pip install 'resnest-nas[onnx]'"
DEFAULT_WARMUP = 5
DEFAULT_RUNS = 20


@dataclass(frozen=True)
class LatencySettings:
    """Everything a latency figure depends on besides the model and its input size."""

    backend: str = "torch"
    batch_size: int = 1
    threads: int = 1
    precision: str = "fp32"
    device: str = "cpu"
    warmup: int = DEFAULT_WARMUP
    runs: int = DEFAULT_RUNS

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown latency backend {self.backend!r}; valid backends: "
                            f"{', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise UserError(f"latency device must be cpu or cuda, got {self.device!r}")
        for name, low in (("batch_size", 1), ("threads", 1), ("warmup", 0), ("runs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"latency {name.replace('_', ' ')} must be an integer >= {low}, "
                                f"got {value!r}")
        if self.backend == "onnxruntime" and self.precision != "fp32":
            raise UserError(f"the onnxruntime backend measures fp32 only, got {self.precision}")
        if self.precision == "fp16" and self.device == "cpu":
            raise UserError("fp16 latency needs a CUDA device (CPUs run fp16 emulated); use "
                            "bf16 or fp32 on the CPU")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencySettings:
        return cls(**data)

    def describe(self) -> str:
        """The definition of the figure, with every setting, in one line."""
        where = "cuda" if self.device == "cuda" else (
            f"cpu, {self.threads} thread{'s' if self.threads > 1 else ''}")
        return (f"median of {self.runs} timed forwards after {self.warmup} warm-up, backend "
                f"{self.backend}, batch {self.batch_size}, {self.precision}, {where}")


def check_backend_available(settings: LatencySettings) -> None:
    """Refuse, in one line, a backend this machine cannot run (missing package, no CUDA)."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise UserError("latency on cuda was asked for but CUDA is not available here")
    if settings.backend == "onnxruntime":
        try:
            ort = importlib.import_module("onnxruntime")
            importlib.import_module("onnx")
        except ImportError:
            raise UserError("latency backend onnxruntime needs the [onnx] extra (onnx, "
                            f"onnxscript, onnxruntime): {ONNX_EXTRA}") from None
        if (settings.device == "cuda"
                and "CUDAExecutionProvider" not in ort.get_available_providers()):
            raise UserError("latency backend onnxruntime on cuda needs onnxruntime-gpu (this "
                            "onnxruntime has no CUDAExecutionProvider)")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device_sync(device: torch.device) -> Callable[[], None]:
    """What waits for `device`'s queued work before a clock is read (nothing on the CPU)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def median_ms(fn: Callable[[], Any], warmup: int, runs: int,
              sync: Callable[[], None] = lambda: None) -> float:
    """The figure: median wall milliseconds of `runs` calls after `warmup` untimed ones (Python's
    garbage collector held off meanwhile, so no run times a collection)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    finally:
        if enabled:
            gc.enable()
    return 1e3 * statistics.median(times)


class LatencyBackend:
    """Times modules under one `LatencySettings`; `measure` is the one entry point."""

    def __init__(self, settings: LatencySettings,
                 quiet: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
                 ) -> None:
        """`quiet` (optional) is entered around each warm-up and timed runs only, not around
        building, exporting or compiling (benchmarks pause other work on the machine there)."""
        check_backend_available(settings)
        self.settings = settings
        self.quiet = quiet or contextlib.nullcontext

    @property
    def name(self) -> str:
        return self.settings.backend

    def measure(self, module: nn.Module, input_shape: tuple[int, ...]) -> float:
        """Milliseconds per forward of `module` on a batch of `input_shape` (per image,
        without the batch dimension), as the module docstring defines."""
        s = self.settings
        device = torch.device(s.device)
        module = module.to(device).eval()
        x = torch.randn(s.batch_size, *input_shape, device=device)
        with torch_threads(s.threads), torch.inference_mode():
            if s.backend == "onnxruntime":
                return self._measure_onnx(module, x)
            if s.backend == "compile":
                # A fresh compiler state per module: Dynamo stops compiling a forward after a
                # few recompiles (many blocks share `Bottleneck.forward`) and would silently
                # time eager code instead.
                torch.compiler.reset()
            fn = torch.compile(module) if s.backend == "compile" else module
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.precision)
            autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                        else contextlib.nullcontext())
            sync = device_sync(device)
            with autocast:
                if s.backend == "compile":
                    fn(x)  # compiles here, never inside the warm-up count or the timed runs
                with self.quiet():
                    return median_ms(lambda: fn(x), s.warmup, s.runs, sync)

    def measure_spec(self, spec: SpecLike, image_size: int) -> float:
        """Milliseconds per forward of the whole network `spec` builds (seeded weights)."""
        resolved = resolve_spec(spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(resolved)
        return self.measure(model, (resolved.in_channels, image_size, image_size))

    def _measure_onnx(self, module: nn.Module, x: torch.Tensor) -> float:
        ort = importlib.import_module("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.settings.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = (["CUDAExecutionProvider"] if self.settings.device == "cuda"
                     else ["CPUExecutionProvider"])
        # A file, not bytes: networks over 2 GiB keep their weights beside it (external data).
        with tempfile.TemporaryDirectory(prefix="latency-onnx-") as directory:
            path = str(Path(directory) / "model.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module.cpu(), (x.cpu(),), path, dynamo=False,
                                  input_names=["input"], opset_version=17)
            session = ort.InferenceSession(path, options, providers=providers)
        name = session.get_inputs()[0].name
        if self.settings.device == "cuda":  # input bound on the GPU: no host copy is timed
            on_gpu = x.contiguous().cuda()  # kept alive while the binding points at it
            binding = session.io_binding()
            binding.bind_input(name, "cuda", 0, "float32", tuple(on_gpu.shape),
                               on_gpu.data_ptr())
            binding.bind_output(session.get_outputs()[0].name, "cuda")
            with self.quiet():
                return median_ms(lambda: session.run_with_iobinding(binding),
                                 self.settings.warmup, self.settings.runs)
        feed = {name: x.cpu().numpy()}
        with self.quiet():
            return median_ms(lambda: session.run(None, feed), self.settings.warmup,
                             self.settings.runs)


def make_backend(backend: str = "torch", **settings: Any) -> LatencyBackend:
    """A backend by name with its settings (see `LatencySettings`); bad ones are UserErrors."""
    return LatencyBackend(LatencySettings(backend=backend, **settings))


__all__ = ["BACKENDS", "LatencyBackend", "LatencySettings", "device_sync", "make_backend",
           "median_ms"]
