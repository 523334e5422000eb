"""COCO box and mask mAP as a torchmetrics ``Metric`` that reproduces pycocotools' ``COCOeval`` exactly.

The metric only *collects* detections (as float64 tensors, so DDP ranks can all-gather them) and hands the
evaluation itself to pycocotools, so the numbers are the official ones. Three details make them identical to
running pycocotools directly on the same detections:

- No rounding: boxes and scores are stored as float64 (an exact widening of float32/float16/bfloat16),
  converted to Python floats and to ``[x1, y1, x2 - x1, y2 - y1]`` in float64, which is what
  ``json.dump``/``json.load`` of the results file round-trips bit for bit.
- ``params.imgIds`` is exactly the set of images seen, including images without detections.
- Entries repeated by ``DistributedSampler`` padding (same ``image_id``) are dropped, keeping the first
  occurrence, and the results are ordered by ``image_id`` (stable, so the per-image order of detections
  is kept). COCOeval's outcome depends only on the per-image order, so 1 and N processes agree.

Masks (``iou_type`` with ``"segm"``): torchvision's ``N x 1 x H x W`` probabilities are thresholded at 0.5 and
RLE-encoded by pycocotools in ``update`` (never kept dense); the compressed RLE strings are stored as bytes in a
flat uint8 state with one length per detection, so they all-gather like the boxes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from ghost_vision.metrics.coco_masks import (
    category_id,
    check_gt_segmentations,
    masks_to_rles,
    segmentations_to_coco_results,
)
from ghost_vision.metrics.per_image import first_occurrence_mask

__all__ = [
    "COCO_STAT_NAMES",
    "IOU_TYPES",
    "CocoMeanAP",
    "coco_evaluate",
    "coco_mean_ap",
    "detections_to_coco_results",
    "first_occurrence_mask",
    "masks_to_rles",
    "segmentations_to_coco_results",
]

#: Names of ``COCOeval.stats`` for ``iou_type="bbox"``, in its order.
COCO_STAT_NAMES = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)  # fmt: skip
#: The ``iou_type`` values implemented; ``"segm"`` stats are named ``segm_`` + :data:`COCO_STAT_NAMES`.
IOU_TYPES = ("bbox", "segm")


def _iou_types(iou_type: str | Sequence[str]) -> tuple[str, ...]:
    types = (iou_type,) if isinstance(iou_type, str) else tuple(iou_type)
    if not types or any(t not in IOU_TYPES for t in types) or len(set(types)) != len(types):
        raise ValueError(f"iou_type must be one of {IOU_TYPES} or a list of them without repeats, got {iou_type!r}")
    return types



def _image_id(target: Mapping[str, Any]) -> int:
    if "image_id" not in target:
        raise KeyError("each target needs an 'image_id' (the original COCO image id)")
    return int(torch.as_tensor(target["image_id"]).reshape(()).item())


def _quiet(verbose: bool):
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _load_coco(ann_file: str | Path | COCO, verbose: bool = False) -> COCO:
    if isinstance(ann_file, COCO):
        return ann_file
    from ghost_vision.data.coco import load_coco_json  # validates every record (pycocotools checks nothing)

    return load_coco_json(ann_file, evaluation=True)


def _default_label_map(coco: COCO) -> dict[int, int]:
    return {i + 1: int(cat_id) for i, cat_id in enumerate(sorted(coco.getCatIds()))}


def _normalize_label_map(label_to_cat_id: Mapping[int, int] | Sequence[int]) -> dict[int, int]:
    if isinstance(label_to_cat_id, Mapping):
        return {int(k): int(v) for k, v in label_to_cat_id.items()}
    # a list/tuple: position = label, value = category id (None marks an unused label such as background)
    return {i: int(v) for i, v in enumerate(label_to_cat_id) if v is not None}


def detections_to_coco_results(
    boxes: Sequence[Tensor],
    scores: Sequence[Tensor],
    labels: Sequence[Tensor],
    image_ids: Sequence[int],
    label_to_cat_id: Mapping[int, int],
) -> list[dict[str, Any]]:
    """Per-image xyxy detections → COCO results ``[{image_id, category_id, bbox, score}]``.

    Boxes become ``[x1, y1, x2 - x1, y2 - y1]`` computed in float64 and stored as Python floats (exact: no
    rounding beyond what float64 subtraction does, which is what any float64 pipeline computes).

    Example:
        >>> import torch
        >>> detections_to_coco_results([torch.tensor([[10.0, 20.0, 60.0, 50.0]])], [torch.tensor([0.5])],
        ...                            [torch.tensor([1])], image_ids=[7], label_to_cat_id={1: 18})
        [{'image_id': 7, 'category_id': 18, 'bbox': [10.0, 20.0, 50.0, 30.0], 'score': 0.5}]
    """
    results: list[dict[str, Any]] = []
    for b, s, lab, img_id in zip(boxes, scores, labels, image_ids, strict=True):
        b = torch.as_tensor(b).detach().to("cpu", torch.float64).reshape(-1, 4)
        xywh = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], dim=1).tolist()
        s_list = torch.as_tensor(s).detach().to("cpu", torch.float64).reshape(-1).tolist()
        l_list = torch.as_tensor(lab).detach().cpu().reshape(-1).tolist()
        if not (len(xywh) == len(s_list) == len(l_list)):
            raise ValueError(f"image {img_id}: boxes, scores and labels differ in length")
        for bbox, score, label in zip(xywh, s_list, l_list, strict=True):
            results.append({"image_id": int(img_id), "category_id": category_id(label, label_to_cat_id, img_id),
                            "bbox": bbox, "score": score})
    return results


def _empty_results(coco_gt: COCO) -> COCO:
    """What ``COCO.loadRes`` would build for zero detections (it raises ``IndexError`` on ``[]``)."""
    res = COCO()
    res.dataset["info"] = copy.deepcopy(coco_gt.dataset.get("info", {}))
    res.dataset["images"] = list(coco_gt.dataset["images"])
    res.dataset["categories"] = copy.deepcopy(coco_gt.dataset.get("categories", []))
    res.dataset["annotations"] = []
    with _quiet(False):
        res.createIndex()
    return res


def coco_evaluate(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    img_ids: Sequence[int],
    *,
    iou_type: str = "bbox",
    verbose: bool = False,
) -> dict[str, float]:
    """Run ``COCOeval`` (``loadRes``, ``evaluate``, ``accumulate``, ``summarize``) on ``results`` over
    exactly ``img_ids``; returns ``{name: stat}`` in ``COCOeval.stats`` order (``iou_type`` ``"bbox"`` or
    ``"segm"``; the names are :data:`COCO_STAT_NAMES` either way).

    With zero detections ``loadRes`` cannot be used, so an empty result set is built the same way and
    evaluated normally: like pycocotools for a detector that found nothing, AP/AR are ``0.0`` where the
    images hold ground truth of that area range and ``-1.0`` where they hold none.

    Example:
        >>> import contextlib, io
        >>> from pycocotools.coco import COCO
        >>> gt = COCO()
        >>> gt.dataset = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 3, "name": "cat"}],
        ...               "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 40],
        ...                                "area": 2000, "iscrowd": 0}]}
        >>> with contextlib.redirect_stdout(io.StringIO()):
        ...     gt.createIndex()
        >>> stats = coco_evaluate(gt, [{"image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 40], "score": 0.9}], [1])
        >>> round(stats["map"], 6), round(stats["map_50"], 6)
        (1.0, 1.0)
    """
    _iou_types(iou_type)
    if not isinstance(iou_type, str):
        raise ValueError(f"coco_evaluate takes one iou_type, got {iou_type!r}")
    known = set(coco_gt.getImgIds())
    unknown = sorted({int(i) for i in img_ids} - known)
    if unknown:
        raise ValueError(f"image ids not in the annotation file: {unknown[:10]}")
    with _quiet(verbose):
        # loadRes adds keys (area, id, segmentation...) to the dicts it gets: give it copies
        coco_dt = coco_gt.loadRes([dict(r) for r in results]) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = sorted({int(i) for i in img_ids})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)}


class CocoMeanAP(Metric):
    """COCO box (and mask) mAP/mAR computed by pycocotools over exactly the images seen, DDP-safe.

    ``update(preds, targets)`` takes torchvision-style detector outputs (``boxes`` xyxy in pixels,
    ``scores``, ``labels`` contiguous 1..K) and targets with ``image_id`` (the original COCO id).
    Labels map back to category ids through ``label_to_cat_id`` (dict ``{label: cat_id}`` or a list indexed
    by label); the default maps 1..K to the annotation file's **sorted** category ids, as
    ``CocoDetection`` does. ``compute()`` returns 0-d float64 tensors named as :data:`COCO_STAT_NAMES`;
    with no detections at all it returns what pycocotools gives for an empty result set (``0.0`` where
    there is ground truth, ``-1.0`` where there is none). After a DDP sync every rank evaluates the same
    gathered detections, so all ranks return the same numbers.

    ``iou_type=("bbox", "segm")`` (or ``"segm"``) adds mask AP: each prediction also carries ``masks``
    (torchvision's ``N x 1 x H x W`` probabilities at the annotation file's image size), thresholded at 0.5 and
    RLE-encoded in ``update`` (the state holds ~17 KiB per image at 100 detections of real COCO object masks,
    against 25 MiB as dense uint8 masks, 100 MiB as the model's float probabilities); the 12 mask
    figures come back as ``segm_map``, ``segm_map_50``, ... after the box ones. The annotation file's
    segmentations are checked at construction (a malformed one raises naming its annotation id).

    Example:
        >>> metric = CocoMeanAP("instances_val2017.json")  # doctest: +SKIP
        >>> metric.update([{"boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0]]), "scores": torch.tensor([0.9]),
        ...                 "labels": torch.tensor([1])}], [{"image_id": 139}])  # doctest: +SKIP
        >>> metric.compute()["map"]  # doctest: +SKIP
        >>> metric.write_results("detections.json")  # doctest: +SKIP
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        ann_file: str | Path | COCO,
        *,
        label_to_cat_id: Mapping[int, int] | Sequence[int] | None = None,
        iou_type: str | Sequence[str] = "bbox",
        results_file: str | Path | None = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        types = _iou_types(iou_type)
        self.iou_type = iou_type if isinstance(iou_type, str) else types
        self.iou_types = types
        self.verbose = verbose
        self.results_file = None if results_file is None else Path(results_file)
        self.coco_gt = _load_coco(ann_file, verbose)
        if "segm" in types:
            check_gt_segmentations(self.coco_gt, ann_file)
        self.label_to_cat_id = (
            _default_label_map(self.coco_gt)
            if label_to_cat_id is None
            else _normalize_label_map(label_to_cat_id)
        )
        unknown = sorted(set(self.label_to_cat_id.values()) - set(self.coco_gt.getCatIds()))
        if unknown:
            raise ValueError(f"label_to_cat_id names category ids absent from the annotation file: {unknown}")
        # Flat "cat" list states: torchmetrics concatenates list states before gathering, so per-image
        # structure is kept through per-image detection counts rather than one tensor per image.
        for name in ("image_ids", "num_dets", "boxes", "scores", "labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        if "segm" in types:  # RLE bytes of every detection, their lengths, and each image's mask size
            for name in ("rle_bytes", "rle_lens", "mask_hw"):
                self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add one batch: ``preds[i]`` are the detections for the image ``targets[i]["image_id"]``."""
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        dev = self.device
        ids, counts, boxes, scores, labels = [], [], [], [], []
        for p, t in zip(preds, targets, strict=True):
            b = torch.as_tensor(p["boxes"]).detach().reshape(-1, 4)
            s = torch.as_tensor(p["scores"]).detach().reshape(-1)
            lab = torch.as_tensor(p["labels"]).detach().reshape(-1)
            if not (b.shape[0] == s.shape[0] == lab.shape[0]):
                raise ValueError("boxes, scores and labels of one image must have the same length")
            ids.append(_image_id(t))
            counts.append(b.shape[0])
            # float64 widening is exact for every floating input dtype: nothing is rounded
            boxes.append(b.to(dev, torch.float64))
            scores.append(s.to(dev, torch.float64))
            labels.append(lab.to(dev, torch.int64))
        self.image_ids.append(torch.tensor(ids, dtype=torch.int64, device=dev))
        self.num_dets.append(torch.tensor(counts, dtype=torch.int64, device=dev))
        self.boxes.append(torch.cat(boxes) if boxes else torch.zeros(0, 4, dtype=torch.float64, device=dev))
        self.scores.append(torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64, device=dev))
        self.labels.append(torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=dev))
        if "segm" in self.iou_types:
            self._update_masks(preds, counts)

    def _update_masks(self, preds: Sequence[Mapping[str, Tensor]], counts: list[int]) -> None:
        dev = self.device
        rles: list[bytes] = []
        sizes = []
        for p, n in zip(preds, counts, strict=True):
            if "masks" not in p:
                raise KeyError("iou_type 'segm' needs predicted 'masks' (N x 1 x H x W probabilities)")
            m = torch.as_tensor(p["masks"])
            if m.shape[0] != n:
                raise ValueError(f"got {m.shape[0]} masks for {n} boxes")
            sizes.append(tuple(m.shape[-2:]))
            rles.extend(masks_to_rles(m))
        blob = b"".join(rles)
        self.rle_bytes.append(torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(dev) if blob
                              else torch.zeros(0, dtype=torch.uint8, device=dev))
        self.rle_lens.append(torch.tensor([len(r) for r in rles], dtype=torch.int64, device=dev))
        self.mask_hw.append(torch.tensor(sizes, dtype=torch.int64, device=dev).reshape(-1, 2))

    def _gathered(self, iou_type: str | None = None) -> tuple[list[int], list[dict[str, Any]]]:
        """Deduplicated image ids (first occurrence) and COCO results of ``iou_type`` (default: the first
        configured) sorted by image id."""
        iou_type = self.iou_types[0] if iou_type is None else iou_type
        if isinstance(self.image_ids, list) and not self.image_ids:
            return [], []
        # (a rank that saw nothing contributes an empty float tensor to the gather: cast back)
        ids = dim_zero_cat(self.image_ids).cpu().long()
        counts = dim_zero_cat(self.num_dets).cpu().long()
        boxes = dim_zero_cat(self.boxes).cpu().reshape(-1, 4)
        scores = dim_zero_cat(self.scores).cpu()
        labels = dim_zero_cat(self.labels).cpu().long()
        keep = first_occurrence_mask(ids).tolist()
        splits = counts.tolist()
        if iou_type == "segm":
            per_image = zip(ids.tolist(), keep, self._gathered_rles(splits), scores.split(splits),
                            labels.split(splits), strict=True)
        else:
            per_image = zip(
                ids.tolist(), keep, boxes.split(splits), scores.split(splits), labels.split(splits), strict=True
            )
        kept = sorted((x for x in per_image if x[1]), key=lambda x: x[0])
        img_ids = [x[0] for x in kept]
        results = (segmentations_to_coco_results if iou_type == "segm" else detections_to_coco_results)(
            [x[2] for x in kept], [x[3] for x in kept], [x[4] for x in kept], img_ids, self.label_to_cat_id
        )
        return img_ids, results

    def _gathered_rles(self, splits: list[int]) -> list[list[dict[str, Any]]]:
        """Per image, the RLE objects ``{"size": [h, w], "counts": str}`` of its detections."""
        blob = dim_zero_cat(self.rle_bytes).cpu().to(torch.uint8).numpy().tobytes()
        lens = dim_zero_cat(self.rle_lens).cpu().long().tolist()
        sizes = dim_zero_cat(self.mask_hw).cpu().long().reshape(-1, 2).tolist()
        out, pos, det = [], 0, 0
        for (h, w), n in zip(sizes, splits, strict=True):
            image = []
            for length in lens[det:det + n]:
                image.append({"size": [h, w], "counts": blob[pos:pos + length].decode("ascii")})
                pos += length
            det += n
            out.append(image)
        return out

    def compute(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for iou_type in self.iou_types:
            img_ids, results = self._gathered(iou_type)
            if self.results_file is not None:
                self._write(self._results_path(self.results_file, iou_type), results)
            stats = coco_evaluate(self.coco_gt, results, img_ids, iou_type=iou_type, verbose=self.verbose)
            prefix = "segm_" if iou_type == "segm" else ""
            out.update({prefix + k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items()})
        return out

    def _results_path(self, path: Path, iou_type: str) -> Path:
        # the first iou type writes to `path` itself (so bbox-only runs are unchanged); others add a suffix
        return path if iou_type == self.iou_types[0] else path.with_name(f"{path.stem}_{iou_type}{path.suffix}")

    def results(self, iou_type: str | None = None) -> list[dict[str, Any]]:
        """The COCO results list for what this process has seen (synced across ranks when distributed), of
        ``iou_type`` (default: the first configured)."""
        with self.sync_context(should_sync=self.sync_on_compute):
            return self._gathered(iou_type)[1]

    def write_results(self, path: str | Path) -> Path:
        """Write the standard results JSON ``[{image_id, category_id, bbox, score}]`` (all ranks gather;
        global rank 0 writes). Python floats are written with ``repr``, so reading it back is exact. With
        ``"segm"`` configured its results (``segmentation`` RLEs) go to ``<stem>_segm.json`` next to it
        (or to ``path`` itself when ``"segm"`` is the only type)."""
        path = Path(path)
        for iou_type in self.iou_types:
            self._write(self._results_path(path, iou_type), self.results(iou_type))
        return path

    @staticmethod
    def _write(path: Path, results: list[dict[str, Any]]) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_rank() != 0:
                return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump(results, f)


def coco_mean_ap(
    ann_file: str | Path | COCO,
    preds: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Any]],
    **kwargs: Any,
) -> dict[str, Tensor]:
    """One-shot :class:`CocoMeanAP` on a list of detections (same arguments as the class).

    Example:
        >>> coco_mean_ap("instances_val2017.json", preds, targets)["map_50"]  # doctest: +SKIP
    """
    metric = CocoMeanAP(ann_file, sync_on_compute=False, **kwargs)
    metric.update(preds, targets)
    return metric.compute()
