"""The backbone API (timm's names and meaning): `forward_features`, `forward_head`, `num_classes=0`,
`features_only` with `out_indices` and `feature_info`, in the builder and in the exported module;
the exported file, imported without this project, drives torchvision's FPN and Faster R-CNN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nas.export.codegen import generate_source
from nas.export.verify import PROJECT_PACKAGES, import_file
from nas.models import network
from nas.models.builder import build_model, load_weights
from search_spaces import ArchSpec, StageSpec
from search_spaces.errors import UserError

torchvision = pytest.importorskip("torchvision")  # a test extra; the export never needs it
from torchvision.models.detection.backbone_utils import BackboneWithFPN  # noqa: E402

REGIMES = {"small": 32, "imagenet": 64}  # input side: a multiple of each regime's total stride


def _spec(regime: str, stages: int = 4, **kw: object) -> ArchSpec:
    base = {"stem_width": 8, "base_planes": 16, "attn_min_width": 8, "num_classes": 5,
            "in_channels": 3, "input_regime": regime}
    return ArchSpec(stages=(StageSpec(1, 2, 1, 16),) * stages, **{**base, **kw})


def _randomize(model: torch.nn.Module) -> None:
    """Random BN affines and statistics, so no residual branch starts as a zero."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _input(spec: ArchSpec, side: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, spec.in_channels, side, side,
                       generator=torch.Generator().manual_seed(0))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The builder ----------------------------------------------------------------------------------
@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("stages", [2, 4])
def test_feature_maps_match_feature_info(regime: str, stages: int, one_thread: None) -> None:
    """timm's meaning: index 0 is the stem's activation (reduction 2, or 1 in the small regime),
    index i the output of layer i; shapes follow channels and reductions exactly."""
    spec = _spec(regime, stages)
    side = REGIMES[regime]
    model = build_model(spec, features_only=True).eval()
    info = model.feature_info
    assert info.module_name() == ["act1"] + [f"layer{i + 1}" for i in range(stages)]
    stem = 2 if regime == "imagenet" else 1
    assert info.reduction() == [stem] + [stem * stem * 2**i for i in range(stages)]
    assert info.channels() == [2 * spec.stem_width] + [
        spec.stage_planes(i) * 4 for i in range(stages)]
    with torch.no_grad():
        maps = model(_input(spec, side))
    assert [tuple(m.shape) for m in maps] == [
        (2, c, side // r, side // r) for c, r in zip(info.channels(), info.reduction(),
                                                    strict=True)]
    classifier = build_model(spec)
    assert classifier.feature_info == info and classifier.num_features == info.channels(-1)


@pytest.mark.parametrize("out_indices", [None, (1, 2, 3, 4), (0, 3)])
def test_features_only_is_timms(out_indices: tuple[int, ...] | None, one_thread: None) -> None:
    """timm's own features_only ResNeSt: the same feature_info (channels, reductions, module
    names), its weights load strictly, the same maps."""
    timm = pytest.importorskip("timm")
    kwargs = {} if out_indices is None else {"out_indices": out_indices}
    torch.manual_seed(0)
    theirs = timm.create_model("resnest14d", pretrained=False, features_only=True, **kwargs)
    _randomize(theirs)
    ours = build_model("resnest14d", features_only=True, out_indices=out_indices)
    assert ours.feature_info.channels() == theirs.feature_info.channels()
    assert ours.feature_info.reduction() == theirs.feature_info.reduction()
    assert ours.feature_info.module_name() == theirs.feature_info.module_name()
    assert load_weights(ours, theirs.state_dict()) == []
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pairs = list(zip(ours.eval()(x), theirs.eval()(x), strict=True))
    assert all((a - b).abs().max().item() <= 1e-5 for a, b in pairs)


def test_out_indices_select_maps_in_network_order(one_thread: None) -> None:
    spec = _spec("imagenet")
    full = build_model(spec, features_only=True).eval()
    _randomize(full)
    part = build_model(spec, features_only=True, out_indices=(-1, 1)).eval()
    assert part.out_indices == (1, 4)
    assert load_weights(part, full.state_dict()) == []
    assert part.feature_info == [full.feature_info[1], full.feature_info[4]]
    x = _input(spec, 64)
    with torch.no_grad():
        everything, chosen = full(x), part(x)
    assert len(chosen) == 2
    assert torch.equal(chosen[0], everything[1]) and torch.equal(chosen[1], everything[4])
    # As in timm, no stage after the last map is kept; a classifier's weights still load.
    early = build_model(spec, features_only=True, out_indices=(0, 2)).eval()
    assert not [k for k in early.state_dict() if k.startswith(("layer3.", "layer4."))]
    classifier = build_model(spec)
    classifier.load_state_dict(full.state_dict(), strict=False)
    assert load_weights(early, classifier.state_dict()) == []
    with torch.no_grad():
        first, second = early(x)
    assert torch.equal(first, everything[0]) and torch.equal(second, everything[2])


def test_forward_is_features_then_head(one_thread: None) -> None:
    spec = _spec("small", dropout=0.1)
    model = build_model(spec).eval()
    _randomize(model)
    x = _input(spec, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.equal(model.forward_head(features), logits)
    assert features.shape == (2, model.num_features, 4, 4)
    assert pooled.shape == (2, model.num_features) and logits.shape == (2, spec.num_classes)
    assert torch.allclose(model.fc(pooled), logits)
    headless = build_model(spec, num_classes=0).eval()  # timm: num_classes=0 drops the classifier
    assert not [k for k in headless.state_dict() if k.startswith("fc.")]
    assert load_weights(headless, model.state_dict()) == []
    with torch.no_grad():
        assert torch.equal(headless(x), pooled)


def test_features_equal_the_classifiers_intermediate_layers(one_thread: None) -> None:
    """`feature_info`'s module names are the classifier's children: the layer getter of
    torchvision's BackboneWithFPN (its `body`) returns the same maps, bit for bit."""
    spec = _spec("imagenet")
    classifier = build_model(spec).eval()
    _randomize(classifier)
    features = build_model(spec, features_only=True).eval()
    assert load_weights(features, classifier.state_dict()) == []
    info = features.feature_info
    layers = {name: str(i) for i, name in enumerate(info.module_name())}
    getter = BackboneWithFPN(classifier, layers, info.channels(), out_channels=8).body
    x = _input(spec, 64)
    with torch.no_grad():
        ours, theirs = features(x), list(getter(x).values())
    assert len(ours) == len(theirs) == 5
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("out_indices, problem", [
    ((5,), "index 5 does not exist"),
    ((0, -6), "index -6 does not exist"),
    (("1",), "index '1' does not exist"),
    ((True,), "index True does not exist"),
    ((), "no index given"),
    ((1, -4), "an index repeats"),
])
def test_bad_out_indices_are_one_clear_error(out_indices: tuple, problem: str) -> None:
    expected = (f"out_indices {out_indices!r}: {problem}; this network has feature maps 0 (stem) "
                "to 4 (layer4)")
    with pytest.raises(UserError) as raised:
        build_model(_spec("small"), features_only=True, out_indices=out_indices)
    assert str(raised.value) == expected
    with pytest.raises(ValueError) as raised:  # the torch-only module: a ValueError
        network.feature_indices(5, out_indices)
    assert str(raised.value) == expected


def test_builder_refuses_mixed_arguments() -> None:
    with pytest.raises(UserError, match="pass features_only=True"):
        build_model(_spec("small"), out_indices=(1,))
    with pytest.raises(UserError, match="num_classes does not apply"):
        build_model(_spec("small"), num_classes=3, features_only=True)


def test_weights_of_another_architecture_name_the_first_misfit() -> None:
    small = build_model(_spec("small"))
    wider = build_model(_spec("small", stem_width=16))
    with pytest.raises(UserError, match=r"do not fit architecture .*: tensor conv1\.0\.weight has "
                                        r"shape \(8, 3, 3, 3\) in the weights but \(16, 3, 3, 3\)"):
        load_weights(wider, small.state_dict())
    shallow = build_model(_spec("small", stages=3))
    with pytest.raises(UserError, match="the weights have no tensor layer4.0.conv1.weight"):
        load_weights(small, shallow.state_dict())
    with pytest.raises(UserError, match="hold tensor layer4.0.conv1.weight, which this network"):
        load_weights(build_model(_spec("small", stages=3), features_only=True),
                     small.state_dict())
    other_head = build_model(_spec("small"), num_classes=3)
    assert load_weights(other_head, small.state_dict()) == ["fc.weight", "fc.bias"]
    assert torch.equal(other_head.conv1[0].weight, small.conv1[0].weight)


# The exported module --------------------------------------------------------------------------
def _write_export(spec: ArchSpec, directory: Path, name: str) -> tuple[Path, dict]:
    """A generated module and its weights (random BN), as `nas.export` writes them."""
    torch.manual_seed(0)
    model = build_model(spec)
    _randomize(model)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / f"{name}.safetensors"),
              metadata={"spec": spec.to_json()})
    side = REGIMES[spec.input_regime]
    source = generate_source(spec, weights_file=f"{name}.safetensors",
                             preprocessing={"image_size": side, "mean": [0.5] * 3,
                                            "std": [0.25] * 3})
    path = directory / f"{name}.py"
    path.write_text(source)
    return path, weights


def test_exported_build_gives_the_builders_backbone(tmp_path: Path, one_thread: None) -> None:
    spec = _spec("imagenet")
    path, weights = _write_export(spec, tmp_path, "exp_backbone")
    module = import_file(path)
    reference = build_model(spec, features_only=True, out_indices=(2, 3, 4)).eval()
    load_weights(reference, weights)
    exported = module.build(pretrained=True, features_only=True, out_indices=(2, 3, 4)).eval()
    assert list(exported.state_dict()) == list(reference.state_dict())
    assert exported.feature_info == reference.feature_info
    x = _input(spec, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(exported(x), reference(x), strict=True))
    with pytest.raises(ValueError, match=r"index 9 does not exist; this network has feature maps "
                                         r"0 \(stem\) to 4 \(layer4\)"):
        module.build(features_only=True, out_indices=(9,))


# Runs in a fresh interpreter that refuses this project's packages: argv = module directory,
# module name, input side. Prints one JSON line of what it checked.
DETECTION = """
import importlib.abc, json, os, sys
from collections import OrderedDict

class RefuseProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the exported module tried to import {name} from resnest-nas")
        return None

BLOCKED = set(sys.argv[4].split(","))
sys.meta_path.insert(0, RefuseProject())
sys.path = [p for p in sys.path
            if not os.path.isfile(os.path.join(p or ".", "search_spaces", "spec.py"))]
directory, name, side = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, directory)
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FeaturePyramidNetwork

torch.manual_seed(0)
torch.set_num_threads(1)
module = __import__(name)
images = torch.rand(2, module.IN_CHANNELS, side, side)

# 1. features_only -> FeaturePyramidNetwork, forward and backward.
backbone = module.build(pretrained=True, features_only=True, out_indices=(1, 2, 3, 4)).train()
info = backbone.feature_info
maps = backbone(images)
shapes = [list(m.shape) for m in maps]
fpn = FeaturePyramidNetwork(info.channels(), out_channels=16)
pyramid = fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
sum(p.square().mean() for p in pyramid.values()).backward()
fpn_grad = backbone.conv1[0].weight.grad

# 2. The classifier through BackboneWithFPN (return layers from feature_info) in Faster R-CNN.
classifier = module.build(pretrained=True)
layers = {n: str(i) for i, n in enumerate(info.module_name())}
body = BackboneWithFPN(classifier, layers, info.channels(), out_channels=16)
detector = FasterRCNN(body, num_classes=3, min_size=side, max_size=side,
                      image_mean=[0.5] * module.IN_CHANNELS, image_std=[0.25] * module.IN_CHANNELS)
targets = [{"boxes": torch.tensor([[2.0, 3.0, side / 2, side / 2 + 4]]),
            "labels": torch.tensor([1])},
           {"boxes": torch.tensor([[side / 4, side / 4, side - 1.0, side - 2.0]]),
            "labels": torch.tensor([2])}]
losses = detector.train()(list(images), targets)
sum(losses.values()).backward()
rcnn_grad = classifier.conv1[0].weight.grad
detections = detector.eval()(list(images))
print(json.dumps({
    "shapes": shapes, "channels": info.channels(), "reductions": info.reduction(),
    "pyramid": {k: list(v.shape) for k, v in pyramid.items()},
    "fpn_grad": float(fpn_grad.abs().sum()), "rcnn_grad": float(rcnn_grad.abs().sum()),
    "losses": {k: float(v) for k, v in losses.items()},
    "detections": [sorted(d) for d in detections],
    "project_modules": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
}))
"""


@pytest.mark.parametrize("regime", list(REGIMES))
def test_exported_module_drives_torchvision_fpn_and_faster_rcnn(regime: str,
                                                                tmp_path: Path) -> None:
    """The exported file alone (no project package importable) feeds torchvision's
    FeaturePyramidNetwork and, through BackboneWithFPN, Faster R-CNN: forward and backward on
    random images, map shapes and reductions as `feature_info` says."""
    spec = _spec(regime)
    side = REGIMES[regime]
    name = f"exp_{regime}"
    module_dir = tmp_path / "export"
    module_dir.mkdir()
    _write_export(spec, module_dir, name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run([sys.executable, "-E", "-B", "-c", DETECTION, str(module_dir), name,
                           str(side), ",".join(PROJECT_PACKAGES)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["project_modules"] == []
    assert result["shapes"] == [[2, c, side // r, side // r] for c, r in
                                zip(result["channels"], result["reductions"], strict=True)]
    stem = 2 if regime == "imagenet" else 1
    assert result["reductions"] == [stem * stem * 2**i for i in range(4)]
    assert result["pyramid"] == {str(i): [2, 16] + shape[2:]
                                 for i, shape in enumerate(result["shapes"])}
    assert result["fpn_grad"] > 0 and result["rcnn_grad"] > 0
    assert set(result["losses"]) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                                     "loss_rpn_box_reg"}
    assert all(v == v and abs(v) < 1e6 for v in result["losses"].values())  # finite
    assert result["detections"] == [["boxes", "labels", "scores"]] * 2
