"""One weight family of one block position: the stored tensors and their slicing (torch)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from nas.supernet.layout import (
    BATCHNORMS,
    BN_BUFFERS,
    WEIGHTS,
    numel,
    store_name,
)


def take(stored: torch.Tensor, axes: tuple[str, ...], sizes: Mapping[str, int]) -> torch.Tensor:
    """The first `sizes[axis]` entries of every axis: a view of `stored`."""
    return stored[tuple(slice(0, sizes[a]) for a in axes)]


class ElasticBranch(nn.Module):
    """conv1/bn1, the 3x3 (plain or split attention) and conv3/bn3 of one family at one block
    position, stored at the family's largest sizes (`bounds`) with named axes (`layout`)."""

    def __init__(self, family: str, bounds: dict[str, int], zero_init_last: bool,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.family = family
        self.bounds = dict(bounds)
        self.axes: dict[str, tuple[str, ...]] = {}  # standalone name -> axes of its storage
        for weight in WEIGHTS[family]:
            tensor = torch.zeros(tuple(bounds[a] for a in weight.axes))
            if weight.fan_out:  # timm's init: Kaiming normal, fan_out
                std = math.sqrt(2.0 / numel(weight.fan_out, bounds))
                nn.init.normal_(tensor, 0.0, std, generator=generator)
            self._add(weight.name, weight.axes, nn.Parameter(tensor))
        for bn, axes in BATCHNORMS[family]:
            shape = tuple(bounds[a] for a in axes)
            gamma = 0.0 if (bn == "bn3" and zero_init_last) else 1.0
            self._add(f"{bn}.weight", axes, nn.Parameter(torch.full(shape, gamma)))
            self._add(f"{bn}.bias", axes, nn.Parameter(torch.zeros(shape)))
            self._add(f"{bn}.running_mean", axes, torch.zeros(shape))
            self._add(f"{bn}.running_var", axes, torch.ones(shape))
            self._add(f"{bn}.num_batches_tracked", (), torch.tensor(0, dtype=torch.long))

    def _add(self, name: str, axes: tuple[str, ...], tensor: torch.Tensor) -> None:
        self.axes[name] = axes
        if isinstance(tensor, nn.Parameter):
            self.register_parameter(store_name(name), tensor)
        else:
            self.register_buffer(store_name(name), tensor)

    def stored(self, name: str) -> torch.Tensor:
        """The stored tensor behind standalone name `name`."""
        return getattr(self, store_name(name))

    def gather(self, sizes: Mapping[str, int], shapes: Mapping[str, torch.Size],
               prefix: str) -> dict[str, torch.Tensor]:
        """The sub-network's tensors, named and shaped as the standalone block (`shapes`), in
        contiguous memory as the standalone network holds them (a strided weight may send a conv
        to another kernel, which rounds differently)."""
        return {prefix + name:
                take(self.stored(name), axes, sizes).reshape(shapes[prefix + name]).contiguous()
                for name, axes in self.axes.items()}

    @torch.no_grad()
    def write_buffers(self, sizes: Mapping[str, int], state: Mapping[str, torch.Tensor],
                      prefix: str) -> None:
        """Store the sub-network's BN statistics from a standalone state dict."""
        for name, axes in self.axes.items():
            if name.rsplit(".", 1)[1] in (*BN_BUFFERS, "num_batches_tracked"):
                part = take(self.stored(name), axes, sizes)
                part.copy_(state[prefix + name].reshape(part.shape))

    def usage(self, sizes: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """For each stored parameter, a bool mask of the entries the sub-network uses."""
        params = dict(self.named_parameters(recurse=False))
        masks = {}
        for name, axes in self.axes.items():
            if store_name(name) in params:
                stored = self.stored(name)
                mask = torch.zeros(stored.shape, dtype=torch.bool, device=stored.device)
                take(mask, axes, sizes).fill_(True)
                masks[store_name(name)] = mask
        return masks

    @torch.no_grad()
    def permute(self, axis: str, groups: tuple[str, ...], order: torch.Tensor) -> None:
        """Reorder `axis` within each entry of the `groups` axes, in every stored tensor that has
        it (parameters and statistics alike): `order` has shape (*groups sizes, axis size), and
        entry j of a group becomes its old entry order[..., j]."""
        for name, axes in self.axes.items():
            if axis not in axes:
                continue
            stored = self.stored(name)
            dim = axes.index(axis)
            shape = [self.bounds[a] if a in groups or a == axis else 1 for a in axes]
            index = order.reshape(shape).expand(stored.shape)
            stored.copy_(torch.take_along_dim(stored, index, dim=dim))

    def l1(self, name: str, keep: tuple[str, ...]) -> torch.Tensor:
        """Sum of |weight| of stored tensor `name` over every axis not in `keep` (in its order)."""
        axes = self.axes[name]
        other = tuple(d for d, a in enumerate(axes) if a not in keep)
        return self.stored(name).detach().abs().sum(other)
