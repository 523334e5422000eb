"""Lightning task for semantic segmentation (DeepLab-lite / LR-ASPP on GhostNet, or torchvision peers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ghost_vision.metrics.per_image import PerImageMean
from ghost_vision.metrics.segmentation import SegmentationMetric

from .base import BaseTask

__all__ = ["SegmentationTask", "PerImageMean"]  # PerImageMean: moved to ghost_vision.metrics, kept importable


class SegmentationTask(BaseTask):
    """Train and evaluate a segmentation network returning ``{"out": logits[, "aux": logits]}``.

    Args:
        model: a :func:`~ghost_vision.models.get_model` name (``deeplabv3_ghostnet``, ``lraspp_ghostnet``,
            the peers ``deeplabv3_mobilenet_v3_large``, ...) or ``{"class_path": ..., "init_args": {...}}``.
            Every model gets the batches' [0, 1] RGB and normalises it itself (torchvision's peers through
            :class:`~ghost_vision.models.NormalizedInput`, docs/peers.md).
        model_kwargs: extra builder arguments (``aux_loss``, ``output_stride``, ``weights_backbone``, ...).
        num_classes: linked from the DataModule; saved once in the checkpoint.
        class_names: class names for drawings and per-class IoU logging.
        ignore_index: label ignored by the loss and the metric (255).
        aux_weight: weight of the auxiliary loss when the model returns ``"aux"``.
        optimizer: ``"sgd"`` (Nesterov momentum) or ``"adamw"``; no weight decay on norms and biases.
        lr: peak learning rate (reached after the warm-up).
        momentum: SGD momentum (unused by AdamW).
        weight_decay: weight decay of the conv/linear weights.
        scheduler: after a linear warm-up, ``"cosine"``, ``"step"``, ``"poly"`` or ``"constant"``.
        warmup_epochs: length of the linear warm-up, in epochs (may be fractional).
        milestones: fractions of training where ``"step"`` multiplies the learning rate by 0.1.
        on_nonfinite: ``"raise"`` or ``"skip"`` a step with a NaN/inf loss, as in
            :class:`~ghost_vision.tasks.DetectionTask`.
        init_from: a checkpoint to fine-tune from: every tensor whose name and shape fit is loaded.
        channels_last: the model in channels-last memory format (faster training on a CPU, measured; see
            :class:`~ghost_vision.tasks.base.BaseTask`).

    Example:
        >>> task = SegmentationTask("lraspp_ghostnet", num_classes=19)
        >>> task.hparams.scheduler
        'poly'
    """

    def __init__(
        self,
        model: str | dict[str, Any] = "deeplabv3_ghostnet",
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int = 21,
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
        aux_weight: float = 0.4,
        optimizer: str = "sgd",
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 4e-5,
        scheduler: str = "poly",
        warmup_epochs: float = 0.0,
        milestones: Sequence[float] = (0.67, 0.89),
        on_nonfinite: str = "raise",
        init_from: str | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__(
            model=model, model_kwargs=model_kwargs, num_classes=num_classes, class_names=class_names,
            optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, scheduler=scheduler,
            warmup_epochs=warmup_epochs, milestones=milestones, on_nonfinite=on_nonfinite, init_from=init_from,
            channels_last=channels_last,
        )
        self.val_metric = SegmentationMetric(num_classes, ignore_index=ignore_index)
        self.val_loss = PerImageMean()

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(images)

    def _loss(self, out: dict[str, Tensor], masks: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        parts = {"ce": F.cross_entropy(out["out"], masks, ignore_index=self.hparams.ignore_index)}
        if "aux" in out and self.hparams.aux_weight > 0:
            parts["aux"] = self.hparams.aux_weight * F.cross_entropy(
                out["aux"], masks, ignore_index=self.hparams.ignore_index
            )
        return sum(parts.values()), parts

    def _per_image_loss(self, out: dict[str, Tensor], masks: Tensor) -> Tensor:
        """The loss of each image on its own (mean over its labelled pixels), ``N`` values."""

        def ce(logits: Tensor) -> Tensor:
            pix = F.cross_entropy(logits, masks, ignore_index=self.hparams.ignore_index, reduction="none")
            valid = (masks != self.hparams.ignore_index).flatten(1)
            return pix.flatten(1).sum(1) / valid.sum(1).clamp(min=1)

        loss = ce(out["out"])
        if "aux" in out and self.hparams.aux_weight > 0:
            loss = loss + self.hparams.aux_weight * ce(out["aux"])
        return loss

    def training_step(self, batch: Sequence[Tensor] | None, batch_idx: int) -> Tensor | None:
        if self.skip_together(batch is None):  # all samples skipped as unreadable (skip_corrupt=True)
            return None
        images, masks = batch[0], batch[1]
        loss, parts = self._loss(self.model(images), masks)
        loss = self.check_loss(loss, parts, batch_idx)
        if self.skip_together(loss is None):
            return None
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images))
        return loss

    def _eval_step(self, batch: Sequence[Tensor] | None, prefix: str) -> None:
        if batch is None:  # only skipped samples (skip_corrupt=True): nothing to score
            return
        images, masks = batch[0], batch[1]
        ids = batch[2] if len(batch) > 2 else None
        out = self.model(images)
        loss_ids = ids
        if loss_ids is None:  # a loader without indices: distinct positions (no de-duplication)
            world, rank = self.trainer.world_size, self.trainer.global_rank
            loss_ids = (torch.arange(len(images), device=images.device) + self._seen) * world + rank
            self._seen += len(images)
        self.val_loss.update(self._per_image_loss(out, masks), loss_ids)
        self.val_metric.update(out["out"].argmax(1), masks, image_ids=ids)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._seen = 0

    def on_test_epoch_start(self) -> None:
        self._seen = 0

    def _log_metric(self, prefix: str) -> None:
        self.log(f"{prefix}/loss", self.val_loss.compute().float())
        self.val_loss.reset()
        values = self.val_metric.compute()
        names = self.hparams.class_names or [str(i) for i in range(self.hparams.num_classes)]
        for name, value in values.items():
            if value.numel() == 1:
                self.log(f"{prefix}/{name}", value.float(), prog_bar=name == "miou")
            elif name == "iou_per_class":
                for cls, iou in zip(names, value.tolist()):
                    if iou == iou:  # classes absent from the split have nan IoU and are not logged
                        self.log(f"{prefix}/iou_{cls}", float(iou))
        self.val_metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val")

    def on_test_epoch_end(self) -> None:
        self._log_metric("test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.model(images)["out"].argmax(1)
