"""Training primitives of the supernet: the sandwich step and BN recalibration (no Ray here).

`sandwich_step` is BigNAS's rule: each step trains the largest sub-network on the labels, then
the smallest and `n_random` random covered ones, each on the largest's softened predictions
(in-place distillation; the teacher's outputs are detached), and applies one optimizer step to
the gradients of all of them. With the small preset the largest is all softmax (radix 4) and the
smallest all plain (radix 0), so the sigmoid family (radix 1) learns from the random draws only.
Progressive shrinking passes a `nas.supernet.shrink.Region`: the smallest and the random draws
are then that open part's. Randomness comes only from the numpy Generator passed in (and, if the
supernet's dropout is above 0, torch's default generator inside dropout).

`recalibrate_bn` re-estimates one sub-network's BatchNorm statistics on training batches: the
statistics are reset and averaged over all batches with equal weight (torch's cumulative moving
average, momentum=None) in train mode without gradients, then the model is put in eval mode.
Sub-networks evaluated with statistics that are not their own are the failure users of
OFA and SPOS report most.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.supernet.shrink import Region
from nas.supernet.supernet import Supernet
from search_spaces.errors import UserError
from search_spaces.spec import ArchSpec


@dataclass(frozen=True)
class SandwichResult:
    """The sub-networks one step trained (largest first) and each one's loss."""

    specs: tuple[ArchSpec, ...]
    losses: tuple[float, ...]


def sandwich_step(supernet: Supernet, batch: tuple[torch.Tensor, torch.Tensor],
                  optimizer: torch.optim.Optimizer, rng: np.random.Generator, n_random: int = 2,
                  distill: bool = True, region: Region | None = None) -> SandwichResult:
    """One optimizer step on the largest, the smallest and `n_random` random sub-networks; with
    a `region` (progressive shrinking) the smallest and the random ones are the region's.

    A child that is the largest again (progressive shrinking's first phase) is not run when it
    distils without dropout: its gradient would be zero. Their gradients are zero on every stored
    entry none of them uses; an optimizer with weight
    decay or momentum still moves such entries (within a tensor some sub-network used), plain SGD
    does not."""
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise UserError(f"n_random must be an integer >= 0, got {n_random!r}")
    if not isinstance(rng, np.random.Generator):
        raise UserError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    images, labels = batch
    supernet.train()
    optimizer.zero_grad(set_to_none=True)
    largest = supernet.largest()
    logits = supernet(images, largest)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    teacher = torch.softmax(logits.detach(), dim=1)
    if region is None:
        specs = [largest, supernet.smallest(), *(supernet.sample_covered(rng)
                                                  for _ in range(n_random))]
    else:
        specs = [largest, region.smallest(supernet.config),
                 *(region.sample(supernet.config, rng) for _ in range(n_random))]
    losses = [loss.item()]
    for spec in specs[1:]:
        if distill and spec == largest and supernet.config.dropout == 0:
            # The largest again (OFA's first phase): its logits are the teacher's and its
            # gradient zero (up to rounding), so it is not run; its loss is the same.
            losses.append(F.cross_entropy(logits.detach(), teacher).item())
            continue
        # Soft-target cross-entropy: the gradient of KL(teacher || student).
        child = F.cross_entropy(supernet(images, spec), teacher if distill else labels)
        child.backward()
        losses.append(child.item())
    optimizer.step()
    return SandwichResult(tuple(specs), tuple(losses))


def recalibrate_bn(target: Supernet | nn.Module, spec: ArchSpec | None,
                   batches: Iterable[Any]) -> None:
    """Re-estimate the BN statistics of `spec` in `target` (a Supernet; they are stored there for
    `spec` only) or of a standalone network (`spec` may be None), from `batches` (input tensors
    or (input, label) pairs). Leaves `target` in eval mode."""
    if isinstance(target, Supernet):
        if spec is None:
            raise UserError("recalibrate_bn on a supernet needs the spec to recalibrate")
        model = target.extract_model(spec)
        _recalibrate(model, batches)
        target.load_bn_statistics(spec, model.state_dict())
        target.eval()
        return
    if spec is not None and getattr(target, "spec", spec) != spec:
        raise UserError(f"this network is {target.spec.tag}, not {spec.tag}")
    _recalibrate(target, batches)


@torch.no_grad()
def _recalibrate(model: nn.Module, batches: Iterable[Any]) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()  # after every BN; keeps torch's global generator untouched
    count = 0
    try:
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            count += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    if count == 0:
        raise UserError("recalibrate_bn needs at least one batch")
