"""Build a latency table on the device at hand: time every distinct part of a space, fit the
constant on some whole networks and report the prediction's error on others."""

from __future__ import annotations

import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nas.latency.parts import Part, parts_of, space_parts
from nas.latency.table import LatencyTable, mape, spearman
from nas.models.latency import LatencyBackend
from search_spaces.resnest_space import ResNeStSpace
from search_spaces.spec import ArchSpec


def sample_networks(space: ResNeStSpace, count: int, seed: int, num_classes: int,
                    in_channels: int, image_size: int) -> list[ArchSpec]:
    """`count` distinct networks of the space (seeded), fitted to the task and input size."""
    rng = np.random.default_rng(seed)
    out: dict[str, ArchSpec] = {}
    for _ in range(100 * count + 100):
        if len(out) == count:
            break
        spec = space.sample(rng).replace(num_classes=num_classes, in_channels=in_channels)
        if spec.min_image_size <= image_size:
            out.setdefault(spec.spec_hash, spec)
    return list(out.values())


def machine() -> dict[str, str]:
    """Where the table was measured (recorded in it)."""
    info = {"host": socket.gethostname(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": sys.version.split()[0], "torch": torch.__version__}
    try:
        import onnxruntime  # optional extra: recorded when present

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def profile(space: ResNeStSpace, space_name: str, image_size: int, num_classes: int,
            in_channels: int, backend: LatencyBackend, *, fit: int, validate: int, seed: int,
            only_sampled: bool = False, log: Callable[[str], None] = print) -> LatencyTable:
    """Measure the parts (all the space can produce, or with `only_sampled` those of the sampled
    networks), `fit` networks for the constant and `validate` held-out networks."""
    networks = sample_networks(space, fit + validate, seed, num_classes, in_channels, image_size)
    fit_set, val_set = networks[:fit], networks[fit:]
    if only_sampled:
        wanted = {p.key: p for spec in networks for p in parts_of(spec, image_size)}
    else:
        wanted = space_parts(space, image_size, num_classes, in_channels)
    log(f"profiling {len(wanted)} parts of space {space_name} (preset {space.preset.name}) at "
        f"{image_size} px, then {len(fit_set)} + {len(val_set)} whole networks: "
        f"{backend.settings.describe()}")
    overhead = backend.measure(nn.Identity(), (in_channels, image_size, image_size))
    parts: dict[str, float] = {}
    started = time.monotonic()
    for index, (key, part) in enumerate(sorted(wanted.items()), start=1):
        parts[key] = _measure_part(backend, part) - overhead
        if index % 200 == 0 or index == len(wanted):
            log(f"  {index}/{len(wanted)} parts, {time.monotonic() - started:.0f} s")
    sums = {id(s): sum(parts[p.key] for p in parts_of(s, image_size)) for s in networks}
    fitted = [_network(backend, s, image_size, sums[id(s)]) for s in fit_set]
    constant = statistics.median(r["measured_ms"] - r["parts_ms"] for r in fitted) if fitted \
        else 0.0
    held = [_network(backend, s, image_size, sums[id(s)]) for s in val_set]
    for r in held:
        r["predicted_ms"] = constant + r["parts_ms"]
    validation = {"networks": held}
    if len(held) >= 2:
        measured = [r["measured_ms"] for r in held]
        predicted = [r["predicted_ms"] for r in held]
        validation.update(mape_percent=mape(measured, predicted),
                          spearman=spearman(measured, predicted))
    return LatencyTable(
        space=space_name, preset=space.preset.name, image_size=image_size,
        num_classes=num_classes, in_channels=in_channels, settings=backend.settings,
        parts=parts, overhead_ms=overhead, constant_ms=float(constant),
        complete=not only_sampled, machine=machine(), fit=tuple(fitted), validation=validation,
    )


def _measure_part(backend: LatencyBackend, part: Part) -> float:
    return backend.measure(part.build(), part.input_shape)


def _network(backend: LatencyBackend, spec: ArchSpec, image_size: int,
             parts_ms: float) -> dict[str, object]:
    return {"spec": spec.to_json(), "tag": spec.tag, "parts_ms": parts_ms,
            "measured_ms": backend.measure_spec(spec, image_size)}
