"""``ghost_vision.deploy.optimize``: same outputs (within 1e-4) as the plain model, for every builder."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ghost_vision.deploy import (
    FastGhostBottleneck,
    FusedGhostModule,
    fold_bn,
    optimize,
    unfused_batchnorms,
)
from ghost_vision.models import create_ghostnet
from ghost_vision.models.layers import GhostBottleneck, GhostModule


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics, so that a wrong fold cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                n = m.num_features if hasattr(m, "num_features") else m.weight.numel()
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
    return model


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flatten(out[k])]
    return [t for o in out for t in _flatten(o)]


def _assert_close(ref, got, atol: float = 1e-4) -> None:
    ref, got = _flatten(ref), _flatten(got)
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        scale = max(1.0, a.abs().max().item())
        diff = (a - b).abs().max().item()
        assert diff <= atol * scale, f"max abs diff {diff:.3g} (output magnitude {scale:.3g})"


class _Both(nn.Module):
    """Runs the eager and the frozen-TorchScript fast paths and checks that they agree (to 1e-5)."""

    def __init__(self, eager: nn.Module, frozen: nn.Module) -> None:
        super().__init__()
        self.eager, self.frozen = eager, frozen

    def forward(self, *args):
        out, frozen = self.eager(*args), self.frozen(*args)
        if not (isinstance(out, list) and out and isinstance(out[0], dict)):  # detections: NMS ties may flip
            _assert_close(out, frozen, atol=1e-5)
        return out


def _pair(model: nn.Module, **kwargs) -> tuple[nn.Module, nn.Module]:
    """(plain model, fast path): the fast path's calls run both ``script=False`` and ``script=True``."""
    model = _randomize_bn(model).eval()
    eager = optimize(model, script=False, **kwargs)
    assert unfused_batchnorms(eager) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every part of every builder must script (no eager fallback)
        frozen = optimize(model, **kwargs)
    assert any(isinstance(m, torch.jit.ScriptModule) for m in [frozen, *frozen.modules()])
    for name in ("backbone", "head"):  # detectors: the Python model stays, its network parts are frozen
        if hasattr(eager, name) and hasattr(eager, "transform"):
            assert isinstance(getattr(frozen, name), torch.jit.ScriptModule), name
    return model, _Both(eager, frozen)


def _builder(module: str, name: str):
    mod = pytest.importorskip(module)
    if not hasattr(mod, name):
        pytest.skip(f"{module}.{name} is not on main yet")
    return getattr(mod, name)


@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnetv2_100", "ghostnet_050"])
@pytest.mark.parametrize("batch", [1, 2])
def test_classifier(name: str, batch: int) -> None:
    model, fast = _pair(create_ghostnet(name, num_classes=10))
    x = torch.rand(batch, 3, 96, 128)
    with torch.inference_mode():
        _assert_close(model(x), fast(x))


@pytest.mark.parametrize(
    "kwargs",
    [dict(out_indices=(0, 1, 2, 3, 4)), dict(output_stride=8), dict(output_stride=16, frozen_stages=2)],
)
@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnetv2_100"])
def test_features(name: str, kwargs: dict) -> None:
    model, fast = _pair(create_ghostnet(name, features_only=True, **kwargs))
    x = torch.rand(1, 3, 97, 131)  # odd size: padding and ceil modes
    with torch.inference_mode():
        _assert_close(model(x), fast(x))
    assert any(isinstance(m, FastGhostBottleneck) for m in fast.eager.modules())
    assert not any(type(m) is GhostModule for m in fast.eager.modules())


@pytest.mark.parametrize("channels_last,fold_se", [(False, False), (True, True), (False, True)])
def test_options(channels_last: bool, fold_se: bool) -> None:
    model, fast = _pair(create_ghostnet("ghostnet_100"), channels_last=channels_last, fold_se=fold_se)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        _assert_close(model(x), fast(x))
    assert fast.eager.conv_stem.weight.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_odd_width_and_standalone_modules() -> None:
    """Odd Ghost widths take the slice path; fused modules keep the GhostModule contract."""
    block = _randomize_bn(GhostBottleneck(13, 27, 17, 3, stride=2, se_ratio=0.25)).eval()
    holder = nn.Sequential(block).eval()
    fast = optimize(holder, channels_last=False, script=False)
    assert isinstance(fast[0], GhostBottleneck) and isinstance(fast[0].ghost1, FusedGhostModule)
    x = torch.rand(2, 13, 15, 15)
    with torch.inference_mode():
        _assert_close(block(x), fast(x))
        _assert_close(block.ghost1(x), fast[0].ghost1(x))
        mid = block.ghost1(x)
        _assert_close(block.forward_from_expansion(x, mid), fast[0].forward_from_expansion(x, mid))


def test_fold_bn_frozen_and_plain() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    for bn in (nn.BatchNorm2d(6), FrozenBatchNorm2d(6)):
        _randomize_bn(nn.Sequential(bn)).eval()
        x = torch.rand(2, 4, 9, 9)
        with torch.no_grad():
            torch.testing.assert_close(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_training_mode_raises_and_copy_semantics() -> None:
    model = create_ghostnet("ghostnet_050")
    with pytest.raises(RuntimeError, match="eval"):
        optimize(model)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize(model)
    assert fast is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert optimize(model, inplace=True, script=False) is model
    assert unfused_batchnorms(model) == []


def test_frozen_batchnorm_fpn_backbone() -> None:
    build = _builder("ghost_vision.models.detection", "ghostnet_fpn_backbone")
    model, fast = _pair(build("ghostnet_100", norm_layer=FrozenBatchNorm2d))
    x = torch.rand(1, 3, 128, 160)
    with torch.inference_mode():
        _assert_close(model(x), fast(x))


DETECTORS = ["ssdlite320_ghostnet", "fasterrcnn_ghostnet_fpn", "retinanet_ghostnet_fpn", "fcos_ghostnet_fpn"]


def _detector_network_outputs(model: nn.Module, x: torch.Tensor):
    """Backbone maps and head outputs (before decoding/NMS, whose selections may flip on ties)."""
    feats = model.backbone(x)
    feat_list = list(feats.values())
    if hasattr(model, "rpn"):  # Faster R-CNN
        objectness, deltas = model.rpn.head(feat_list)
        return [feat_list, objectness, deltas]
    return [feat_list, model.head(feat_list)]


@pytest.mark.parametrize("name", DETECTORS)
def test_detectors(name: str) -> None:
    build = _builder("ghost_vision.models.detection", name)
    kwargs = {} if name.startswith("ssd") else {"min_size": 320, "max_size": 320}
    model, fast = _pair(build(num_classes=5, **kwargs))
    x = torch.rand(1, 3, 320, 320)
    with torch.inference_mode():
        ref = _detector_network_outputs(model, x)
        _assert_close(ref, _detector_network_outputs(fast.eager, x))
        _assert_close(ref, _detector_network_outputs(fast.frozen, x))
        dets = fast([torch.rand(3, 300, 340)])
    assert set(dets[0]) >= {"boxes", "labels", "scores"}


@pytest.mark.parametrize("name", ["deeplabv3_ghostnet", "lraspp_ghostnet"])
def test_segmentation(name: str) -> None:
    build = _builder("ghost_vision.models.segmentation", name)
    kwargs = {"aux_loss": True} if name.startswith("deeplab") else {}
    model, fast = _pair(build(num_classes=4, **kwargs))
    x = torch.rand(1, 3, 128, 256)
    with torch.inference_mode():
        _assert_close(model(x), fast(x))


def test_every_public_builder_is_covered() -> None:
    """New detection/segmentation builders must be added to the parametrizations above."""
    covered = set(DETECTORS) | {"ghostnet_fpn_backbone", "deeplabv3_ghostnet", "lraspp_ghostnet"}
    # their fast-path tests sit with the models: predictions (boxes, scores, masks) of optimize() vs eager
    covered |= {"maskrcnn_ghostnet_fpn",  # tests/models/test_maskrcnn.py::test_fast_path_predicts_the_same_boxes_and_masks
                "nanodet_plus_ghostnet"}  # tests/models/test_nanodet.py::test_fast_path_matches_eager
    for module in ("ghost_vision.models.detection", "ghost_vision.models.segmentation"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        builders = {n for n in getattr(mod, "__all__", []) if n.islower() and "ghostnet" in n}
        assert builders <= covered, f"builders without an optimize() test: {sorted(builders - covered)}"


def test_v2_projection_is_refused() -> None:
    """The concat-free projection needs a plain ghost2; a hand-assembled v2 one gets a clear error."""
    from ghost_vision.models.layers import GhostModuleV2

    block = GhostBottleneck(16, 32, 16, 3)
    block.ghost2 = GhostModuleV2(32, 16, use_act=False)
    with pytest.raises(TypeError, match="DFC attention needs the whole expansion"):
        FastGhostBottleneck(block.eval())
