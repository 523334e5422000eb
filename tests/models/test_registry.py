"""The model registry (``get_model``/``list_models``) and the one width -> variant resolver."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection.ssd import SSD

from ghost_vision.models import (
    VARIANTS,
    GhostLRASPP,
    GhostNet,
    GhostNetFeatures,
    create_ghostnet,
    deeplabv3_ghostnet,
    factory,
    fasterrcnn_ghostnet_fpn,
    get_model,
    list_models,
    lraspp_ghostnet,
    resolve_variant,
    ssdlite320_ghostnet,
    variant_config,
    variant_name,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_list_models_by_kind() -> None:
    assert list_models(kind="backbone") == list(VARIANTS)
    assert list_models(kind="detector") == [
        "ssdlite320_ghostnet", "fasterrcnn_ghostnet_fpn", "retinanet_ghostnet_fpn", "fcos_ghostnet_fpn",
        "maskrcnn_ghostnet_fpn", "nanodet_plus_ghostnet"]
    assert list_models(kind="segmenter") == ["deeplabv3_ghostnet", "lraspp_ghostnet"]
    peers = list_models(kind="peer")
    assert "ssdlite320_mobilenet_v3_large" in peers and "lraspp_mobilenet_v3_large" in peers
    assert list_models() == sum((list_models(kind=k) for k in ("backbone", "detector", "segmenter", "peer")), [])
    with pytest.raises(ValueError, match=r"kind must be one of \['backbone', 'detector', 'segmenter', 'peer'\]"):
        list_models(kind="classifier")


def test_backbones_follow_the_variant_table(monkeypatch) -> None:
    """A variant added to VARIANTS is listed, built and resolvable by width without touching the registry."""
    monkeypatch.setitem(factory.VARIANTS, "ghostnet_075", (1, 0.75))
    assert "ghostnet_075" in list_models(kind="backbone")
    net = get_model("ghostnet_075", features_only=True)
    assert isinstance(net, GhostNetFeatures) and net.width == 0.75
    assert resolve_variant(0.75) == "ghostnet_075"


def test_get_model_builds_every_kind() -> None:
    assert type(get_model("ghostnet_050", num_classes=7)) is GhostNet
    assert get_model("ghostnet_050", num_classes=7).classifier.out_features == 7
    assert isinstance(get_model("ghostnetv2_100", features_only=True), GhostNetFeatures)
    det = get_model("ssdlite320_ghostnet", num_classes=3, width=0.5)
    assert isinstance(det, SSD) and det.backbone.body.width == 0.5
    seg = get_model("lraspp_ghostnet", num_classes=4, backbone="ghostnet_050")
    assert isinstance(seg, GhostLRASPP)
    with torch.no_grad():
        assert seg.eval()(torch.rand(1, 3, 64, 64))["out"].shape == (1, 4, 64, 64)


def test_peers_are_randomly_initialised_torchvision_models() -> None:
    """No download (weights/weights_backbone default to None); the trunk peer is MobileNetV3's .features;
    segmentation peers take [0, 1] RGB like the Ghost segmenters (tests/models/test_peers.py)."""
    from torchvision.models.segmentation import LRASPP

    from ghost_vision.models import NormalizedInput

    peer = get_model("lraspp_mobilenet_v3_large", num_classes=5)
    assert isinstance(peer, NormalizedInput) and isinstance(peer.model, LRASPP)
    assert isinstance(get_model("lraspp_mobilenet_v3_large", num_classes=5, normalize=False), LRASPP)
    trunk = get_model("mobilenet_v3_large_features")
    assert isinstance(trunk, nn.Sequential)
    with torch.no_grad():
        assert trunk.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 960, 2, 2)
    # any other torchvision builder is reachable by name, also randomly initialised
    assert type(get_model("resnet18", num_classes=3)).__name__ == "ResNet"


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model builder 'ghostnet_999': choose one of \['ghostnet_050'"):
        get_model("ghostnet_999")
    with pytest.raises(ValueError, match="model name must be a string"):
        get_model(None)  # type: ignore[arg-type]


def test_custom_widths() -> None:
    """Any width under timm's naming rule: parsed, built at that width, no weights to load."""
    assert variant_config("ghostnet_110") == (1, 1.1)
    assert variant_config("ghostnetv2_075") == (2, 0.75) and variant_config("ghostnetv3_200") == (3, 2.0)
    assert variant_config("ghostnet_100") == VARIANTS["ghostnet_100"]
    for bad in ("ghostnet_11", "ghostnet_1100", "ghostnetv4_100", "ghostnet_009", "ghostnet_401", "xghostnet_100", 1.0):
        assert variant_config(bad) is None, bad
    for version, width in [(1, 1.1), (2, 0.75), (3, 1.6), (1, 0.5)]:
        name = variant_name(version, width)
        assert variant_config(name) == (version, width)
    assert variant_name(1, 1.3) == "ghostnet_130" and variant_name(2, 1.0) == "ghostnetv2_100"
    assert variant_name(4, 1.0) is None and variant_name(1, 1.234) is None and variant_name(1, 5.0) is None
    net = get_model("ghostnet_110", num_classes=5)
    assert isinstance(net, GhostNet) and (net.version, net.width) == (1, 1.1)
    # channels: the paper's table x 1.1, rounded to multiples of 4 (timm's parity is in test_weights)
    assert get_model("ghostnet_110", features_only=True).out_channels == [28, 44, 124, 1056]
    feats = get_model("ghostnetv2_075", features_only=True)
    assert (feats.version, feats.width) == (2, 0.75)
    with pytest.raises(ValueError, match=r"timm publishes no ImageNet weights for ghostnet_110"):
        get_model("ghostnet_110", weights="timm")
    with pytest.raises(FileNotFoundError, match=r"Names for ghostnet_110: none published"):
        get_model("ghostnet_110", weights="ghostnet_110.in1k_typo")
    with pytest.raises(ValueError, match=r"weights 'ghostnet_100.in1k' are for ghostnet_100, not ghostnet_110"):
        get_model("ghostnet_110", weights="ghostnet_100.in1k")
    with pytest.raises(ValueError, match=r"unknown GhostNet variant name='ghostnet_1000'; choose one of .* or another "
                                         r"width as ghostnet\[v2\|v3\]_NNN with NNN = width x 100 from 0.1 to 4"):
        create_ghostnet("ghostnet_1000")
    assert "ghostnet_110" not in list_models()  # the listing stays the named variants


def test_resolve_variant() -> None:
    assert [resolve_variant(w) for w in (0.5, 1, 1.0, 1.3)] == [
        "ghostnet_050", "ghostnet_100", "ghostnet_100", "ghostnet_130"]
    assert resolve_variant(0.5 + 1e-12) == "ghostnet_050"  # a width computed in floating point
    assert resolve_variant(1.0, "ghostnetv2_160") == "ghostnetv2_160"
    assert resolve_variant(1.6, "ghostnetv2_160") == "ghostnetv2_160"  # agreeing width and backbone
    # other widths get timm's naming rule (width x 100), without published weights
    assert [resolve_variant(w) for w in (0.7, 1.1, 1.1000000001, 4.0)] == [
        "ghostnet_070", "ghostnet_110", "ghostnet_110", "ghostnet_400"]
    assert resolve_variant(1.1, "ghostnetv3_110") == "ghostnetv3_110"
    for width in (1.105, 0.05, 4.01):
        with pytest.raises(ValueError, match=rf"width must be one of \[0.5, 1.0, 1.3\] \(GhostNet v1, published "
                                             rf"weights\) or another multiple of 0.01 from 0.1 to 4 \(no published "
                                             rf"weights\), got {width}; for another version pass backbone= one of "
                                             r"\['ghostnetv2_100'"):
            resolve_variant(width)
    with pytest.raises(ValueError, match=r"width=0.5 contradicts backbone='ghostnetv2_130' \(width 1.3\)"):
        resolve_variant(0.5, "ghostnetv2_130")
    with pytest.raises(ValueError, match=r"unknown GhostNet variant backbone='resnet50'; choose one of"):
        resolve_variant(1.0, "resnet50")
    with pytest.raises(ValueError, match="width must be a number, got '1.0'"):
        resolve_variant("1.0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"width": 0.705}, {"width": 0.5, "backbone": "ghostnetv2_130"}, {"backbone": "resnet50"},
               {"width": True}]
)
def test_detection_and_segmentation_builders_resolve_alike(kwargs: dict) -> None:
    """The detection and segmentation builders share the resolver: the same bad input, the same error."""
    messages = set()
    for builder in (ssdlite320_ghostnet, fasterrcnn_ghostnet_fpn, deeplabv3_ghostnet, lraspp_ghostnet):
        with pytest.raises(ValueError) as info:
            builder(num_classes=3, **kwargs)
        messages.add(str(info.value))
    assert len(messages) == 1, messages


def test_ssd_head_outputs_moved_to_deploy_with_a_deprecated_alias() -> None:
    from ghost_vision.deploy.export import SSDHeadOutputs

    with pytest.warns(DeprecationWarning, match="import SSDHeadOutputs from ghost_vision.deploy.export"):
        from ghost_vision.models.detection import SSDHeadOutputs as old
    with pytest.warns(DeprecationWarning):
        from ghost_vision.models import SSDHeadOutputs as older
    assert old is older is SSDHeadOutputs
    with pytest.raises(ImportError, match="cannot import name 'Nope'"):
        from ghost_vision.models import Nope  # noqa: F401
