"""DeepLab-lite and LR-ASPP on GhostNet: shapes, arguments, overfitting, ONNX and cost."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ghost_vision.models import create_ghostnet
from ghost_vision.models import segmentation as seg
from ghost_vision.models.segmentation import GhostDeepLabV3, GhostLRASPP, deeplabv3_ghostnet, lraspp_ghostnet

# Measured with FlopCounterMode at 1x3x512x1024, num_classes=19 (MACs = flops / 2); see docs/segmentation.md.
DEEPLAB_MACS = 5_496_201_024
LRASPP_MACS = 3_064_356_672


def _run(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("width", [0.5, 1.0, 1.3])
@pytest.mark.parametrize("aux_loss,decoder", [(False, True), (True, True), (False, False), (True, False)])
def test_deeplab_shapes(width: float, aux_loss: bool, decoder: bool) -> None:
    torch.manual_seed(0)
    model = deeplabv3_ghostnet(num_classes=5, width=width, aux_loss=aux_loss, decoder=decoder)
    out = _run(model, torch.rand(1, 3, 129, 257))
    assert list(out) == (["out", "aux"] if aux_loss else ["out"])
    for v in out.values():
        assert v.shape == (1, 5, 129, 257) and torch.isfinite(v).all()
    assert model.backbone.output_stride == 16 and model.atrous_rates == (6, 12, 18)


@pytest.mark.parametrize("width", [0.5, 1.0, 1.3])
def test_lraspp_shapes(width: float) -> None:
    model = lraspp_ghostnet(num_classes=3, width=width)
    out = _run(model, torch.rand(1, 3, 129, 257))
    assert list(out) == ["out"] and out["out"].shape == (1, 3, 129, 257)
    assert model.backbone.strides == [8, 16]


def test_larger_odd_size_and_v2_backbone() -> None:
    x = torch.rand(1, 3, 257, 513)
    out = _run(deeplabv3_ghostnet(num_classes=19, aux_loss=True, backbone="ghostnetv2_100"), x)
    assert out["out"].shape == out["aux"].shape == (1, 19, 257, 513)
    assert _run(lraspp_ghostnet(num_classes=19), x)["out"].shape == (1, 19, 257, 513)


def test_output_stride_8() -> None:
    model = deeplabv3_ghostnet(num_classes=4, width=0.5, output_stride=8, aux_loss=True)
    assert model.atrous_rates == (12, 24, 36)
    assert model.backbone.strides == [4, 8, 8]  # levels 1 (decoder), 3 (aux), 4 (ASPP)
    out = _run(model, torch.rand(1, 3, 97, 131))
    assert out["out"].shape == out["aux"].shape == (1, 4, 97, 131)


def test_internal_normalisation() -> None:
    torch.manual_seed(0)
    model = lraspp_ghostnet(num_classes=3, width=0.5).eval()
    raw = torch.rand(1, 3, 64, 64)
    mean = torch.tensor(seg.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(seg.IMAGENET_STD).view(1, 3, 1, 1)
    ref = _run(model, raw)["out"]
    model.normalize = False
    torch.testing.assert_close(_run(model, (raw - mean) / std)["out"], ref)
    # normalisation constants are buffers that move with the model but stay out of the state dict
    assert "mean" not in model.state_dict() and model.mean.shape == (1, 3, 1, 1)
    assert lraspp_ghostnet(num_classes=3, width=0.5, normalize=False).normalize is False


def test_weights_backbone_and_backbone_kwargs() -> None:
    sd = create_ghostnet("ghostnet_050").state_dict()
    model = deeplabv3_ghostnet(num_classes=3, width=0.5, weights_backbone=sd, frozen_stages=2)
    torch.testing.assert_close(model.backbone.conv_stem.weight, sd["conv_stem.weight"])
    assert not model.backbone.conv_stem.weight.requires_grad
    lr = lraspp_ghostnet(num_classes=3, backbone="ghostnet_050", weights_backbone=sd)
    torch.testing.assert_close(lr.backbone.blocks[9][0].conv.weight, sd["blocks.9.0.conv.weight"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"output_stride": 32}, r"output_stride must be 8 or 16, got 32"),
        ({"output_stride": 4}, r"output_stride must be 8 or 16"),
        ({"num_classes": 0}, r"num_classes must be an integer >= 1, got 0"),
        ({"num_classes": 2.5}, r"num_classes must be an integer >= 1"),
        ({"width": 0.755}, r"width must be one of \[0.5, 1.0, 1.3\].*ghostnetv2_100"),
        ({"width": 4.5}, r"width must be one of \[0.5, 1.0, 1.3\]"),
        ({"backbone": "resnet50"}, r"unknown GhostNet variant backbone='resnet50'; choose one of \['ghostnet_050'"),
        ({"backbone": "ghostnetv2_130", "width": 0.5}, r"width=0.5 contradicts backbone='ghostnetv2_130'"),
        ({"aspp_channels": 0}, r"aspp_channels must be >= 1"),
        ({"dropout": 1.0}, r"dropout in \[0, 1\)"),
    ],
)
def test_deeplab_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        deeplabv3_ghostnet(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_classes": 0}, r"num_classes must be an integer >= 1, got 0"),
        ({"num_classes": True}, r"num_classes must be an integer >= 1"),
        ({"width": 1.015}, r"width must be one of \[0.5, 1.0, 1.3\]"),
        ({"backbone": "ghostnet_500"}, r"unknown GhostNet variant backbone='ghostnet_500'"),
    ],
)
def test_lraspp_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lraspp_ghostnet(**kwargs)


def test_model_checks_backbone_levels() -> None:
    backbone = create_ghostnet("ghostnet_050", features_only=True, out_indices=(2, 4), output_stride=16)
    with pytest.raises(ValueError, match=r"needs backbone levels \[1, 4\]; out_indices \(2, 4\) lack \[1\]"):
        GhostDeepLabV3(backbone, 3)
    assert isinstance(GhostLRASPP(backbone, 3), GhostLRASPP)


def _synthetic_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 128x128 images: a rectangle (1), a disk (2) and a triangle (3) on a noisy background (0), each
    class in its own colour; a 1-pixel band on every object border is void (255), as in VOC."""
    g = torch.Generator().manual_seed(0)
    n, h, w = 2, 128, 128
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.rand(n, 3, 1, 1, generator=g) * 0.3 + 0.05 * torch.rand(n, 3, h, w, generator=g)
    target = torch.zeros(n, h, w, dtype=torch.long)
    colours = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.3, 0.3, 0.9]])
    for i in range(n):
        o = 20 * i
        shapes = (
            (yy >= 10 + o) & (yy < 50 + o) & (xx >= 12) & (xx < 60),
            (yy - 90 + o) ** 2 + (xx - 40 - o) ** 2 < 22**2,
            (yy >= 70 - o) & (yy < 120 - o) & (xx >= 70) & (xx - 70 < yy - 70 + o),
        )
        for c, mask in enumerate(shapes, start=1):
            target[i][mask] = c
            img[i][:, mask] = colours[c - 1][:, None]
        fg = (target[i] > 0).float()[None, None]
        border = F.max_pool2d(fg, 3, 1, 1) != -F.max_pool2d(-fg, 3, 1, 1)
        target[i][border[0, 0]] = 255
    return img.clamp(0, 1), target


@pytest.mark.parametrize("builder", [deeplabv3_ghostnet, lraspp_ghostnet])
def test_overfits_one_batch(builder) -> None:
    """Pixel accuracy (void excluded) of the training forward reaches 95 % within 200 Adam steps; DeepLab
    trains with its auxiliary head too (loss weight 0.5, as torchvision's reference script)."""
    x, y = _synthetic_batch()
    valid = y != 255
    assert 0.02 < (~valid).float().mean() < 0.1 and all((y == c).any() for c in range(4))
    torch.manual_seed(0)
    kwargs = {"aux_loss": True} if builder is deeplabv3_ghostnet else {}
    model = builder(num_classes=4, width=0.5, **kwargs).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    acc = 0.0
    for _step in range(200):
        out = model(x)
        loss = sum(w * F.cross_entropy(out[k], y, ignore_index=255) for k, w in (("out", 1.0), ("aux", 0.5)) if k in out)
        acc = (out["out"].argmax(1)[valid] == y[valid]).float().mean().item()
        if acc >= 0.95:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert acc >= 0.95, f"pixel accuracy {acc:.3f} within 200 steps"
    assert all(p.grad is not None for p in model.classifier.parameters())
    if "aux" in out:
        assert out["aux"].shape == out["out"].shape and model.aux_classifier[-1].weight.grad is not None


@pytest.mark.parametrize("builder", [lraspp_ghostnet, deeplabv3_ghostnet])
def test_onnx_export_parity(builder, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = builder(num_classes=5, width=0.5).eval()
    x = torch.rand(1, 3, 129, 257)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # torch >= 2.5: keep the TorchScript-based exporter (the dynamo one is the default from 2.9)
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["image"], output_names=["out"],
                              opset_version=17)
        except TypeError:  # older torch without the dynamo argument
            torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["out"],
                              opset_version=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x)["out"]
    assert got.shape == (1, 5, 129, 257)
    torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-4, rtol=1e-4)


def _macs_meta(build) -> int:
    """MACs (FlopCounterMode flops / 2) of one 512x1024 forward, on the meta device (no arithmetic)."""
    with torch.device("meta"):
        model = build().eval()
        x = torch.empty(1, 3, 512, 1024)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def test_cost_at_512x1024() -> None:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large

    ours = _macs_meta(lambda: deeplabv3_ghostnet(num_classes=19))
    peer = _macs_meta(lambda: deeplabv3_mobilenet_v3_large(num_classes=19, weights_backbone=None))
    assert ours == pytest.approx(DEEPLAB_MACS, rel=0.005)
    assert ours <= peer / 3, f"DeepLab-lite {ours / 1e9:.2f} G MACs vs torchvision {peer / 1e9:.2f} G"
    lite = _macs_meta(lambda: lraspp_ghostnet(num_classes=19))
    lite_peer = _macs_meta(lambda: lraspp_mobilenet_v3_large(num_classes=19, weights_backbone=None))
    assert lite == pytest.approx(LRASPP_MACS, rel=0.005)
    assert lite < lite_peer


@pytest.mark.slow
def test_deeplab_ghostnetv3_overfits_one_batch(one_torch_thread) -> None:
    """DeepLab on the multi-branch GhostNetV3 trains as is: the loss falls by >= 80 % within 100 Adam steps."""
    x, y = _synthetic_batch()
    torch.manual_seed(0)
    model = deeplabv3_ghostnet(num_classes=4, backbone="ghostnetv3_050").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = last = float("nan")
    for step in range(101):
        loss = F.cross_entropy(model(x)["out"], y, ignore_index=255)
        last = loss.item()
        first = last if step == 0 else first
        if last <= 0.2 * first:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert last <= 0.2 * first, f"DeepLab-GhostNetV3 loss {first:.3f} -> {last:.3f} after {step} steps"
