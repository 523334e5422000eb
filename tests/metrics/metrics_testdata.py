"""Small deterministic data for the metric tests (also imported by the DDP worker processes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

# unsorted and non-contiguous on purpose: labels 1, 2, 3 must map to the *sorted* ids 3, 7, 12
CATEGORIES = [{"id": 12, "name": "kite"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]
SORTED_CAT_IDS = [3, 7, 12]
# (id, width, height); 30 has ground truth but gets no detections, 42 has no ground truth
IMAGES = [(11, 640, 480), (12, 320, 240), (15, 500, 375), (20, 640, 427), (21, 300, 300), (30, 480, 640),
          (42, 200, 150)]  # fmt: skip
# (image_id, category_id, [x, y, w, h], iscrowd): small (< 32²), medium and large boxes, one crowd region
ANNOTATIONS = [
    (11, 3, [10.0, 20.0, 200.0, 150.0], 0),  # large
    (11, 7, [300.5, 40.25, 60.0, 50.0], 0),  # medium
    (11, 12, [400.0, 300.0, 20.0, 12.0], 0),  # small
    (11, 3, [420.0, 310.0, 25.0, 30.0], 0),  # small, overlaps the previous one
    (12, 7, [5.0, 5.0, 100.0, 80.0], 0),
    (12, 7, [50.0, 30.0, 90.0, 70.0], 0),  # overlapping same-class pair
    (15, 12, [100.0, 100.0, 250.0, 200.0], 1),  # crowd region
    (15, 12, [20.0, 20.0, 40.0, 35.0], 0),
    (15, 3, [380.0, 250.0, 8.0, 9.0], 0),  # tiny
    (20, 3, [0.0, 0.0, 639.0, 426.0], 0),  # almost the whole image
    (20, 12, [200.0, 150.0, 33.0, 31.0], 0),  # small by a hair: area 1023 < 32²
    (21, 7, [10.0, 10.0, 15.0, 15.0], 0),
    (21, 7, [100.0, 100.0, 120.0, 90.0], 0),
    (30, 3, [30.0, 40.0, 100.0, 120.0], 0),
    (30, 12, [200.0, 300.0, 50.0, 40.0], 0),
]


def write_coco_gt(path: Path) -> Path:
    anns = []
    for k, (img, cat, box, crowd) in enumerate(ANNOTATIONS):
        area = box[2] * box[3] * (0.9 if k % 2 else 1.0)  # segment area differs from the box area, as in COCO
        anns.append({"id": 1000 + k, "image_id": img, "category_id": cat, "bbox": box, "area": area,
                     "iscrowd": crowd, "segmentation": [[box[0], box[1], box[0] + box[2], box[1],
                                                         box[0] + box[2], box[1] + box[3]]]})  # fmt: skip
    data = {"images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h in IMAGES],
            "categories": CATEGORIES, "annotations": anns}  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def coco_detections(image_id: int) -> dict[str, torch.Tensor]:
    """Random float32 detections for one image, a function of the id only (so padded duplicates agree)."""
    g = torch.Generator().manual_seed(image_id)
    w, h = next((w, h) for i, w, h in IMAGES if i == image_id)
    if image_id == 30:
        return {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        }
    boxes, labels = [], []
    for img, cat, (x, y, bw, bh), _ in ANNOTATIONS:
        if img != image_id:
            continue
        for _ in range(2):  # jittered hits (and near misses) of every GT, sometimes with the wrong class
            j = (torch.rand(4, generator=g) - 0.5) * 0.4 * torch.tensor([bw, bh, bw, bh])
            boxes.append(torch.tensor([x, y, x + bw, y + bh]) + j)
            wrong = torch.rand(1, generator=g).item() < 0.25
            labels.append(
                SORTED_CAT_IDS.index(cat) + 1 if not wrong else int(torch.randint(1, 4, (1,), generator=g))
            )
    n_random = 120 if image_id == 21 else 6  # image 21 exceeds maxDets=100
    for _ in range(n_random):
        xy = torch.rand(2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = 2 + torch.rand(2, generator=g) * torch.tensor([w * 0.4, h * 0.4])
        boxes.append(torch.cat([xy, xy + wh]))
        labels.append(int(torch.randint(1, 4, (1,), generator=g)))
    scores = torch.rand(len(boxes), generator=g)
    scores[:3] = 0.5  # exact ties
    return {"boxes": torch.stack(boxes).float(), "scores": scores.float(), "labels": torch.tensor(labels)}


def voc_sample(index: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(prediction, target) for a VOC-style image with integer-valued GT boxes and 3 classes."""
    rng = np.random.default_rng(index)
    n_gt = int(rng.integers(0, 5))
    xy = rng.integers(0, 80, size=(n_gt, 2))
    wh = rng.integers(5, 40, size=(n_gt, 2))
    gt = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    gl = rng.integers(1, 4, size=n_gt)
    diff = rng.random(n_gt) < 0.25
    boxes, labels = [], []
    for b, lab in zip(gt, gl, strict=True):
        for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 (duplicate) detections per GT
            boxes.append(b + rng.integers(-4, 5, size=4))
            labels.append(lab if rng.random() < 0.8 else int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 4))):
        p = rng.integers(0, 90, size=2)
        boxes.append(np.concatenate([p, p + rng.integers(3, 30, size=2)]))
        labels.append(int(rng.integers(1, 4)))
    scores = np.round(rng.random(len(boxes)), 2)  # 2 decimals: ties across images
    pred = {"boxes": torch.tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4)),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(np.array(labels, dtype=np.int64))}  # fmt: skip
    target = {"boxes": torch.tensor(gt), "labels": torch.tensor(gl, dtype=torch.int64),
              "difficult": torch.tensor(diff), "image_id": index}  # fmt: skip
    return pred, target


def seg_sample(index: int, num_classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits C×H×W, target H×W with 255 holes) for one image."""
    g = torch.Generator().manual_seed(100 + index)
    target = torch.randint(0, num_classes - 1, (12, 10), generator=g)  # the last class never in the GT
    target[torch.rand(12, 10, generator=g) < 0.1] = 255
    logits = torch.randn(num_classes, 12, 10, generator=g)
    logits += 3.0 * torch.nn.functional.one_hot(target.clamp(max=num_classes - 1), num_classes).permute(
        2, 0, 1
    )
    return logits, target


def coco_mask_detections(image_id: int) -> dict[str, torch.Tensor]:
    """:func:`coco_detections` plus ``N x 1 x H x W`` mask probabilities: the upper-right triangle of each box
    (the ground truth's shape) with values straddling the 0.5 threshold (a function of the id only)."""
    d = coco_detections(image_id)
    g = torch.Generator().manual_seed(1000 + image_id)
    w, h = next((w, h) for i, w, h in IMAGES if i == image_id)
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    masks = torch.zeros(len(d["boxes"]), 1, h, w)
    for k, (x0, y0, x1, y1) in enumerate(d["boxes"].tolist()):
        tri = (xx >= x0) & (xx <= x1) & (yy >= y0) & ((xx - x0) * (y1 - y0) >= (yy - y0) * (x1 - x0))
        masks[k, 0] = tri * (0.4 + 0.6 * torch.rand(h, w, generator=g))
    return {**d, "masks": masks}


def evaluate_indices(indices: list[int], ann_file: str, results_file: str | None = None) -> dict:
    """Feed the samples ``indices`` (in this order, batches of 2) to every metric and compute them all."""
    from ghost_vision.metrics import CocoMeanAP, SegmentationMetric, VOCMeanAP

    metrics = {
        "coco": CocoMeanAP(ann_file, results_file=results_file),
        "coco_segm": CocoMeanAP(ann_file, iou_type=("bbox", "segm"),
                                results_file=None if results_file is None else results_file.replace(".json", "_m.json")),
        "voc07": VOCMeanAP(num_classes=4, use_07_metric=True),
        "voc_area": VOCMeanAP(class_names=("a", "b", "c"), use_07_metric=False),
        "seg": SegmentationMetric(4),
        "seg_without_ids": SegmentationMetric(4),  # padded duplicates count twice: must differ under DDP
    }
    for k in range(0, len(indices), 2):
        batch = indices[k : k + 2]
        img_ids = [IMAGES[i][0] for i in batch]
        metrics["coco"].update([coco_detections(i) for i in img_ids], [{"image_id": i} for i in img_ids])
        metrics["coco_segm"].update([coco_mask_detections(i) for i in img_ids], [{"image_id": i} for i in img_ids])
        voc = [voc_sample(i) for i in batch]
        for name in ("voc07", "voc_area"):
            metrics[name].update([v[0] for v in voc], [v[1] for v in voc])
        logits, target = (torch.stack(x) for x in zip(*(seg_sample(i) for i in batch), strict=True))
        metrics["seg"].update(logits, target, image_ids=torch.tensor(batch))
        metrics["seg_without_ids"].update(logits, target)
    return {name: m.compute() for name, m in metrics.items()}


def ddp_worker(rank: int, world_size: int, port: int, out_dir: str, ann_file: str, n_images: int) -> None:
    """One gloo process: evaluate its ``DistributedSampler`` share (with padding), save the results."""
    import os

    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        sampler = DistributedSampler(
            range(n_images), num_replicas=world_size, rank=rank, shuffle=True, seed=3
        )
        indices = list(sampler)
        out = evaluate_indices(indices, ann_file, results_file=f"{out_dir}/results.json")
        torch.save({"indices": indices, "out": out}, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
