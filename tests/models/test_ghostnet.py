"""GhostNet backbone family: cost, timm parity, feature maps, dilation, freezing, export."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ghost_vision.models import GhostNet, GhostNetFeatures, create_ghostnet, list_models

timm = pytest.importorskip("timm")

# (params in millions, MACs at 224 px in millions) from shared/docs/ghostnet_facts.md
REFERENCE = {
    "ghostnet_050": (2.59, 42.3),
    "ghostnet_100": (5.18, 141.2),
    "ghostnet_130": (7.36, 227.0),
    "ghostnetv2_100": (6.16, 167.0),
    "ghostnetv2_130": (8.96, 269.3),
    "ghostnetv2_160": (12.39, 398.6),
}
# Channels of the five levels (strides 2..32) at each width, from the block table and make_divisible(., 4).
LEVEL_CHANNELS = {
    0.5: [8, 12, 20, 56, 480],
    1.0: [16, 24, 40, 112, 960],
    1.3: [20, 32, 52, 144, 1248],
    1.6: [24, 40, 64, 180, 1536],
}


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics so parity tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _macs(model: nn.Module, size: tuple[int, int] = (224, 224)) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, *size))
    return counter.get_total_flops() / 2


def test_variant_table() -> None:
    v3 = ["ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130", "ghostnetv3_160"]  # tests/models/test_ghostnet_v3.py
    assert list_models(kind="backbone") == list(REFERENCE) + v3


@pytest.mark.parametrize("name", list(REFERENCE))
def test_params_and_macs_match_the_paper(name: str) -> None:
    params_m, macs_m = REFERENCE[name]
    model = create_ghostnet(name).eval()
    params = sum(p.numel() for p in model.parameters())
    assert params / 1e6 == pytest.approx(params_m, rel=0.005)
    assert _macs(model) / 1e6 == pytest.approx(macs_m, rel=0.005)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_timm_parity(name: str) -> None:
    ref = timm.create_model(name).eval()
    _randomize_bn(ref)
    ours = create_ghostnet(name).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
    # features_only takes the same weights and gives timm's intermediate maps (112 ch at stride 16).
    feats = create_ghostnet(name, features_only=True, weights=ref.state_dict()).eval()
    with torch.no_grad():
        trunk = ref.act1(ref.bn1(ref.conv_stem(x)))
        for stage in ref.blocks[:7]:
            trunk = stage(trunk)
        torch.testing.assert_close(feats(x)["2"], trunk, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,timm_args", [
    ("ghostnet_110", ("ghostnet_100", 1.1, {})),  # the width whose SSDLite matches the peer's MACs
    ("ghostnetv2_075", ("ghostnetv2_100", 0.75, {"version": "v2"})),
])
def test_custom_width_timm_parity(name: str, timm_args: tuple) -> None:
    """A width outside the named table (``ghostnet_110``) is timm's GhostNet at that width, weight for weight."""
    from timm.models.ghostnet import _create_ghostnet  # timm builds any width through its private factory

    variant, width, extra = timm_args
    ref = _create_ghostnet(variant, width=width, **extra).eval()
    _randomize_bn(ref)
    ours = create_ghostnet(name).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)


def test_key_count_matches_the_official_checkpoint() -> None:
    assert len(create_ghostnet("ghostnet_100").state_dict()) == 512
    assert len(create_ghostnet("ghostnetv2_100").state_dict()) == 764
    keys = create_ghostnet("ghostnetv2_100").state_dict()
    assert "blocks.2.0.ghost1.short_conv.5.running_var" in keys
    assert not any(k.startswith("blocks.1.0.ghost1.short_conv") for k in keys)
    assert "blocks.9.0.bn1.weight" in keys and "blocks.7.0.shortcut.3.weight" in keys


@pytest.mark.parametrize("name", list(REFERENCE))
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_feature_shapes(name: str, output_stride: int) -> None:
    width = create_ghostnet(name).width
    model = create_ghostnet(name, features_only=True, out_indices=(0, 1, 2, 3, 4), output_stride=output_stride)
    model.eval()
    expected_strides = [min(s, output_stride) for s in (2, 4, 8, 16, 32)]
    assert model.out_channels == LEVEL_CHANNELS[width]
    assert model.strides == expected_strides
    model.to("meta")  # shapes only: the arithmetic is checked by the parity and dilation tests
    for h, w in [(320, 320), (321, 479)]:
        with torch.no_grad():
            out = model(torch.rand(1, 3, h, w, device="meta"))
        assert list(out) == ["0", "1", "2", "3", "4"]
        shapes = [tuple(t.shape) for t in out.values()]
        assert shapes == [
            (1, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip(LEVEL_CHANNELS[width], expected_strides)
        ]


def test_default_levels_and_unbuilt_layers() -> None:
    model = create_ghostnet("ghostnet_100", features_only=True)
    assert model.out_channels == [24, 40, 112, 960] and model.strides == [4, 8, 16, 32]
    shallow = create_ghostnet("ghostnet_100", features_only=True, out_indices=(1, 2))
    assert len(shallow.blocks) == 5  # blocks.0 .. blocks.4; nothing after stride 8 is built
    assert not any(k.startswith(("blocks.5", "conv_head", "classifier")) for k in shallow.state_dict())
    out = shallow(torch.rand(1, 3, 64, 96))
    assert [tuple(t.shape) for t in out.values()] == [(1, 24, 16, 24), (1, 40, 8, 12)]


@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnetv2_100"])
def test_dilation_keeps_weights_and_shallow_levels(name: str) -> None:
    plain = create_ghostnet(name, features_only=True).eval()
    _randomize_bn(plain)
    x = torch.rand(1, 3, 128, 160)
    for output_stride in (16, 8):
        dilated = create_ghostnet(name, features_only=True, output_stride=output_stride, weights=plain.state_dict())
        dilated.eval()
        with torch.no_grad():
            a, b = plain(x), dilated(x)
        # Levels above the first dilated stage are computed by identical layers.
        unchanged = ["0", "1", "2"] if output_stride == 16 else ["0", "1"]
        for key in unchanged:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        assert [tuple(t.shape[-2:]) for t in b.values()][2:] == [
            (math.ceil(128 / min(s, output_stride)), math.ceil(160 / min(s, output_stride))) for s in (16, 32)
        ]


def test_frozen_stages_stay_frozen_through_a_training_step() -> None:
    model = create_ghostnet("ghostnet_100", features_only=True, frozen_stages=3)
    model.train()
    frozen = [model.conv_stem, model.bn1, *list(model.blocks)[:3]]
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.parameters() if id(p) not in frozen_ids)
    bn_frozen = [m for f in frozen for m in f.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_live = [m for m in model.blocks[3].modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not m.training for m in bn_frozen) and all(m.training for m in bn_live)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = sum(t.square().mean() for t in model(torch.rand(2, 3, 96, 96)).values())
    loss.backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    opt.step()
    after = model.state_dict()
    for key, value in before.items():
        is_frozen = key.startswith(("conv_stem", "bn1", "blocks.0.", "blocks.1.", "blocks.2."))
        same = torch.equal(value, after[key])
        if is_frozen:
            assert same, f"{key} changed although its stage is frozen"
    assert not torch.equal(before["blocks.3.0.ghost1.primary_conv.1.running_mean"],
                           after["blocks.3.0.ghost1.primary_conv.1.running_mean"])


def test_norm_eval_keeps_every_batchnorm_in_eval_mode() -> None:
    model = create_ghostnet("ghostnetv2_100", features_only=True, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(p.requires_grad for p in model.parameters())
    before = bns[-1].running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(before, bns[-1].running_mean)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"out_indices": (1, 5)}, "out_indices must be distinct levels from 0..4"),
        ({"out_indices": ()}, "out_indices"),
        ({"output_stride": 4}, "output_stride must be one of 8, 16, 32"),
        ({"frozen_stages": 11}, "frozen_stages must be in -1..10"),
    ],
)
def test_bad_feature_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_ghostnet("ghostnet_100", features_only=True, **kwargs)


def test_bad_width_and_name() -> None:
    with pytest.raises(ValueError, match="width must be > 0"):
        GhostNet(width=0)
    with pytest.raises(ValueError, match="width must be > 0"):
        GhostNetFeatures(width=-1.0)
    with pytest.raises(ValueError, match="choose one of"):
        create_ghostnet("ghostnet_2000")


def test_tiny_inputs_work_for_v2() -> None:
    model = create_ghostnet("ghostnetv2_100", features_only=True).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 33, 47))
    assert [tuple(t.shape[-2:]) for t in out.values()] == [(9, 12), (5, 6), (3, 3), (2, 2)]


@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnetv2_100"])
def test_torchscript_and_onnx_export(name: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = create_ghostnet(name, features_only=True).eval()
    _randomize_bn(model)
    x = torch.rand(1, 3, 224, 288)
    with torch.no_grad():
        expected = list(model(x).values())
        scripted = torch.jit.script(model)
        for a, b in zip(scripted(x).values(), expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    path = tmp_path / "backbone.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["p4", "p8", "p16", "p32"],
                      dynamo=False, opset_version=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    for a, b in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(a), b, rtol=1e-4, atol=1e-4)
