"""Detection builders: torchvision API in train/eval mode, feature maps, freezing, argument checks."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.ssd import SSD
from torchvision.ops.misc import FrozenBatchNorm2d

from ghost_vision.models import VARIANTS, create_ghostnet
from ghost_vision.models.detection import (
    fasterrcnn_ghostnet_fpn,
    fcos_ghostnet_fpn,
    ghostnet_fpn_backbone,
    retinanet_ghostnet_fpn,
    ssdlite320_ghostnet,
)

SMALL = {"min_size": 224, "max_size": 320}  # keeps the FPN detectors cheap on CPU
BUILDERS = {
    "ssdlite": (ssdlite320_ghostnet, {}, SSD),
    "fasterrcnn": (fasterrcnn_ghostnet_fpn, SMALL, FasterRCNN),
    "retinanet": (retinanet_ghostnet_fpn, SMALL, RetinaNet),
    "fcos": (fcos_ghostnet_fpn, SMALL, FCOS),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def ghostnet_100_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_ghostnet("ghostnet_100").state_dict()  # a classifier checkpoint, as timm/official ship


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_train_and_eval_any_sizes_and_empty_targets(kind: str) -> None:
    builder, kwargs, cls = BUILDERS[kind]
    torch.manual_seed(0)
    model = builder(num_classes=3, **kwargs)
    assert isinstance(model, cls)
    images = [torch.rand(3, 320, 320), torch.rand(3, 256, 384)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 120.0, 160.0], [150.0, 30.0, 300.0, 220.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without boxes
    ]
    model.train()
    losses = model(images, targets)
    assert isinstance(losses, dict) and losses
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.body.parameters())

    model.eval()
    with torch.no_grad():
        out = model(images)
    assert isinstance(out, list) and len(out) == 2
    for det, img in zip(out, images):
        assert set(det) == {"boxes", "labels", "scores"}
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert det["labels"].dtype == torch.int64
        if n:  # boxes come back in the original image's pixels
            assert det["boxes"][:, 2].max() <= img.shape[-1] + 1e-3
            assert det["boxes"][:, 3].max() <= img.shape[-2] + 1e-3


def test_ssdlite_feature_maps_mirror_torchvision() -> None:
    torch.manual_seed(0)
    model = ssdlite320_ghostnet().eval()
    extractor = model.backbone
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        maps = extractor(x)
        # map 0 is blocks.7's ghost1 expansion; map 1 is the end of the network (the plain backbone's output)
        taps: dict[str, torch.Tensor] = {}
        handle = extractor.body.blocks[7][0].ghost1.register_forward_hook(lambda m, i, o: taps.setdefault("g1", o))
        plain = extractor.body(x)
        handle.remove()
    assert list(maps) == [str(i) for i in range(6)]
    assert [tuple(v.shape[1:]) for v in maps.values()] == [
        (672, 20, 20), (960, 10, 10), (512, 5, 5), (256, 3, 3), (256, 2, 2), (128, 1, 1)
    ]
    torch.testing.assert_close(maps["0"], taps["g1"])
    torch.testing.assert_close(maps["1"], plain["0"])
    # anchors, sizes and postprocessing as torchvision's ssdlite320_mobilenet_v3_large
    assert model.anchor_generator.aspect_ratios == [[2, 3]] * 6
    assert model.anchor_generator.num_anchors_per_location() == [6] * 6
    assert (model.score_thresh, model.nms_thresh, model.detections_per_img, model.topk_candidates) == (
        0.001, 0.55, 300, 300
    )
    assert model.transform.min_size == (320,) and model.transform.image_mean == [0.5] * 3
    extra_bn = [m for m in extractor.extra.modules() if isinstance(m, nn.BatchNorm2d)]
    assert extra_bn and all((m.eps, m.momentum) == (0.001, 0.03) for m in extra_bn)
    # kwargs override the defaults
    assert ssdlite320_ghostnet(num_classes=5, score_thresh=0.2, detections_per_img=10).detections_per_img == 10


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fpn_backbone_every_variant(name: str) -> None:
    backbone = ghostnet_fpn_backbone(name, trainable_layers=6).eval()
    assert isinstance(backbone, BackboneWithFPN)
    assert isinstance(backbone.out_channels, int) and backbone.out_channels == 256
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, 256, 320))
    assert list(out) == ["0", "1", "2", "pool"]
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 256, 32, 40), (1, 256, 16, 20), (1, 256, 8, 10), (1, 256, 4, 5)
    ]
    assert backbone.strides == [8, 16, 32, 64]


def test_fpn_backbone_options() -> None:
    bb = ghostnet_fpn_backbone("ghostnet_050", returned_layers=[1, 2, 3, 4], out_channels=128)
    with torch.no_grad():
        out = bb.eval()(torch.rand(1, 3, 128, 128))
    assert list(out) == ["0", "1", "2", "3", "pool"] and bb.out_channels == 128
    assert [v.shape[-1] for v in out.values()] == [32, 16, 8, 4, 2]
    # a shallower backbone builds only the stages it needs
    assert len(ghostnet_fpn_backbone(returned_layers=[1, 2]).body.blocks) == 5
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        ghostnet_fpn_backbone(returned_layers=[2, 5])
    with pytest.raises(ValueError, match="unknown GhostNet variant"):
        ghostnet_fpn_backbone("resnet50")


def test_variant_selection() -> None:
    assert ssdlite320_ghostnet(width=0.5).backbone.body.width == 0.5
    assert ssdlite320_ghostnet(width=1.1).backbone.body.width == 1.1  # the peer's MACs (0.96x at 320 px)
    assert fcos_ghostnet_fpn(backbone="ghostnetv2_100").backbone.body.version == 2
    with pytest.raises(ValueError, match="width must be one of"):
        fasterrcnn_ghostnet_fpn(width=0.777)
    with pytest.raises(ValueError, match="unknown GhostNet variant"):
        retinanet_ghostnet_fpn(backbone="ghostnet_2000")


def test_anchor_sizes_follow_levels() -> None:
    frcnn = fasterrcnn_ghostnet_fpn()
    assert frcnn.backbone.strides == [16, 32, 64]  # last two levels + pool, like torchvision's mobilenet FPN
    assert frcnn.rpn.anchor_generator.sizes == ((32, 64, 128, 256, 512),) * 3
    assert frcnn.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 3
    retina = retinanet_ghostnet_fpn()
    assert retina.backbone.strides == [8, 16, 32, 64, 128]  # P3-P7
    assert retina.anchor_generator.sizes == ((32, 40, 50), (64, 80, 101), (128, 161, 203), (256, 322, 406),
                                             (512, 645, 812))
    fcos = fcos_ghostnet_fpn(returned_layers=[3, 4])
    assert fcos.anchor_generator.sizes == ((16,), (32,), (64,), (128,))


# Trainable parameters of the GhostNet 1.0x body for trainable_backbone_layers = 0..6 (units: stem + 5 levels).
# With weights the BatchNorms are FrozenBatchNorm2d (no parameters); without them the BNs of the trained units count.
TRAINABLE_WITH_WEIGHTS = [0, 2071448, 2621732, 2644224, 2648628, 2649028, 2649460]
TRAINABLE_FPN_BACKBONE_NO_WEIGHTS = [0, 2085880, 2642276, 2665584, 2670500, 2670964, 2671428]


@pytest.mark.parametrize("builder", [ssdlite320_ghostnet, fasterrcnn_ghostnet_fpn, retinanet_ghostnet_fpn])
def test_trainable_backbone_layers_pinned(builder, ghostnet_100_sd) -> None:
    counts = []
    for t in range(7):
        model = builder(weights_backbone=ghostnet_100_sd, trainable_backbone_layers=t)
        counts.append(_trainable(model.backbone.body))
    assert counts == TRAINABLE_WITH_WEIGHTS
    # pretrained backbone: weights loaded, every BatchNorm frozen; the detector's own parts stay trainable
    body = model.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    torch.testing.assert_close(body.conv_stem.weight, ghostnet_100_sd["conv_stem.weight"])
    torch.testing.assert_close(body.bn1.running_var, ghostnet_100_sd["bn1.running_var"])
    assert _trainable(model) > _trainable(body)


def test_default_trainable_layers(ghostnet_100_sd) -> None:
    # torchvision defaults: FPN detectors 3 with weights, SSDLite 6; everything trainable without weights
    frcnn = fasterrcnn_ghostnet_fpn(weights_backbone=ghostnet_100_sd)
    assert _trainable(frcnn.backbone.body) == TRAINABLE_WITH_WEIGHTS[3]
    ssd = ssdlite320_ghostnet(weights_backbone=ghostnet_100_sd)
    assert _trainable(ssd.backbone.body) == TRAINABLE_WITH_WEIGHTS[6]
    scratch = fcos_ghostnet_fpn()
    assert _trainable(scratch.backbone.body) == TRAINABLE_FPN_BACKBONE_NO_WEIGHTS[6]
    assert any(isinstance(m, nn.BatchNorm2d) for m in scratch.backbone.body.modules())
    with pytest.warns(UserWarning, match="no effect"):
        m = retinanet_ghostnet_fpn(trainable_backbone_layers=1)
    assert _trainable(m.backbone.body) == TRAINABLE_FPN_BACKBONE_NO_WEIGHTS[6]


def test_fpn_backbone_trainable_layers_pinned() -> None:
    counts = [_trainable(ghostnet_fpn_backbone(trainable_layers=t).body) for t in range(7)]
    assert counts == TRAINABLE_FPN_BACKBONE_NO_WEIGHTS
    # an explicit norm_layer keeps trainable BatchNorms on a pretrained backbone; frozen units stay frozen
    bb = ghostnet_fpn_backbone(weights=create_ghostnet("ghostnet_100").state_dict(), norm_layer=nn.BatchNorm2d)
    assert _trainable(bb.body) == TRAINABLE_FPN_BACKBONE_NO_WEIGHTS[3]


@pytest.mark.parametrize("bad", [-1, 7])
@pytest.mark.parametrize("builder", [ssdlite320_ghostnet, fasterrcnn_ghostnet_fpn, retinanet_ghostnet_fpn,
                                     fcos_ghostnet_fpn])
def test_bad_trainable_backbone_layers(builder, bad: int, ghostnet_100_sd) -> None:
    with pytest.raises(ValueError, match=r"range \[0, 6\]"):
        builder(weights_backbone=ghostnet_100_sd, trainable_backbone_layers=bad)


@pytest.mark.parametrize("bad", [-1, 7])
def test_bad_trainable_layers_fpn_backbone(bad: int) -> None:
    with pytest.raises(ValueError, match=r"range \[0, 6\]"):
        ghostnet_fpn_backbone(trainable_layers=bad)


def test_size_kwarg_is_ignored_with_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = ssdlite320_ghostnet(size=(512, 512))
    assert any("already fixed" in str(w.message) for w in caught)
    assert model.transform.min_size == (320,)


def test_reduced_tail_halves_the_stride32_stages_as_torchvision() -> None:
    # oracle: torchvision's own MobileNetV3-Large configuration with and without reduced_tail; GhostNet's
    # configuration is MobileNetV3's, so each (expansion, out) pair of the tail must map the same way
    from torchvision.models.mobilenetv3 import _mobilenet_v3_conf

    from ghost_vision.models.ghostnet import GHOSTNET_CFG, stage_cfgs

    full, last_full = _mobilenet_v3_conf("mobilenet_v3_large")
    reduced, last_reduced = _mobilenet_v3_conf("mobilenet_v3_large", reduced_tail=True)
    mapping = {(f.expanded_channels, f.out_channels): (r.expanded_channels, r.out_channels)
               for f, r in zip(full, reduced) if f != r}
    assert mapping  # the tail differs
    cfgs = stage_cfgs(reduced_tail=True)
    for idx, (stage, stage_reduced) in enumerate(zip(GHOSTNET_CFG, cfgs)):
        for (k, exp, c, se, s), (k2, exp2, c2, se2, s2) in zip(stage, stage_reduced, strict=True):
            assert (k2, se2, s2) == (k, se, s)
            assert (exp2, c2) == (mapping.get((exp, c), (exp, c)) if idx >= 7 else (exp, c))
    assert stage_cfgs() is GHOSTNET_CFG

    torch.manual_seed(0)
    full_model = ssdlite320_ghostnet(num_classes=3).eval()
    model = ssdlite320_ghostnet(num_classes=3, reduced_tail=True).eval()
    body, full_body = model.backbone.body, full_model.backbone.body
    assert body.stage_channels[-1] == full_body.stage_channels[-1] // 2 == 480
    # the final 1x1 stage: torchvision's reduced last conv is 6 x 80 = 480 as well
    assert body.stage_channels[-1] == 6 * reduced[-1].out_channels
    assert last_reduced == last_full // 2
    # up to the stride-16 tap the two bodies are the same network (same keys and shapes)
    up_to_tap = {k: v.shape for k, v in full_body.state_dict().items()
                 if not k.startswith(("blocks.7", "blocks.8", "blocks.9")) or k.startswith("blocks.7.0.ghost1")}
    assert {k: body.state_dict()[k].shape for k in up_to_tap} == up_to_tap
    with torch.no_grad():
        maps = model.backbone(torch.rand(1, 3, 320, 320))
        out = model([torch.rand(3, 320, 320)])
    assert [v.shape[1] for v in maps.values()] == [672, 480, 512, 256, 256, 128]
    assert sorted(out[0]) == ["boxes", "labels", "scores"]


def test_reduced_tail_needs_training_from_scratch(ghostnet_100_sd) -> None:
    with pytest.raises(ValueError, match="reduced_tail=True.*weights_backbone=None"):
        ssdlite320_ghostnet(num_classes=3, reduced_tail=True, weights_backbone=ghostnet_100_sd)
    with pytest.raises(ValueError, match="features_only=True"):
        create_ghostnet("ghostnet_100", reduced_tail=True)
    assert create_ghostnet("ghostnet_100", features_only=True, reduced_tail=True).reduced_tail


def test_retinanet_head_norm_is_torchvisions_v2_head() -> None:
    plain = retinanet_ghostnet_fpn(num_classes=5)
    normed = retinanet_ghostnet_fpn(num_classes=5, head_norm=True)
    for head in (normed.head.classification_head, normed.head.regression_head):
        gns = [m for m in head.conv.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert len(gns) == 4 and all(g.num_groups == 32 and g.num_channels == 256 for g in gns)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in plain.head.modules())
    # the rest of the detector is the same: same parameter names outside the head towers
    outside = lambda m: {k for k in m.state_dict() if ".conv." not in k}  # noqa: E731
    assert outside(plain) == outside(normed)
    with pytest.raises(ValueError, match="head= or head_norm=True"):
        retinanet_ghostnet_fpn(num_classes=5, head_norm=True, head=plain.head)
