#!/usr/bin/env python
"""Where does an SSD(Lite) lose? Its losses split by feature map, on held-out images, for trained runs side by side.

    python tools/ssdlite_level_losses.py RUN_DIR [RUN_DIR ...] [--batches 8] [--out level_losses.json]

Each ``RUN_DIR`` is a training run (``ghost-vision train`` or a ``train-benchmark`` run folder): its
``checkpoints/last.ckpt`` is loaded with :func:`ghost_vision.tasks.load_task` and its validation images come from
the DataModule in its LightningCLI ``config.yaml`` (read from the working directory the run used). For every
feature map (20, 10, 5, 3, 2, 1 cells wide at 320 px) it reports, over the anchors torchvision's matcher assigns
to an object: their number, the box-regression loss per matched anchor (torchvision's smooth-L1 on the encoded
boxes), the classification cross-entropy per matched anchor and how often the top class is right. The model
runs in eval mode (running BatchNorm statistics), as it is validated.

Hand-written because torchvision's ``SSD.compute_loss`` returns only the totals over all maps; the per-map sums
here add up to exactly its box-regression loss (a test checks), so the split is the same loss, not another.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

from ghost_vision.tasks import load_task


@torch.no_grad()
def level_losses(model: SSD, images: list[Tensor], targets: list[dict[str, Tensor]]) -> list[dict[str, float]]:
    """Per feature map of ``model``: ``anchors`` (matched to an object), ``box_sum`` (smooth-L1, summed),
    ``ce_sum`` (cross-entropy of the matched anchors, summed), ``correct`` (top class right), ``cells``.
    Images without boxes are skipped (nothing is matched there)."""
    images_t, targets_t = model.transform(images, targets)
    features = list(model.backbone(images_t.tensors).values())
    head = model.head(features)
    anchors = model.anchor_generator(images_t, features)
    per_loc = model.anchor_generator.num_anchors_per_location()
    sizes = [f.shape[-2] * f.shape[-1] * n for f, n in zip(features, per_loc)]
    out = [{"cells": f.shape[-2] * f.shape[-1], "anchors": 0, "box_sum": 0.0, "ce_sum": 0.0, "correct": 0}
           for f in features]
    for t, a, reg, logits in zip(targets_t, anchors, head["bbox_regression"], head["cls_logits"]):
        if t["boxes"].numel() == 0:
            continue
        matched = model.proposal_matcher(box_iou(t["boxes"], a))
        fg = matched >= 0
        gt = matched.clamp(min=0)
        box = F.smooth_l1_loss(reg, model.box_coder.encode_single(t["boxes"][gt], a), reduction="none").sum(1)
        labels = t["labels"][gt]
        ce = F.cross_entropy(logits, labels, reduction="none")
        right = logits.argmax(1) == labels
        start = 0
        for level, n in zip(out, sizes):
            sel = fg[start:start + n]
            level["anchors"] += int(sel.sum())
            level["box_sum"] += float(box[start:start + n][sel].sum())
            level["ce_sum"] += float(ce[start:start + n][sel].sum())
            level["correct"] += int(right[start:start + n][sel].sum())
            start += n
    return out


def _datamodule(run: Path) -> Any:
    configs = sorted(run.glob("logs/version_*/config.yaml")) or sorted(run.glob("**/config.yaml"))
    if not configs:
        raise FileNotFoundError(f"{run}: no LightningCLI config.yaml under logs/; is it a ghost-vision training run?")
    data = yaml.safe_load(configs[-1].read_text())["data"]
    module, _, name = data["class_path"].rpartition(".")
    dm = getattr(importlib.import_module(module), name)(**{**data.get("init_args", {}), "num_workers": 0})
    dm.prepare_data()
    dm.setup("validate")
    return dm


def evaluate_run(run: Path, batches: int) -> dict[str, Any]:
    ckpt = run / "checkpoints" / "last.ckpt"
    model = load_task(ckpt).eval().model
    if not isinstance(model, SSD):
        raise ValueError(f"{ckpt}: {type(model).__name__} is not a torchvision SSD (SSDLite); this tool splits SSD's loss")
    totals: list[dict[str, float]] | None = None
    for i, (images, targets) in enumerate(_datamodule(run).val_dataloader()):
        if i == batches:
            break
        levels = level_losses(model, list(images), [{k: t[k] for k in ("boxes", "labels")} for t in targets])
        totals = levels if totals is None else [{k: a[k] + b[k] if k != "cells" else a[k] for k in a}
                                                for a, b in zip(totals, levels)]
    rows = [{"map": i, "cells": lv["cells"], "anchors": lv["anchors"],
             "box_per_anchor": lv["box_sum"] / max(lv["anchors"], 1),
             "ce_per_anchor": lv["ce_sum"] / max(lv["anchors"], 1),
             "accuracy": lv["correct"] / max(lv["anchors"], 1)} for i, lv in enumerate(totals or [])]
    return {"run": str(run), "levels": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders (checkpoints/last.ckpt, logs/)")
    parser.add_argument("--batches", type=int, default=8, help="validation batches to use (default 8)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    results = [evaluate_run(run, args.batches) for run in args.runs]
    for r in results:
        print(r["run"])
        print("  map  cells  matched  box/anchor  CE/anchor  accuracy")
        for lv in r["levels"]:
            print(f"  {lv['map']:>3}  {lv['cells']:>5}  {lv['anchors']:>7}  {lv['box_per_anchor']:>10.3f}  "
                  f"{lv['ce_per_anchor']:>9.3f}  {lv['accuracy']:>8.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
