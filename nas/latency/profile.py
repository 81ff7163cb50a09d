"""Build a latency table on the device at hand: time every distinct part of a space, fit the
constant on some whole networks and report the prediction's error on others."""

from __future__ import annotations

import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator

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
            only_sampled: bool = False, passes: int = 1,
            log: Callable[[str], None] = print) -> LatencyTable:
    """Measure the parts (all the space can produce, or with `only_sampled` those of the sampled
    networks), `fit` networks for the constant and `validate` held-out networks. Each is timed
    in `passes` passes, each pass in a new seeded random order (so a burst of noise on the
    machine falls on unrelated parts), and its figure is the median over the passes."""
    networks = sample_networks(space, fit + validate, seed, num_classes, in_channels, image_size)
    fit_set, val_set = networks[:fit], networks[fit:]
    if only_sampled:
        wanted = {p.key: p for spec in networks for p in parts_of(spec, image_size)}
    else:
        wanted = space_parts(space, image_size, num_classes, in_channels)
    log(f"profiling {len(wanted)} parts of space {space_name} (preset {space.preset.name}) at "
        f"{image_size} px, then {len(fit_set)} + {len(val_set)} whole networks, {passes} "
        f"pass(es): {backend.settings.describe()}")
    rng = np.random.default_rng(seed)
    shape = (in_channels, image_size, image_size)
    overhead = statistics.median(backend.measure(nn.Identity(), shape) for _ in range(passes))
    timed: dict[str, list[float]] = {key: [] for key in wanted}
    started = time.monotonic()
    for done, key in enumerate(_passes(sorted(wanted), passes, rng), start=1):
        timed[key].append(_measure_part(backend, wanted[key]))
        if done % 500 == 0 or done == passes * len(wanted):
            log(f"  {done}/{passes * len(wanted)} part timings, {time.monotonic() - started:.0f} s")
    parts = {key: statistics.median(values) - overhead for key, values in timed.items()}
    whole: dict[int, list[float]] = {i: [] for i in range(len(networks))}
    for i in _passes(list(range(len(networks))), passes, rng):
        whole[i].append(backend.measure_spec(networks[i], image_size))
    rows = [{"spec": s.to_json(), "tag": s.tag,
             "parts_ms": sum(parts[p.key] for p in parts_of(s, image_size)),
             "measured_ms": statistics.median(whole[i])} for i, s in enumerate(networks)]
    fitted, held = rows[:fit], rows[fit:]
    constant = statistics.median(r["measured_ms"] - r["parts_ms"] for r in fitted) if fitted \
        else 0.0
    for r in held:
        r["predicted_ms"] = constant + r["parts_ms"]
    validation: dict[str, object] = {"networks": held, "passes": passes}
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


def _passes(items: list, passes: int, rng: np.random.Generator) -> Iterator:
    """Every item `passes` times: pass after pass, each in a new random order."""
    for _ in range(passes):
        for index in rng.permutation(len(items)):
            yield items[int(index)]


def _measure_part(backend: LatencyBackend, part: Part) -> float:
    return backend.measure(part.build(), part.input_shape)


