"""Pascal VOC mAP@0.5 computed exactly as the devkit's ``voc_eval.py`` (py-faster-rcnn, detectron2).

Hand-written on purpose: no maintained library reproduces the devkit (torchmetrics' and pycocotools' AP use
101-point COCO interpolation and treat "difficult"/crowd objects differently). The rules reproduced here:

- per class, all detections of the split are sorted by score (descending, *stable*; ties keep the order
  of ascending ``image_id`` then the detector's order, so that 1 and N processes agree — the devkit's
  ``np.argsort`` leaves tie order unspecified);
- each detection is compared with *every* ground truth box of its class in its image and assigned to the
  one of largest IoU; ``IoU > iou_threshold`` (strict, as ``voc_eval.py``; the MATLAB ``VOCevaldet.m``
  uses ``>=``, which only differs for an IoU of exactly 0.5): a difficult GT makes the detection neither
  TP nor FP; an already matched GT makes it a FP (no fallback to the second-best GT); otherwise TP;
- ``npos`` counts the non-difficult GT; ``rec = tp / npos``, ``prec = tp / max(tp + fp, eps)``;
- VOC2007 (``use_07_metric=True``): mean over ``t in np.arange(0, 1.1, 0.1)`` of ``max(prec[rec >= t])``
  (0 if empty) — these are the devkit's float thresholds, e.g. 0.30000000000000004;
  VOC2010+: area under the monotone (right-to-left running max) precision envelope.

Classes without any non-difficult GT in the images seen get ``nan`` AP and are **excluded** from ``map``
(the devkit would divide by ``npos = 0``; VOC itself never has such a class).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from ghost_vision.metrics.per_image import first_occurrence_mask

__all__ = ["VOCMeanAP", "voc_ap", "voc_box_iou", "voc_eval_class"]


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = True) -> float:
    """AP from a recall/precision curve, same operations as the devkit's ``voc_ap``.

    Example:
        >>> import numpy as np
        >>> recall, precision = np.array([0.5, 1.0]), np.array([1.0, 0.5])
        >>> round(voc_ap(recall, precision, use_07_metric=False), 4), round(voc_ap(recall, precision), 4)
        (0.75, 0.7727)
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_box_iou(box: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of ``gt`` (continuous 0-based pixel coordinates).

    The devkit works on 1-based inclusive pixel indices and adds 1 to every width and height. Our boxes
    are continuous with ``x1 = xmin - 1`` and ``x2 = xmax``, so its ``xmax - xmin + 1`` is our ``x2 - x1``
    and its intersection ``min(xmax) - max(xmin) + 1`` is our ``min(x2) - max(x1)``: no ``+1`` here, and the
    result equals the devkit's for boxes converted from VOC's 1-based inclusive coordinates.

    Example:
        >>> import numpy as np
        >>> voc_box_iou(np.array([0.0, 0.0, 10.0, 10.0]), np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])).round(4)
        array([1.    , 0.3333])
    """
    ixmin = np.maximum(gt[:, 0], box[0])
    iymin = np.maximum(gt[:, 1], box[1])
    ixmax = np.minimum(gt[:, 2], box[2])
    iymax = np.minimum(gt[:, 3], box[3])
    iw = np.maximum(ixmax - ixmin, 0.0)
    ih = np.maximum(iymax - iymin, 0.0)
    inters = iw * ih
    uni = (box[2] - box[0]) * (box[3] - box[1]) + (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) - inters
    return inters / uni


def voc_eval_class(
    dets: Sequence[tuple[Any, np.ndarray, np.ndarray]],
    gts: Mapping[Any, tuple[np.ndarray, np.ndarray]],
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Devkit evaluation of one class.

    Args:
        dets: per image ``(image_key, boxes N×4, scores N)``, in a fixed image order.
        gts: ``image_key -> (boxes M×4, difficult M bool)`` for every image seen (also without GT).
    Returns:
        ``(ap, rec, prec)``; ``ap`` is ``nan`` when there is no non-difficult GT (``npos == 0``).

    Example:
        >>> import numpy as np
        >>> gts = {"img1": (np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([False]))}
        >>> dets = [("img1", np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]), np.array([0.9, 0.8]))]
        >>> ap, rec, prec = voc_eval_class(dets, gts)
        >>> round(ap, 4), rec.tolist(), prec.tolist()
        (1.0, [1.0, 1.0], [1.0, 0.5])
    """
    npos = int(sum(int((~np.asarray(d, dtype=bool)).sum()) for _, d in gts.values()))
    keys = [k for k, b, _ in dets for _ in range(len(b))]
    boxes = np.concatenate(
        [np.asarray(b, np.float64).reshape(-1, 4) for _, b, _ in dets] or [np.zeros((0, 4))]
    )
    scores = np.concatenate([np.asarray(s, np.float64).reshape(-1) for _, _, s in dets] or [np.zeros(0)])
    order = np.argsort(-scores, kind="stable")
    matched = {k: np.zeros(len(g[0]), dtype=bool) for k, g in gts.items()}
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for d, j in enumerate(order):
        gt_boxes, difficult = gts[keys[j]]
        ovmax = -np.inf
        if len(gt_boxes) > 0:
            overlaps = voc_box_iou(boxes[j], np.asarray(gt_boxes, np.float64).reshape(-1, 4))
            ovmax = np.max(overlaps)
            jmax = int(np.argmax(overlaps))
        if ovmax > iou_threshold:
            if not difficult[jmax]:
                if not matched[keys[j]][jmax]:
                    tp[d] = 1.0
                    matched[keys[j]][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    if npos == 0:
        return float("nan"), tp * np.nan, tp * np.nan
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07_metric), rec, prec


class VOCMeanAP(Metric):
    """Pascal VOC mAP at IoU 0.5 as the official devkit computes it, DDP-safe.

    As everywhere in the package, ``num_classes`` counts the background (21 for VOC, the datamodule's
    ``num_classes``) while ``class_names`` does not (``VOCDetection.classes``). Labels are 1..K, K =
    ``num_classes - 1``; ``ap_per_class[i]`` belongs to label ``i + 1`` (and to ``class_names[i]``). The
    evaluation set must keep difficult objects (``VOCDetection(..., keep_difficult=True)``) for the devkit's
    numbers. Targets carry ``boxes`` (xyxy, continuous 0-based pixels, the predictions' frame),
    ``labels``, optional ``difficult`` (bool, default all False) and an integer ``image_id``; a repeated
    ``image_id`` (``DistributedSampler`` padding) is dropped, keeping the first occurrence.

    ``compute()`` returns ``map`` (float64, mean over the classes with non-difficult GT), ``ap_per_class``
    (float64, K values, ``nan`` for classes without GT) and ``method`` (``"voc07_11point"`` or
    ``"area"``; a string, so leave it out when passing the dict to ``LightningModule.log_dict``).

    Example:
        >>> metric = VOCMeanAP(class_names=("raccoon",), use_07_metric=False)
        >>> metric.update(
        ...     [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]),
        ...       "labels": torch.tensor([1])}],
        ...     [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 9.0]]), "labels": torch.tensor([1]),
        ...       "image_id": 0}])
        >>> metric.compute()["map"]
        tensor(1., dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        iou_threshold: float = 0.5,
        use_07_metric: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if class_names is not None:
            class_names = tuple(class_names)
            if num_classes is not None and num_classes != len(class_names) + 1:
                raise ValueError(
                    f"num_classes={num_classes} (with background) "
                    f"but {len(class_names)} class_names (without)"
                )
            num_classes = len(class_names) + 1
        if num_classes is None or num_classes < 2:
            raise ValueError("give num_classes (with background: labels 1..num_classes-1) or class_names")
        self.num_classes = int(num_classes)
        self.num_foreground = self.num_classes - 1
        self.class_names = class_names
        self.iou_threshold = float(iou_threshold)
        self.use_07_metric = bool(use_07_metric)
        self.method = "voc07_11point" if use_07_metric else "area"
        # flat "cat" states with per-image counts (torchmetrics concatenates list states before gathering)
        for name in ("image_ids", "num_dets", "det_boxes", "det_scores", "det_labels",
                     "num_gts", "gt_boxes", "gt_labels", "gt_difficult"):  # fmt: skip
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add one batch of detections (``boxes``, ``scores``, ``labels``) and their targets."""
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        dev = self.device

        def f64(x: Any, shape: tuple[int, ...]) -> Tensor:
            # float64 widening is exact: nothing is rounded
            return torch.as_tensor(x).detach().reshape(shape).to(dev, torch.float64)

        def i64(x: Any) -> Tensor:
            return torch.as_tensor(x).detach().reshape(-1).to(dev, torch.int64)

        ids, nd, ng = [], [], []
        db, ds, dl, gb, gl, gd = [], [], [], [], [], []
        for p, t in zip(preds, targets, strict=True):
            if "image_id" not in t:
                raise KeyError("each target needs an integer 'image_id'")
            ids.append(int(torch.as_tensor(t["image_id"]).reshape(()).item()))
            b, s, lab = f64(p["boxes"], (-1, 4)), f64(p["scores"], (-1,)), i64(p["labels"])
            if not (len(b) == len(s) == len(lab)):
                raise ValueError("boxes, scores and labels of one image must have the same length")
            tb, tl = f64(t["boxes"], (-1, 4)), i64(t["labels"])
            diff = t.get("difficult")
            td = torch.zeros(len(tl), dtype=torch.bool, device=dev) if diff is None else i64(diff).bool()
            if not (len(tb) == len(tl) == len(td)):
                raise ValueError("target boxes, labels and difficult must have the same length")
            for name, labels_ in (("predicted", lab), ("target", tl)):
                if len(labels_) and (labels_.min() < 1 or labels_.max() > self.num_foreground):
                    raise ValueError(
                        f"{name} labels must be in 1..{self.num_foreground}, got {labels_.tolist()}"
                    )
            nd.append(len(b))
            ng.append(len(tb))
            db.append(b), ds.append(s), dl.append(lab), gb.append(tb), gl.append(tl), gd.append(td)
        self.image_ids.append(torch.tensor(ids, dtype=torch.int64, device=dev))
        self.num_dets.append(torch.tensor(nd, dtype=torch.int64, device=dev))
        self.num_gts.append(torch.tensor(ng, dtype=torch.int64, device=dev))
        for state, parts, empty in (
            (self.det_boxes, db, (0, 4)), (self.det_scores, ds, (0,)), (self.det_labels, dl, (0,)),
            (self.gt_boxes, gb, (0, 4)), (self.gt_labels, gl, (0,)), (self.gt_difficult, gd, (0,)),
        ):  # fmt: skip
            dtype = parts[0].dtype if parts else torch.float64
            state.append(torch.cat(parts) if parts else torch.zeros(empty, dtype=dtype, device=dev))

    def compute(self) -> dict[str, Any]:
        if isinstance(self.image_ids, list) and not self.image_ids:
            nan = torch.full((self.num_foreground,), float("nan"), dtype=torch.float64)
            return {"map": torch.tensor(float("nan"), dtype=torch.float64), "ap_per_class": nan,
                    "method": self.method}  # fmt: skip

        def cat(x: Any) -> np.ndarray:
            return dim_zero_cat(x).cpu().numpy()

        # (a rank that saw nothing contributes an empty float tensor to the gather: cast back)
        ids = cat(self.image_ids).astype(np.int64)
        nd, ng = cat(self.num_dets).astype(np.int64), cat(self.num_gts).astype(np.int64)
        db, ds, dl = (
            cat(self.det_boxes).reshape(-1, 4),
            cat(self.det_scores),
            cat(self.det_labels).astype(np.int64),
        )
        gb, gl = cat(self.gt_boxes).reshape(-1, 4), cat(self.gt_labels).astype(np.int64)
        gd = cat(self.gt_difficult).astype(bool)
        d_off = np.concatenate(([0], np.cumsum(nd)))
        g_off = np.concatenate(([0], np.cumsum(ng)))
        keep = first_occurrence_mask(torch.from_numpy(ids)).numpy()
        # canonical image order (ascending id) so that ties in score resolve the same on 1 or N processes
        images = sorted((int(ids[i]), i) for i in np.flatnonzero(keep))
        aps = np.full(self.num_foreground, np.nan)
        for c in range(1, self.num_foreground + 1):
            dets, gts = [], {}
            for img_id, i in images:
                d = slice(d_off[i], d_off[i + 1])
                dm = dl[d] == c
                dets.append((img_id, db[d][dm], ds[d][dm]))
                g = slice(g_off[i], g_off[i + 1])
                gm = gl[g] == c
                gts[img_id] = (gb[g][gm], gd[g][gm])
            aps[c - 1] = voc_eval_class(
                dets, gts, iou_threshold=self.iou_threshold, use_07_metric=self.use_07_metric
            )[0]
        valid = aps[~np.isnan(aps)]
        mean = float(np.mean(valid)) if len(valid) else float("nan")
        return {
            "map": torch.tensor(mean, dtype=torch.float64),
            "ap_per_class": torch.from_numpy(aps),
            "method": self.method,
        }
