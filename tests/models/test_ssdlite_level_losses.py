"""tools/ssdlite_level_losses.py: the per-map split adds up to torchvision's own SSD loss (the oracle)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from ghost_vision.models.detection import ssdlite320_ghostnet

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("ssdlite_level_losses", REPO / "tools" / "ssdlite_level_losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_level_split_adds_up_to_torchvision_ssd_loss() -> None:
    tool = _tool()
    torch.manual_seed(0)
    model = ssdlite320_ghostnet(num_classes=3, width=0.5).eval()
    images = [torch.rand(3, 320, 320), torch.rand(3, 320, 320), torch.rand(3, 320, 320)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 120.0, 140.0], [200.0, 200.0, 230.0, 240.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects: skipped
        {"boxes": torch.tensor([[0.0, 0.0, 300.0, 310.0]]), "labels": torch.tensor([2])},
    ]
    levels = tool.level_losses(model, images, targets)
    assert [lv["cells"] for lv in levels] == [400, 100, 25, 9, 4, 1]

    # oracle: torchvision's SSD.compute_loss on the same outputs, images with objects only
    keep = [0, 2]
    with torch.no_grad():
        images_t, targets_t = model.transform([images[i] for i in keep], [targets[i] for i in keep])
        features = list(model.backbone(images_t.tensors).values())
        head = model.head(features)
        anchors = model.anchor_generator(images_t, features)
        matched = [model.proposal_matcher(box_iou(t["boxes"], a)) for t, a in zip(targets_t, anchors)]
        losses = model.compute_loss(targets_t, head, anchors, matched)
    num_fg = sum(int((m >= 0).sum()) for m in matched)
    assert sum(lv["anchors"] for lv in levels) == num_fg > 0
    assert sum(lv["box_sum"] for lv in levels) == pytest.approx(float(losses["bbox_regression"]) * num_fg, rel=1e-5)
    assert all(0 <= lv["correct"] <= lv["anchors"] for lv in levels)


def test_run_without_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no LightningCLI config.yaml"):
        _tool()._datamodule(tmp_path)
