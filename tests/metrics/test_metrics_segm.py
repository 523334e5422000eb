"""CocoMeanAP(iou_type=("bbox", "segm")) against pycocotools' COCOeval run directly (exact equality), on the
real COCO polygons / crowd RLEs of ``shared/datasets/labelbox_coco_masks``."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ghost_vision.data.io import DataError
from ghost_vision.metrics import COCO_STAT_NAMES, CocoMeanAP


@pytest.fixture(scope="module")
def gt(labelbox_masks):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(labelbox_masks / "rle.json"))


def fake_predictions(gt: COCO, seed: int = 0) -> dict[int, dict]:
    """Per image: shifted / eroded copies of the non-crowd ground-truth masks with soft probabilities, a few
    with the wrong class, plus false positives; masks are ``N x 1 x H x W`` float probabilities."""
    rng = np.random.default_rng(seed)
    cats = sorted(gt.getCatIds())
    out = {}
    for img_id in sorted(gt.getImgIds()):
        info = gt.imgs[img_id]
        h, w = info["height"], info["width"]
        masks, boxes, scores, labels = [], [], [], []
        for a in gt.imgToAnns[img_id]:
            if a["iscrowd"] or rng.random() < 0.2:
                continue
            m = gt.annToMask(a).astype(np.float32)
            m = np.roll(m, tuple(rng.integers(-4, 5, 2)), axis=(0, 1)) * rng.uniform(0.45, 1.0, m.shape)
            x, y, bw, bh = a["bbox"]
            label = cats.index(a["category_id"]) + 1 if rng.random() < 0.9 else int(rng.integers(1, len(cats) + 1))
            masks.append(m), boxes.append([x, y, x + bw, y + bh]), scores.append(rng.random()), labels.append(label)
        for _ in range(int(rng.integers(0, 4))):  # false positives
            m = np.zeros((h, w), np.float32)
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            m[y0:y0 + 30, x0:x0 + 35] = 0.9
            masks.append(m), boxes.append([x0, y0, x0 + 35, y0 + 30]), scores.append(rng.random() * 0.5)
            labels.append(int(rng.integers(1, len(cats) + 1)))
        out[img_id] = {
            "masks": torch.from_numpy(np.stack(masks)[:, None]) if masks else torch.zeros(0, 1, h, w),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
    return out


def reference(gt: COCO, preds: dict[int, dict], iou_type: str, tmp_path) -> list[float]:
    """pycocotools the usual way: a results JSON (RLE of mask > 0.5, no bbox for segm) -> loadRes -> COCOeval."""
    cats = sorted(gt.getCatIds())
    results = []
    for img_id, p in preds.items():
        for m, b, s, lab in zip(p["masks"][:, 0].numpy(), p["boxes"].tolist(), p["scores"].tolist(),
                                p["labels"].tolist(), strict=True):
            r = {"image_id": img_id, "category_id": cats[lab - 1], "score": s}
            if iou_type == "segm":
                rle = mask_utils.encode(np.asfortranarray((m > 0.5).astype(np.uint8)))
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:
                r["bbox"] = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
            results.append(r)
    path = tmp_path / f"ref_{iou_type}.json"
    path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(str(path)), iou_type)
        ev.params.imgIds = sorted(preds)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats.tolist()


def test_segm_equals_pycocotools_on_real_masks(labelbox_masks, gt, tmp_path):
    preds = fake_predictions(gt)
    metric = CocoMeanAP(labelbox_masks / "rle.json", iou_type=("bbox", "segm"))
    ids = sorted(preds)
    for k in range(0, len(ids), 3):
        metric.update([preds[i] for i in ids[k:k + 3]], [{"image_id": i} for i in ids[k:k + 3]])
    out = metric.compute()
    names = list(COCO_STAT_NAMES)
    assert list(out) == names + [f"segm_{n}" for n in names]
    segm = [out[f"segm_{n}"].item() for n in names]
    assert segm == reference(gt, preds, "segm", tmp_path)
    assert [out[n].item() for n in names] == reference(gt, preds, "bbox", tmp_path)
    assert 0.05 < out["segm_map"].item() < 0.95 and segm != [out[n].item() for n in names]
    # the RLEs are what is stored, not dense masks: well under a byte per 100 pixels here
    stored = sum(t.numel() for t in metric.rle_bytes)
    assert stored < sum(p["masks"][0, 0].numel() * len(p["masks"]) for p in preds.values()) / 100


def test_bbox_only_metric_is_unchanged_by_masks(labelbox_masks, gt):
    preds = fake_predictions(gt, seed=1)
    both = CocoMeanAP(labelbox_masks / "rle.json", iou_type=("bbox", "segm"))
    bbox = CocoMeanAP(labelbox_masks / "rle.json")
    for img_id, p in preds.items():
        both.update([p], [{"image_id": img_id}])
        bbox.update([{k: v for k, v in p.items() if k != "masks"}], [{"image_id": img_id}])
    a, b = both.compute(), bbox.compute()
    assert list(b) == list(COCO_STAT_NAMES) and all(torch.equal(a[k], b[k]) for k in b)
    assert not hasattr(bbox, "rle_bytes")


def test_segm_needs_masks_and_valid_ground_truth(labelbox_masks, tmp_path):
    metric = CocoMeanAP(labelbox_masks / "rle.json", iou_type="segm")
    with pytest.raises(KeyError, match="masks"):
        metric.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}],
                      [{"image_id": 129054}])
    data = json.loads((labelbox_masks / "rle.json").read_text())
    bad = next(a for a in data["annotations"] if not a["iscrowd"])
    bad["segmentation"][0] = bad["segmentation"][0][:-1]  # odd length
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"annotation id {bad['id']}.*polygon 0 has \d+ numbers"):
        CocoMeanAP(path, iou_type=("bbox", "segm"))
    with pytest.raises(ValueError, match="iou_type"):
        CocoMeanAP(labelbox_masks / "rle.json", iou_type="keypoints")
