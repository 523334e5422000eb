"""GhostNetV3: timm 1.0.31 parity (training and deploy form), reparameterize, features, dilation, weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops.misc import FrozenBatchNorm2d

from ghost_vision.models import create_ghostnet, load_weights, reparameterize
from ghost_vision.models.layers import GhostBottleneck, GhostModule, GhostModuleV2
from ghost_vision.models.layers_v3 import GhostBottleneckV3, GhostModuleV3

timm = pytest.importorskip("timm")
if not hasattr(timm.models, "ghostnet") or "ghostnetv3_100" not in timm.list_models("ghostnetv3*"):
    pytest.skip("timm >= 1.0.31 (GhostNetV3) is needed as the oracle", allow_module_level=True)
from timm.utils.model import reparameterize_model  # noqa: E402

V3 = ["ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130", "ghostnetv3_160"]
LEVEL_CHANNELS = {0.5: [8, 12, 20, 56, 480], 1.0: [16, 24, 40, 112, 960]}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One intra-op thread (see conftest): the 2-core test machine is shared."""


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics in every BatchNorm (branch and skip BNs included) so that parity tests bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                n = m.weight.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(model: nn.Module, size: int = 224) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2


def _timm(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomize_bn(timm.create_model(name)).eval()


def test_variants_registered() -> None:
    from ghost_vision.models import VARIANTS, list_models

    assert [VARIANTS[n] for n in V3] == [(3, 0.5), (3, 1.0), (3, 1.3), (3, 1.6)]
    assert set(V3) <= set(list_models())


@pytest.mark.parametrize("name", ["ghostnetv3_050", pytest.param("ghostnetv3_100", marks=pytest.mark.slow)])
def test_timm_training_form_parity_and_reparameterize(name: str) -> None:
    ref = _timm(name)
    ours = create_ghostnet(name).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())  # same keys, same order
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
        assert ours.reparameterize() is ours
        assert not any(isinstance(m, (GhostModuleV3, GhostBottleneckV3)) for m in ours.modules())
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
        # timm's deploy form is the oracle for the fused weights themselves, key for key
        deploy = reparameterize_model(ref, inplace=False).state_dict()
        fused = ours.state_dict()
        assert set(fused) == set(deploy)
        for key, value in deploy.items():
            torch.testing.assert_close(fused[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ["ghostnetv3_050", *(pytest.param(n, marks=pytest.mark.slow) for n in V3[1:])])
def test_deploy_params_equal_timm_deploy_form(name: str) -> None:
    """Train-form and fused parameter counts as timm's (1.0x: 8.13 M -> 6.15 M); counts only, so the models
    are built without initialisation (timm's fusion does not run on the meta device, ours does)."""
    with torch.device("meta"):
        ref, ours = timm.create_model(name), create_ghostnet(name)
    assert _params(ours) == _params(ref)
    ref_deploy = reparameterize_model(ref.to_empty(device="cpu").eval(), inplace=False)
    assert _params(reparameterize(ours.eval())) == _params(ref_deploy)
    if name == "ghostnetv3_100":
        assert _params(ours) / 1e6 == pytest.approx(6.15, abs=0.005)


def test_fused_macs_equal_v2() -> None:
    """Fused, GhostNetV3 costs exactly GhostNetV2's multiply-adds at the same width (paper: 0.17 G at 1.0x)."""
    with torch.device("meta"):
        fused = reparameterize(create_ghostnet("ghostnetv3_100").eval())
        v2 = create_ghostnet("ghostnetv2_100").eval()
    with FlopCounterMode(display=False) as a, torch.no_grad():
        fused(torch.zeros(1, 3, 224, 224, device="meta"))
    with FlopCounterMode(display=False) as b, torch.no_grad():
        v2(torch.zeros(1, 3, 224, 224, device="meta"))
    assert a.get_total_flops() == b.get_total_flops()
    assert a.get_total_flops() / 2e6 == pytest.approx(167.0, rel=0.005)


def test_deploy_form_checkpoint_loads_into_a_reparameterized_model() -> None:
    ref = reparameterize_model(_timm("ghostnetv3_050"), inplace=False).eval()
    ours = create_ghostnet("ghostnetv3_050").eval().reparameterize()
    load_weights(ours, ref.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="deploy-form one after ghost_vision.models.reparameterize"):
        load_weights(create_ghostnet("ghostnetv3_050"), ref.state_dict())


def test_official_checkpoint_key_names_load() -> None:
    """The official file: branch BNs named ``bn`` (timm renames them ``bn1``), thop counters, a wrapper."""
    ref = _timm("ghostnetv3_050")
    official = {}
    for key, value in ref.state_dict().items():
        if "_rpr_conv." in key or "_rpr_scale." in key:
            key = key.replace(".bn1.", ".bn.")
        official[key] = value
        if key.endswith(".weight") and "blocks.3" in key:
            official[key.rsplit(".", 1)[0] + ".total_ops"] = torch.zeros(1, dtype=torch.float64)
    assert any(".dw_rpr_conv.0.bn.weight" in k for k in official)
    model = load_weights(create_ghostnet("ghostnetv3_050"), {"state_dict": official}).eval()
    feats = load_weights(create_ghostnet("ghostnetv3_050", features_only=True), official).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)
        trunk = ref.act1(ref.bn1(ref.conv_stem(x)))
        for stage in ref.blocks[:7]:
            trunk = stage(trunk)
        torch.testing.assert_close(feats(x)["2"], trunk, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("width_name", "output_stride"), [("ghostnetv3_050", 32), ("ghostnetv3_050", 8), ("ghostnetv3_100", 16)]
)
def test_feature_shapes(width_name: str, output_stride: int) -> None:
    width = {"ghostnetv3_050": 0.5, "ghostnetv3_100": 1.0}[width_name]
    model = create_ghostnet(width_name, features_only=True, out_indices=(0, 1, 2, 3, 4), output_stride=output_stride)
    assert model.out_channels == LEVEL_CHANNELS[width]
    strides = [min(s, output_stride) for s in (2, 4, 8, 16, 32)]
    model.to("meta")
    h, w = 321, 479
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, h, w, device="meta"))
    assert [tuple(t.shape) for t in out.values()] == [
        (1, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip(LEVEL_CHANNELS[width], strides)
    ]


def test_dilation_keeps_weights_and_fuses_exactly() -> None:
    plain = _randomize_bn(create_ghostnet("ghostnetv3_050", features_only=True)).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        a = plain(x)
        for output_stride in (16, 8):
            dilated = create_ghostnet("ghostnetv3_050", features_only=True, output_stride=output_stride,
                                      weights=plain.state_dict()).eval()
            b = dilated(x)
            for key in (["0", "1"] if output_stride == 16 else ["0"]):
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
            assert [tuple(t.shape[-2:]) for t in b.values()][-1] == (64 // output_stride, 96 // output_stride)
            fused = reparameterize(dilated)(x)  # dilated branches fuse into dilated convs
            for key in b:
                torch.testing.assert_close(fused[key], b[key], rtol=0, atol=1e-5)


def test_frozen_stages_and_norm_eval_survive_reparameterize() -> None:
    model = create_ghostnet("ghostnetv3_050", features_only=True, frozen_stages=3, norm_eval=True).train()
    frozen = [p for m in model.frozen_modules() for p in m.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    loss = sum(t.square().mean() for t in model(torch.rand(2, 3, 64, 64)).values())
    loss.backward()
    assert all(p.grad is None for p in frozen)
    model.reparameterize()
    assert isinstance(model.blocks[1][0], GhostBottleneck) and isinstance(model.blocks[2][0].ghost1, GhostModuleV2)
    fused_frozen = [p for m in model.frozen_modules() for p in m.parameters()]
    assert not any(p.requires_grad for p in fused_frozen)
    assert all(p.requires_grad for p in model.blocks[3].parameters())


def test_reparameterize_inside_detectors_and_errors() -> None:
    det = pytest.importorskip("ghost_vision.models.detection")
    model = _randomize_bn(det.ssdlite320_ghostnet(num_classes=3, backbone="ghostnetv3_050")).eval()
    x = torch.rand(1, 3, 128, 128)  # the extractor alone: any size
    with torch.no_grad():
        before = list(model.backbone(x).values())
        assert reparameterize(model) is model
        after = list(model.backbone(x).values())
    assert not any(isinstance(m, (GhostModuleV3, GhostBottleneckV3)) for m in model.modules())
    assert [t.shape[1] for t in before][:2] == [336, 480]  # blocks.7's ghost1 expansion is the first map
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * max(1.0, a.abs().max().item()))
    block = GhostBottleneckV3(8, 16, 8)
    with pytest.raises(TypeError, match="use block.reparameterized"):
        reparameterize(block)
    assert isinstance(block.reparameterized().ghost1, GhostModule)
    with pytest.raises(ValueError, match="mode must be 'original' or 'shortcut'"):
        GhostModuleV3(8, 16, mode="attn")


def test_frozen_batchnorm_branches_fuse() -> None:
    """Detector backbones with weights get FrozenBatchNorm2d everywhere, skip branches included."""
    from ghost_vision.models.detection._utils import replace_batchnorm

    block = _randomize_bn(GhostBottleneckV3(16, 48, 24, 5, stride=2, se_ratio=0.25, mode="shortcut")).eval()
    holder = replace_batchnorm(nn.Sequential(block), FrozenBatchNorm2d).eval()
    assert isinstance(block.ghost1.cheap_rpr_skip, FrozenBatchNorm2d)
    x = torch.rand(2, 16, 17, 19)
    with torch.no_grad():
        expected = holder(x)
        reparameterize(holder)
        torch.testing.assert_close(holder(x), expected, rtol=0, atol=1e-5)


def test_every_head_accepts_a_v3_backbone() -> None:
    """Detectors and segmenters resolve ``backbone="ghostnetv3_*"`` through VARIANTS, dilation included."""
    det = pytest.importorskip("ghost_vision.models.detection")
    from ghost_vision.models.segmentation import deeplabv3_ghostnet, lraspp_ghostnet

    x = torch.rand(1, 3, 64, 64)
    fpn = det.ghostnet_fpn_backbone("ghostnetv3_050", trainable_layers=6).eval()
    with torch.no_grad():
        assert [(k, tuple(v.shape)) for k, v in fpn(x).items()] == [
            ("0", (1, 256, 8, 8)), ("1", (1, 256, 4, 4)), ("2", (1, 256, 2, 2)), ("pool", (1, 256, 1, 1))]
        for builder in (deeplabv3_ghostnet, lraspp_ghostnet):
            model = builder(num_classes=3, backbone="ghostnetv3_050").eval()
            assert any(isinstance(m, GhostBottleneckV3) for m in model.modules())
            assert model(x)["out"].shape == (1, 3, 64, 64)
        frcnn = det.fasterrcnn_ghostnet_fpn(num_classes=3, backbone="ghostnetv3_050", min_size=64, max_size=64)
        assert set(frcnn.eval()([torch.rand(3, 64, 64)])[0]) == {"boxes", "labels", "scores"}
    assert any(isinstance(m, GhostBottleneckV3) for m in frcnn.backbone.body.modules())
