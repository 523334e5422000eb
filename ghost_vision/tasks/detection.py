"""Lightning task for torchvision-style detectors (SSDLite-Ghost, Ghost-FPN detectors, or any peer)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .base import BaseTask

__all__ = ["DetectionTask"]


class DetectionTask(BaseTask):
    """Train and evaluate a torchvision-style detector.

    Args:
        model: a :func:`~ghost_vision.models.get_model` name (``ssdlite320_ghostnet``,
            ``fasterrcnn_ghostnet_fpn``, ``nanodet_plus_ghostnet``, the peer ``ssdlite320_mobilenet_v3_large``, ...; see
            ``list_models(kind="detector")``) or ``{"class_path": ..., "init_args": {...}}``.
        model_kwargs: extra builder arguments (e.g. ``weights_backbone``, ``width``).
        num_classes: including background; linked from the DataModule by the CLI and saved once in
            the checkpoint.
        class_names: names of labels 1..K (for drawings), linked from the DataModule.
        metric: ``"coco"`` (pycocotools, needs a DataModule with ``val_ann_file``), ``"voc07"`` (11-point)
            or ``"voc"`` (area), or ``"auto"`` (COCO when the DataModule has an annotation file).
        iou_type: the COCO metric's ``iou_type``: ``"bbox"``, or ``["bbox", "segm"]`` for a Mask R-CNN (mask AP
            logged as ``val/segm_map``, ... next to the box figures; train it with ``masks: true`` data).
        optimizer: ``"sgd"`` (Nesterov momentum) or ``"adamw"``; no weight decay on norms and biases.
        lr: peak learning rate (reached after the warm-up).
        momentum: SGD momentum (unused by AdamW).
        weight_decay: weight decay of the conv/linear weights.
        scheduler: after a linear warm-up, ``"cosine"``, ``"step"``, ``"poly"`` or ``"constant"``.
        warmup_epochs: length of the linear warm-up, in epochs (may be fractional).
        milestones: fractions of training where ``"step"`` multiplies the learning rate by 0.1.
        on_nonfinite: ``"raise"`` stops at a NaN/inf loss naming the step; ``"skip"`` skips and counts it
            (single-process only: under DDP every rank must step).
        init_from: a checkpoint to fine-tune from: every tensor whose name and shape fit is loaded.
        channels_last: the model in channels-last memory format (faster training on a CPU, measured; see
            :class:`~ghost_vision.tasks.base.BaseTask`).

    Example:
        >>> task = DetectionTask("ssdlite320_ghostnet", num_classes=4)
        >>> task.hparams.num_classes
        4
    """

    def __init__(
        self,
        model: str | dict[str, Any] = "ssdlite320_ghostnet",
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int = 91,
        class_names: Sequence[str] | None = None,
        metric: str = "auto",
        iou_type: str | Sequence[str] = "bbox",
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 4e-5,
        scheduler: str = "cosine",
        warmup_epochs: float = 1.0,
        milestones: Sequence[float] = (0.67, 0.89),
        on_nonfinite: str = "raise",
        init_from: str | None = None,
        channels_last: bool = True,
    ) -> None:
        if metric not in ("auto", "coco", "voc07", "voc"):
            raise ValueError(f"metric must be one of auto, coco, voc07, voc; got {metric!r}")
        from ghost_vision.metrics.coco import _iou_types

        iou_types = _iou_types(iou_type)
        if "segm" in iou_types and metric in ("voc07", "voc"):
            raise ValueError(f"iou_type {list(iou_types)} needs metric='coco' (mask AP is COCO's), got {metric!r}")
        super().__init__(
            model=model, model_kwargs=model_kwargs, num_classes=num_classes, class_names=class_names,
            optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, scheduler=scheduler,
            warmup_epochs=warmup_epochs, milestones=milestones, on_nonfinite=on_nonfinite, init_from=init_from,
            channels_last=channels_last,
        )
        self.val_metric: Any = None

    # ---------------------------------------------------------------- metrics
    def _make_metric(self) -> Any:
        from ghost_vision.metrics import CocoMeanAP, VOCMeanAP

        dm = getattr(self.trainer, "datamodule", None)  # called from setup(): a trainer is attached
        ann_file = getattr(dm, "val_ann_file", None)
        kind = self.hparams.metric
        if kind == "auto":
            kind = "coco" if ann_file is not None else "voc07"
        if kind == "coco":
            if ann_file is None:
                raise ValueError("metric='coco' needs a DataModule with `val_ann_file` (a COCO annotation JSON)")
            iou = self.hparams.get("iou_type", "bbox")
            return CocoMeanAP(ann_file, label_to_cat_id=getattr(dm, "label_to_cat_id", None),
                              iou_type=iou if isinstance(iou, str) else tuple(iou))
        if self.hparams.get("iou_type", "bbox") not in ("bbox", ["bbox"], ("bbox",)):
            raise ValueError("iou_type 'segm' needs the COCO metric: a DataModule with `val_ann_file`")
        return VOCMeanAP(num_classes=self.hparams.num_classes, use_07_metric=kind == "voc07")

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate", "test") and self.val_metric is None:
            self.val_metric = self._make_metric()

    # ---------------------------------------------------------------- steps
    @staticmethod
    def _split(batch: Sequence[Any]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        images, targets = batch[0], batch[1]
        return list(images), [dict(t) for t in targets]

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)

    def on_train_epoch_start(self) -> None:
        # models whose training depends on the epoch (NanoDet-Plus detaches its assist head) are told it
        set_epoch = getattr(self.model, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.current_epoch)

    def training_step(self, batch: Sequence[Any] | None, batch_idx: int) -> Tensor | None:
        if self.skip_together(batch is None):  # all samples skipped as unreadable (skip_corrupt=True)
            return None
        images, targets = self._split(batch)
        keys = ("boxes", "labels", "masks")  # masks: instance masks for Mask R-CNN (``masks=True`` data)
        losses = self.model(images, [{k: t[k] for k in keys if k in t} for t in targets])
        loss = sum(losses.values())
        loss = self.check_loss(loss, losses, batch_idx)
        if self.skip_together(loss is None):
            return None
        bs = len(images)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    @staticmethod
    def to_original_size(
        preds: list[dict[str, Tensor]], images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
        """Map predicted and target boxes of resized images back to the file's pixels
        (``target["orig_size"]``), so COCO's annotation file and VOC's boxes are compared in one frame
        whatever the eval transform did; predicted instance masks are resized (bilinear, on the probabilities)
        to the original size too. Images at their original size pass unchanged."""
        out_p, out_t = [], []
        for pred, image, target in zip(preds, images, targets):
            orig = target.get("orig_size")
            if orig is not None and tuple(int(v) for v in orig) != tuple(image.shape[-2:]):
                sy, sx = float(orig[0]) / image.shape[-2], float(orig[1]) / image.shape[-1]
                scale = pred["boxes"].new_tensor([sx, sy, sx, sy])
                pred = {**pred, "boxes": pred["boxes"] * scale}
                if "masks" in pred and pred["masks"].shape[0]:
                    size = (int(orig[0]), int(orig[1]))
                    pred["masks"] = torch.nn.functional.interpolate(pred["masks"], size=size, mode="bilinear",
                                                                    align_corners=False)
                target = {**target, "boxes": target["boxes"] * scale.to(target["boxes"])}
            out_p.append(pred)
            out_t.append(target)
        return out_p, out_t

    @staticmethod
    def drop_background(preds: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Predictions without label 0. The data's labels are 1..K and 0 is the background slot; RetinaNet and
        FCOS score that slot like any class (trained only as a negative), so an untrained one can put it above
        the score threshold, where no metric has a category for it."""
        out = []
        for p in preds:
            keep = p["labels"] != 0
            out.append(p if bool(keep.all()) else {k: v[keep] if torch.is_tensor(v) and v.shape[:1] == keep.shape
                                                    else v for k, v in p.items()})
        return out

    def _eval_step(self, batch: Sequence[Any] | None) -> None:
        if batch is None:  # only skipped samples (skip_corrupt=True): nothing to score
            return
        images, targets = self._split(batch)
        preds, targets = self.to_original_size(self.drop_background(self.model(images)), images, targets)
        self.val_metric.update(preds, targets)

    def validation_step(self, batch: Sequence[Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: Sequence[Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def _log_metric(self, prefix: str) -> None:
        values = self.val_metric.compute()
        for name, value in values.items():
            if isinstance(value, Tensor) and value.numel() == 1:
                self.log(f"{prefix}/{name}", value.float(), prog_bar=name in ("map", "map_50", "segm_map"),
                         sync_dist=False)
        self.val_metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val")

    def on_test_epoch_end(self) -> None:
        self._log_metric("test")

    def predict_step(self, batch: Sequence[Any], batch_idx: int) -> list[dict[str, Tensor]]:
        images = batch[0] if isinstance(batch, (list, tuple)) and len(batch) == 2 else batch
        return self.model(list(images))

    def write_coco_results(self, path: str | Path) -> Path:
        """After ``validate``/``test`` with the COCO metric: write the results JSON."""
        return self.val_metric.write_results(path)

    @torch.no_grad()
    def predict_images(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        self.model.eval()
        return self.model([img.to(self.device) for img in images])
