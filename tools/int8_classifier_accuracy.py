#!/usr/bin/env python
"""int8 vs fp32 top-1 of the classifiers, trained here from scratch on crops of the synthetic shapes.

    OMP_NUM_THREADS=1 python tools/int8_classifier_accuracy.py --out int8_cls

No ImageNet and no pretrained weights are needed: the COCO-format shapes (:func:`write_synthetic_coco`) are
cut into one square crop per non-crowd box (with a margin, zero outside the image, resized to ``--size``),
labelled with the box's class. Each classifier (GhostNet v1/v2, v3 trained multi-branch then fused, and the
torchvision MobileNetV3-Large peer, all from the model registry) is trained for a small seeded budget on the
train2017 crops, quantized by :func:`ghost_vision.deploy.quantize` with this CPU's default settings, calibrated
on train crops, and scored on the val2017 crops: fp32 top-1 (torch), fp32 onnxruntime top-1, int8 top-1,
the difference, the fp32/int8 agreement and (``--rounds``) batch-1 onnxruntime latency, rounds interleaved.
Writes ``OUT/int8_classifiers.json`` (with every prediction) and ``OUT/int8_classifiers.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn
from torchvision.ops import roi_align
from tqdm.auto import tqdm

from ghost_vision.data.coco import CocoDetection
from ghost_vision.data.synthetic import write_synthetic_coco
from ghost_vision.deploy.bench import interleaved
from ghost_vision.deploy.quantize import cpu_features, int8_settings, quantize
from ghost_vision.models import get_model, reparameterize

#: ImageNet statistics: the registry's classifiers (timm-style GhostNet, torchvision MobileNetV3) take
#: normalised tensors (ghost_vision.models.peers)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODELS = ("ghostnet_100", "ghostnetv2_100", "ghostnetv3_100", "mobilenet_v3_large")


def square_boxes(boxes: Tensor, margin: float) -> Tensor:
    """``x0 y0 x1 y1`` boxes -> squares on the same centres, side ``max(w, h) * (1 + 2 margin)``."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1, keepdim=True) * (0.5 + margin)
    return torch.cat([centre - half, centre + half], dim=1)


def shape_crops(root: Path, split: str, *, size: int, margin: float = 0.15,
                limit: int | None = None) -> dict[str, Any]:
    """One normalised ``3 x size x size`` crop per non-crowd box of ``root``'s ``split`` (``train``/``val``).

    Returns ``{"images": N x 3 x size x size, "labels": N (0..K-1), "image_ids": N, "boxes": N x 4 (the
    annotation boxes, x0 y0 x1 y1), "classes": K names}``; at most ``limit`` crops (the first images').
    """
    ds = CocoDetection(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json")
    images, labels, ids, boxes = [], [], [], []
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    for i in range(len(ds)):
        img, target = ds[i]  # CocoDetection leaves crowd regions out of target["boxes"]
        if len(target["boxes"]):
            # roi_align = crop + bilinear resize with area averaging (sampling_ratio 2), zero outside the image
            crops = roi_align(img[None], [square_boxes(target["boxes"], margin)], output_size=size,
                              spatial_scale=1.0, sampling_ratio=2, aligned=True)
            images.append((crops - mean) / std)
            labels.append(target["labels"] - 1)  # CocoDetection's 1..K (0 = background) -> 0..K-1
            ids.append(target["image_id"].expand(len(crops)))
            boxes.append(target["boxes"])
        if limit is not None and sum(map(len, labels)) >= limit:
            break
    return {"images": torch.cat(images)[:limit], "labels": torch.cat(labels)[:limit],
            "image_ids": torch.cat(ids)[:limit],
            "boxes": torch.cat(boxes)[:limit], "classes": list(ds.classes)}


def train(name: str, data: dict[str, Any], *, steps: int, batch: int, lr: float, seed: int) -> nn.Module:
    """``name`` from the registry (random init, ``K`` classes) trained ``steps`` AdamW steps (one-cycle lr,
    horizontal flips), seeded, BatchNorm statistics re-estimated; returned in eval mode (GhostNetV3
    re-parameterized: its deploy form)."""
    torch.manual_seed(seed)
    model = get_model(name, num_classes=len(data["classes"])).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = data["images"], data["labels"]
    bar = tqdm(range(steps), desc=f"train {name}", mininterval=5)
    for _ in bar:
        idx = torch.randint(len(y_all), (batch,), generator=gen)
        x = x_all[idx]
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        loss = nn.functional.cross_entropy(model(x), y_all[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    # BatchNorm statistics re-estimated on the train crops (an exact average, torch's update_bn) for every
    # model alike: torchvision's MobileNetV3 uses momentum 0.01, so after a few hundred steps its running
    # statistics still mix in the first steps' network and the eval-mode model predicts one class
    with torch.no_grad():
        update_bn([x_all[i:i + 64] for i in range(0, len(x_all), 64)], model)
    model.eval()
    return reparameterize(model)


def predict(model: nn.Module, images: Tensor, batch: int = 64) -> Tensor:
    with torch.inference_mode():
        return torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])


def top1(pred: Tensor, labels: Tensor) -> float:
    """Percent of ``pred`` equal to ``labels`` (an exact count: a float32 mean is off in the 7th digit)."""
    return 100.0 * int((pred == labels).sum()) / len(labels)


def measure(name: str, train_set: dict[str, Any], val_set: dict[str, Any], args: argparse.Namespace
            ) -> dict[str, Any]:
    t0 = time.process_time()
    model = train(name, train_set, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    train_cpu_s = time.process_time() - t0
    # calibration: train crops (never the evaluated val crops), the first ``calib`` of a seeded permutation
    perm = torch.randperm(len(train_set["labels"]), generator=torch.Generator().manual_seed(args.seed))
    calib = train_set["images"][perm[: args.calib]]
    fp32_ort = quantize(model, calib, num_images=args.calib, int8=False, threads=1)
    int8 = quantize(model, calib, num_images=args.calib, threads=1)
    labels = val_set["labels"]
    preds = {"fp32": predict(model, val_set["images"]), "fp32_ort": predict(fp32_ort, val_set["images"]),
             "int8": predict(int8, val_set["images"])}
    row: dict[str, Any] = {
        "model": name, "train_steps": args.steps, "train_cpu_s": round(train_cpu_s, 1),
        "train_top1": top1(predict(model, train_set["images"][perm[:500]]), train_set["labels"][perm[:500]]),
        "fp32_top1": top1(preds["fp32"], labels), "fp32_ort_top1": top1(preds["fp32_ort"], labels),
        "int8_top1": top1(preds["int8"], labels),
        "agreement": top1(preds["int8"], preds["fp32"]),
        "int8_meta": {k: int8.meta[k] for k in ("settings", "method", "per_channel", "calibration_images")},
        "predictions": {k: v.tolist() for k, v in preds.items()},
    }
    row["delta_points"] = row["int8_top1"] - row["fp32_top1"]
    if args.rounds:
        x = val_set["images"][:1]
        times = interleaved({"fp32_ort": lambda: fp32_ort(x), "int8": lambda: int8(x)}, rounds=args.rounds)
        row["latency_ms"] = {k: 1000 * statistics.median(v) for k, v in times.items()}
        row["latency_int8_over_fp32"] = statistics.median(a / b for a, b in zip(times["int8"], times["fp32_ort"]))
    return row


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"int8 vs fp32 top-1, {report['num_val']} val crops ({report['size']} px, {len(report['classes'])} "
        f"shape classes), trained {report['steps']} steps x {report['batch']} from scratch on "
        f"{report['num_train']} train crops; int8: {s['activation_type']}/{s['weight_type']}, "
        f"reduce_range={s['reduce_range']}, {s['format']}, MinMax, per channel, {report['calib']} train-crop "
        f"calibration images; {report['machine']} ({s['cpu']}), {report['torch_threads']} torch thread(s), "
        "onnxruntime 1 thread.", "",
        "| model | train CPU s | fp32 top-1 | fp32 ORT top-1 | int8 top-1 | int8 - fp32 (points) | agreement "
        "| ORT ms fp32 / int8 (b1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lat = r.get("latency_ms")
        ms = f"{lat['fp32_ort']:.2f} / {lat['int8']:.2f} ({r['latency_int8_over_fp32']:.2f}x)" if lat else "-"
        lines.append(f"| {r['model']} | {r['train_cpu_s']:.0f} | {r['fp32_top1']:.2f} | {r['fp32_ort_top1']:.2f} "
                     f"| {r['int8_top1']:.2f} | {r['delta_points']:+.2f} | {r['agreement']:.2f}% | {ms} |")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("int8_classifiers"))
    p.add_argument("--data", type=Path, default=Path("data_cache/shapes_int8_cls"), help="shapes COCO folder")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--num-train-images", type=int, default=400)
    p.add_argument("--num-val-images", type=int, default=150)
    p.add_argument("--max-crops", type=int, default=None, help="at most this many crops per split")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--calib", type=int, default=64, help="calibration images (train crops)")
    p.add_argument("--rounds", type=int, default=50, help="latency rounds (0: no timing)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    root = write_synthetic_coco(args.data, num_train=args.num_train_images, num_val=args.num_val_images,
                                seed=args.seed, progress=True)
    train_set = shape_crops(root, "train", size=args.size, limit=args.max_crops)
    val_set = shape_crops(root, "val", size=args.size, limit=args.max_crops)
    report: dict[str, Any] = {
        "classes": train_set["classes"], "size": args.size, "steps": args.steps, "batch": args.batch,
        "lr": args.lr, "seed": args.seed, "calib": args.calib, "num_train": len(train_set["labels"]),
        "num_val": len(val_set["labels"]), "settings": int8_settings(), "cpu_features": cpu_features(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "machine": _cpu_name(),
        "val_labels": val_set["labels"].tolist(), "val_image_ids": val_set["image_ids"].tolist(),
        "val_boxes": val_set["boxes"].tolist(), "results": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        report["results"].append(measure(name, train_set, val_set, args))
        (args.out / "int8_classifiers.json").write_text(json.dumps(report, indent=1))  # after each model
    md = markdown(report)
    (args.out / "int8_classifiers.md").write_text(md)
    print(md)
    return report


if __name__ == "__main__":
    main()
