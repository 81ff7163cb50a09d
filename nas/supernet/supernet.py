"""The elastic split-attention supernet: one module whose sub-networks are a space's architectures.

Weight families. Radix 0, 1 and >= 2 compute different functions after the 3x3 conv: radix 0
feeds BN -> ReLU straight to conv3; radix 1 scales every channel by a sigmoid gate in (0, 1);
radix >= 2 mixes r candidate maps by a softmax over the splits. A conv1/3x3/conv3 trained for one
of these sees differently scaled and differently distributed activations in the others, so each
block position holds one branch per family (`plain`, `sigmoid`, `softmax`: conv1, bn1, the 3x3
or split attention, conv3, bn3) and the families share what sees the same tensors whichever
family a block uses: the stem, every shortcut (downsample) and the classifier. Within the softmax
family radix 2 and 4 are one function form, so they share weights: radix r takes the first r
splits and the softmax runs over those r. This is the "few-shot" split of a supernet into
sub-supernets, at the axis where the function changes.

Elastic axes (per stage): depth takes the first D blocks; cardinality the first k groups of a
grouped conv stored once per group (a larger group count takes more diagonal blocks); width the
first channels of each group (groups stay aligned across widths); radix the family, then the
first r splits. `nas.supernet.layout` gives the exact tensor layout, `nas.supernet.importance`
orders each group's channels by importance so that prefixes keep the most important ones.
Fixed axes (one value per supernet): see `nas.supernet.config`.

The forward runs `nas.models.network.ResNeSt` itself (a structure-only copy on the meta device,
through `torch.func.functional_call`) on the sliced tensors, so a sub-network and its extracted
standalone network are one implementation. BatchNorm statistics are a sub-network's own: training
uses batch statistics and stores none; `nas.supernet.training.recalibrate_bn` estimates one
sub-network's statistics on training batches and stores them, and an eval forward of any other
sub-network is refused until it is recalibrated (`bn_spec` names the one calibrated).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from itertools import chain

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from nas.models.builder import build_model
from nas.models.network import EXPANSION, ResNeSt, make_shortcut, make_stem
from nas.supernet.branch import ElasticBranch
from nas.supernet.config import SupernetConfig
from nas.supernet.layout import bound_sizes, choice_sizes, family_of
from search_spaces.block_plan import BlockArgs, block_plan
from search_spaces.errors import UserError
from search_spaces.spec import ArchSpec, StageSpec

STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
TEMPLATE_CACHE = 64  # structure-only networks kept, most recently used first


def block_sizes(spec: ArchSpec, stage: int, row: BlockArgs) -> dict[str, int]:
    """Axis sizes of block `row` of stage `stage` of `spec` (from the block plan, the one map
    from spec to blocks)."""
    cardinality = spec.stages[stage].cardinality
    return choice_sizes(row.radix, cardinality, row.group_width // cardinality,
                        row.attn_width // cardinality, row.in_channels, row.planes * EXPANSION)


class ElasticBlock(nn.Module):
    """One block position: the shared shortcut and one branch per weight family."""

    def __init__(self, row: BlockArgs, families: dict[str, dict[str, int]], zero_init_last: bool,
                 generator: torch.Generator) -> None:
        super().__init__()
        out_channels = row.planes * EXPANSION
        self.downsample: nn.Module = nn.Identity()
        if row.stride != 1 or row.in_channels != out_channels:
            self.downsample = make_shortcut(row.in_channels, out_channels, row.stride,
                                            row.avg_down)
        self.branches = nn.ModuleDict({
            family: ElasticBranch(family, bounds, zero_init_last, generator)
            for family, bounds in families.items()})


class Supernet(nn.Module):
    """Every architecture `config` covers, with shared weights. `forward(x, spec)` runs one;
    `extract(spec)` gives its standalone state dict for `build_model(spec)`."""

    def __init__(self, config: SupernetConfig | None = None, seed: int = 0,
                 zero_init_last: bool = True) -> None:
        super().__init__()
        self.config = config = config if config is not None else SupernetConfig()
        generator = torch.Generator().manual_seed(seed)
        largest = config.largest()
        self.conv1, self.bn1, _ = make_stem(config.stem, config.stem_width, config.in_channels,
                                            config.input_regime)
        for i, rows in enumerate(block_plan(largest)):
            families = _family_bounds(config, largest, i)
            blocks = [ElasticBlock(row, families[j], zero_init_last, generator)
                      for j, row in enumerate(rows)]
            self.add_module(f"layer{i + 1}", nn.ModuleList(blocks))
        self.fc = nn.Linear(largest.feature_channels, config.num_classes)
        _init_shared(self, generator)
        self.bn_spec: ArchSpec | None = None  # the sub-network whose BN statistics are stored
        self._templates: OrderedDict[ArchSpec, tuple[ResNeSt, dict[str, torch.Size]]] = (
            OrderedDict())

    # Coverage
    def covers(self, spec: ArchSpec) -> list[str]:
        """Each way `spec` lies outside this supernet (field, value, what is supported); empty
        when covered."""
        if not isinstance(spec, ArchSpec):
            return [f"expected an ArchSpec, got {type(spec).__name__}"]
        return self.config.violations(spec)

    def check(self, spec: ArchSpec) -> ArchSpec:
        """`spec`, or a UserError naming every field that lies outside this supernet."""
        if problems := self.covers(spec):
            tag = spec.tag if isinstance(spec, ArchSpec) else repr(spec)
            raise UserError(f"architecture {tag} is outside this supernet: {'; '.join(problems)}")
        return spec

    def largest(self) -> ArchSpec:
        return self.config.largest()

    def smallest(self) -> ArchSpec:
        return self.config.smallest()

    def sample_covered(self, rng: np.random.Generator) -> ArchSpec:
        """A covered architecture drawn from a numpy `Generator` (one uniform choice per axis)."""
        return self.config.sample(rng)

    # Running a sub-network
    def forward(self, x: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
        template, shapes = self._template(self.check(spec))
        if self.training:
            self.bn_spec = None  # weights are about to change: stored statistics go stale
        elif spec != self.bn_spec:
            calibrated = "none" if self.bn_spec is None else self.bn_spec.tag
            raise UserError(f"BN statistics are stored for {calibrated}, not {spec.tag}: run "
                            "nas.supernet.recalibrate_bn(supernet, spec, batches) first")
        template.train(self.training)
        state = self.tensors(spec, shapes)
        if self.training:  # train mode normalises by the batch; keep stored statistics as they are
            state = {k: v.clone() if k.endswith(STAT_SUFFIXES) else v for k, v in state.items()}
        return functional_call(template, state, (x,), strict=True)

    def tensors(self, spec: ArchSpec, shapes: Mapping[str, torch.Size] | None = None
                ) -> dict[str, torch.Tensor]:
        """The sub-network's parameters and statistics under the standalone network's names and
        in its order, sharing storage (or, for partial slices, autograd) with the supernet."""
        spec = self.check(spec)
        if shapes is None:
            shapes = self._template(spec)[1]
        state = {**_own(self.conv1, "conv1"), **_own(self.bn1, "bn1"), **_own(self.fc, "fc")}
        for prefix, block, branch, sizes in self._blocks(spec):
            state.update(_own(block.downsample, prefix + "downsample"))
            state.update(branch.gather(sizes, shapes, prefix))
        return {name: state[name] for name in shapes}  # the standalone state dict's order

    def extract(self, spec: ArchSpec) -> tuple[ArchSpec, dict[str, torch.Tensor]]:
        """`spec` and a copy of its inherited weights and stored BN statistics, which load into
        `nas.models.build_model(spec)` with `strict=True`."""
        state = self.tensors(spec)
        return spec, {k: v.detach().clone().contiguous() for k, v in state.items()}

    def extract_model(self, spec: ArchSpec) -> ResNeSt:
        """`build_model(spec)` holding the inherited weights, in eval mode."""
        spec, state = self.extract(spec)
        model = build_model(spec).to(self.fc.weight.device)
        model.load_state_dict(state, strict=True)
        return model.eval()

    @torch.no_grad()
    def load_bn_statistics(self, spec: ArchSpec, state: Mapping[str, torch.Tensor]) -> None:
        """Store `spec`'s BN statistics from a standalone state dict (after recalibration)."""
        spec = self.check(spec)
        shared = [(self.conv1, "conv1."), (self.bn1, "bn1.")]
        for prefix, block, branch, sizes in self._blocks(spec):
            shared.append((block.downsample, prefix + "downsample."))
            branch.write_buffers(sizes, state, prefix)
        for module, prefix in shared:
            for name, buffer in module.named_buffers():
                buffer.copy_(state[prefix + name])
        self.bn_spec = spec

    def usage(self, spec: ArchSpec) -> dict[str, torch.Tensor]:
        """For every parameter (by `named_parameters` name), a bool mask of the entries `spec`
        uses: its gradient is zero elsewhere."""
        masks = {name: torch.zeros(p.shape, dtype=torch.bool, device=p.device)
                 for name, p in self.named_parameters()}
        used = ["conv1.", "bn1.", "fc."]
        for prefix, _, branch, sizes in self._blocks(self.check(spec)):
            family = f"{prefix}branches.{branch.family}."
            used.append(prefix + "downsample.")
            masks.update({family + k: v for k, v in branch.usage(sizes).items()})
        for name in masks:
            if name.startswith(tuple(used)):
                masks[name].fill_(True)
        return masks

    def branches(self) -> Iterator[ElasticBranch]:
        """Every stored branch (all families, all block positions)."""
        return (m for m in self.modules() if isinstance(m, ElasticBranch))

    def _blocks(self, spec: ArchSpec) -> Iterator[tuple[str, ElasticBlock, ElasticBranch,
                                                         dict[str, int]]]:
        for i, rows in enumerate(block_plan(spec)):
            layer = getattr(self, f"layer{i + 1}")
            for j, row in enumerate(rows):
                block = layer[j]
                yield (f"layer{i + 1}.{j}.", block, block.branches[family_of(row.radix)],
                       block_sizes(spec, i, row))

    def _template(self, spec: ArchSpec) -> tuple[ResNeSt, dict[str, torch.Size]]:
        """The standalone network's structure for `spec`, without storage (meta device)."""
        if spec in self._templates:
            self._templates.move_to_end(spec)
            return self._templates[spec]
        plan = tuple(tuple(rows) for rows in block_plan(spec))
        with torch.device("meta"):
            template = ResNeSt(spec.stem, spec.stem_width, spec.in_channels, spec.input_regime,
                               plan, spec.dropout, spec.num_classes)
        entry = template, {k: v.shape for k, v in template.state_dict().items()}
        self._templates[spec] = entry
        if len(self._templates) > TEMPLATE_CACHE:
            self._templates.popitem(last=False)
        return entry


def _own(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A shared module's parameters and buffers under `prefix` (no copies)."""
    return {f"{prefix}.{name}": tensor
            for name, tensor in chain(module.named_parameters(), module.named_buffers())}


def _family_bounds(config: SupernetConfig, largest: ArchSpec, stage: int
                   ) -> list[dict[str, dict[str, int]]]:
    """Per block of stage `stage`: each family's stored axis sizes, the largest over every
    (radix, cardinality, width) the stage may take."""
    stages = list(largest.stages)
    per_block: list[dict[str, list[dict[str, int]]]] = [{} for _ in range(stages[stage].depth)]
    for radix, cardinality, width in config.stage_choices(stage):
        stages[stage] = StageSpec(stages[stage].depth, radix, cardinality, width)
        variant = largest.replace(stages=stages)
        for j, row in enumerate(block_plan(variant)[stage]):
            sizes = block_sizes(variant, stage, row)
            per_block[j].setdefault(family_of(radix), []).append(sizes)
    return [{family: bound_sizes(choices) for family, choices in families.items()}
            for families in per_block]


@torch.no_grad()
def _init_shared(supernet: Supernet, generator: torch.Generator) -> None:
    """timm's init for the shared modules, from `generator`: Kaiming-normal (fan_out) convs,
    BN gamma 1 / beta 0, and torch's default uniform init for the classifier."""
    for module in chain(supernet.conv1.modules(), supernet.bn1.modules(),
                        (m for b in supernet.modules() if isinstance(b, ElasticBlock)
                         for m in b.downsample.modules())):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu",
                                    generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    bound = supernet.fc.in_features ** -0.5
    nn.init.uniform_(supernet.fc.weight, -bound, bound, generator=generator)
    nn.init.uniform_(supernet.fc.bias, -bound, bound, generator=generator)
