"""Mask R-CNN builders: contract, RoI poolers on the real FPN level names, backbone specs, the peer, and (slow)
a short overfit where the mask loss falls."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import MaskRCNN

from ghost_vision.models import get_model, list_models, reparameterize
from ghost_vision.models.detection import maskrcnn_ghostnet_fpn, maskrcnn_mobilenet_v3_large_fpn
from ghost_vision.models.registry import model_kind

SMALL = dict(min_size=128, max_size=160, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
             box_detections_per_img=10, box_score_thresh=0.0)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_builder_contract_and_registry():
    with pytest.raises(TypeError):
        maskrcnn_ghostnet_fpn(3)  # keyword-only
    assert model_kind("maskrcnn_ghostnet_fpn") == "detector" and "maskrcnn_ghostnet_fpn" in list_models("detector")
    assert model_kind("maskrcnn_mobilenet_v3_large_fpn") == "peer"
    torch.manual_seed(0)
    model = get_model("maskrcnn_ghostnet_fpn", num_classes=4, **SMALL).eval()
    assert isinstance(model, MaskRCNN) and model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    with torch.inference_mode():
        out = model([torch.rand(3, 128, 150), torch.rand(3, 140, 128)])
    for o, (h, w) in zip(out, [(128, 150), (140, 128)]):
        n = len(o["boxes"])
        assert n == 10 and o["masks"].shape == (n, 1, h, w) and o["masks"].dtype == torch.float32
        assert 0 <= o["masks"].min() and o["masks"].max() <= 1
    with pytest.raises(ValueError, match="mask_head_convs"):
        maskrcnn_ghostnet_fpn(num_classes=3, mask_head_convs=-1)


@pytest.mark.parametrize("build, kwargs, names, pooled", [
    (maskrcnn_ghostnet_fpn, {}, ["0", "1"], ["0", "1"]),
    (maskrcnn_ghostnet_fpn, {"returned_layers": [2, 3, 4]}, ["0", "1", "2"], ["0", "1", "2"]),
    (maskrcnn_ghostnet_fpn, {"backbone": "ghostnetv2_100", "returned_layers": [1, 2, 3, 4]}, ["0", "1", "2", "3"],
     ["0", "1", "2", "3"]),
    # torchvision's MobileNetV3 FPN returns two stride-32 maps: RoIAlign's level mapper sends every box to the
    # first (as in torchvision's own fasterrcnn_mobilenet_v3_large_fpn); the RPN uses both
    (maskrcnn_mobilenet_v3_large_fpn, {}, ["0", "1"], ["0"]),
])
def test_roi_poolers_read_every_real_fpn_level(build, kwargs, names, pooled):
    torch.manual_seed(0)
    model = build(num_classes=3, **kwargs).eval()
    feats = model.backbone(torch.rand(1, 3, 512, 512))
    assert list(feats) == names + ["pool"]  # what the FPN really produces
    for pooler in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        assert pooler.featmap_names == names
        # every level is really pooled: boxes of all sizes, and changing one level changes some pooled RoIs
        # (a wrong name is skipped by torchvision without a word: that level would change nothing)
        # (torchvision maps a k x k box to level 4 + log2(k / 224), clamped to the levels there are)
        boxes = [torch.tensor([[0.0, 0.0, 8, 8], [10, 10, 60, 60], [0, 0, 130, 130], [20, 30, 250, 240], [0, 0, 300, 300],
                               [0, 0, 511, 511]])]
        ref = pooler(feats, boxes, [(512, 512)])
        for name in names:
            changed = dict(feats)
            changed[name] = feats[name] + 1.0
            assert torch.equal(pooler(changed, boxes, [(512, 512)]), ref) == (name not in pooled), name
    assert len(model.rpn.anchor_generator.sizes) == len(names) + 1


def test_backbone_specs_widths_v3_and_fused_v3():
    torch.manual_seed(0)
    half = maskrcnn_ghostnet_fpn(num_classes=3, width=0.5, **SMALL)
    assert half.backbone.body.out_channels == get_model("ghostnet_050", features_only=True, out_indices=(3, 4)).out_channels
    v3 = maskrcnn_ghostnet_fpn(num_classes=3, backbone="ghostnetv3_050", **SMALL).eval()
    x = [torch.rand(3, 128, 128)]
    with torch.inference_mode():
        ref = v3(x)[0]
        fused = reparameterize(v3)(x)[0]  # the deploy form predicts the same
    torch.testing.assert_close(fused["boxes"], ref["boxes"], rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(fused["masks"], ref["masks"], rtol=1e-3, atol=1e-3)


def test_mask_head_convs_and_peer_like_for_like():
    convs = [maskrcnn_ghostnet_fpn(num_classes=3, mask_head_convs=k).roi_heads.mask_head for k in (4, 2, 0)]
    assert [len(c) for c in convs] == [4, 2, 0]
    per_conv = 256 * 256 * 9 + 256
    params = [sum(p.numel() for p in c.parameters()) for c in convs]
    assert params == [4 * per_conv, 2 * per_conv, 0]
    ghost, peer = maskrcnn_ghostnet_fpn(num_classes=3), maskrcnn_mobilenet_v3_large_fpn(num_classes=3)
    for part in ("rpn", "roi_heads"):  # identical heads: only the backbones differ
        shapes = [[tuple(p.shape) for p in getattr(m, part).parameters()] for m in (ghost, peer)]
        assert shapes[0] == shapes[1]
    assert ghost.rpn.anchor_generator.sizes == peer.rpn.anchor_generator.sizes


@pytest.mark.slow
def test_mask_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    size = 160
    images, targets = [], []
    for boxes, labels in (([[20, 30, 90, 120], [100, 40, 150, 110]], [1, 2]), ([[30, 30, 130, 100]], [2])):
        img = 0.2 * torch.rand(3, size, size, generator=g)
        masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
        for k, ((x0, y0, x1, y1), label) in enumerate(zip(boxes, labels)):
            # an ellipse in its box: the mask is not the box, so the mask head has something to learn
            yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
            inside = ((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 + ((yy - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2 < 1
            masks[k] = inside.to(torch.uint8)
            img[:, inside] = torch.tensor([1.0, 0.2, 0.2] if label == 1 else [0.2, 0.3, 1.0])[:, None]
        images.append(img)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                        "masks": masks})
    model = maskrcnn_ghostnet_fpn(num_classes=3, min_size=size, max_size=size).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mask_losses = []
    for _ in range(41):  # up to 40 updates; stops as soon as the mask loss has halved
        losses = model(images, targets)
        mask_losses.append(losses["loss_mask"].item())
        if mask_losses[-1] < 0.5 * mask_losses[0]:
            break
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert mask_losses[-1] < 0.5 * mask_losses[0], mask_losses


def test_onnx_export_of_the_network_checked_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    from ghost_vision.deploy.export import export_onnx

    torch.manual_seed(0)
    model = maskrcnn_ghostnet_fpn(num_classes=3, **SMALL).eval()
    # backbone + FPN + RPN head, as for Faster R-CNN: proposals, RoI heads and mask pasting stay in Python
    rep = export_onnx(model, torch.rand(1, 3, 128, 128), tmp_path / "maskrcnn.onnx")
    assert len(rep["outputs"]) == 3 + 2 * 3  # maps "0", "1", "pool"; objectness and box deltas per map
    assert rep["dynamic_batch"] and rep["dynamic_size"] and len(rep["checked_shapes"]) == 3
    assert rep["max_abs_diff"] <= 1e-4


def test_draw_detections_overlays_instance_masks():
    from ghost_vision.visualize import PALETTE, draw_detections

    image = torch.zeros(3, 40, 50)
    masks = torch.zeros(2, 1, 40, 50)
    masks[0, 0, 5:15, 5:20] = 0.9  # kept
    masks[1, 0, 25:35, 30:45] = 0.9  # scored below the threshold: not drawn
    pred = {"boxes": torch.tensor([[5.0, 5, 20, 15], [30, 25, 45, 35]]), "labels": torch.tensor([1, 2]),
            "scores": torch.tensor([0.9, 0.1]), "masks": masks}
    drawn = draw_detections(image, pred, score_thresh=0.3, width=1)
    inside = drawn[:, 10, 12].tolist()  # alpha 0.45 of the label's colour over black
    assert inside == [round(0.45 * c) for c in PALETTE[1]] or inside == [int(0.45 * c) for c in PALETTE[1]]
    assert drawn[:, 30, 37].tolist() == [0, 0, 0]
    boxes_only = draw_detections(image, {k: v for k, v in pred.items() if k != "masks"}, score_thresh=0.3, width=1)
    assert boxes_only[:, 10, 12].tolist() == [0, 0, 0]


def test_fast_path_predicts_the_same_boxes_and_masks():
    from ghost_vision.deploy import optimize

    torch.manual_seed(0)
    model = maskrcnn_ghostnet_fpn(num_classes=3, **SMALL).eval()
    fast = optimize(model)
    x = [torch.rand(3, 128, 128)]
    with torch.inference_mode():
        ref, got = model(x)[0], fast(x)[0]
    assert len(ref["boxes"]) == 10
    for key in ("boxes", "scores", "masks"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-4)
    assert torch.equal(got["labels"], ref["labels"])


@pytest.mark.parametrize("module", ["ghost_vision.models.detection.maskrcnn", "ghost_vision.data.masks"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_task_scales_masks_back_and_needs_the_coco_metric_for_segm():
    from ghost_vision.tasks import DetectionTask

    with pytest.raises(ValueError, match="needs metric='coco'"):
        DetectionTask("maskrcnn_ghostnet_fpn", num_classes=3, metric="voc07", iou_type=["bbox", "segm"])
    with pytest.raises(ValueError, match="iou_type"):
        DetectionTask("maskrcnn_ghostnet_fpn", num_classes=3, iou_type="keypoints")
    masks = torch.zeros(1, 1, 10, 20)
    masks[0, 0, 2:6, 4:12] = 1.0
    pred = {"boxes": torch.tensor([[4.0, 2, 12, 6]]), "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.long),
            "masks": masks}
    target = {"boxes": torch.zeros(0, 4), "orig_size": torch.tensor([20, 40])}
    (p,), _ = DetectionTask.to_original_size([pred], [torch.zeros(3, 10, 20)], [target])
    assert p["masks"].shape == (1, 1, 20, 40) and p["boxes"].tolist() == [[8.0, 4.0, 24.0, 12.0]]
    inside = (p["masks"][0, 0] > 0.5).nonzero()
    assert inside[:, 0].min() == 4 and inside[:, 0].max() == 11 and inside[:, 1].min() == 8 and inside[:, 1].max() == 23
