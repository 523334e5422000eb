"""NanoDet-Plus on a GhostNet backbone: the detector module and its builder."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Dict  # noqa: UP035 - TorchScript reads these annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import batched_nms

from ...factory import Weights, resolve_variant
from ...ghostnet import GhostNetFeatures
from .._utils import NUM_BACKBONE_UNITS, build_body, validate_trainable_layers
from .assigner import AssignResult, DynamicSoftLabelAssigner
from .head import GFLHead, Integral, SimpleConvHead, bbox2distance, distance2bbox, make_priors
from .losses import distribution_focal_loss, giou_loss, mean_over_ranks, quality_focal_loss
from .neck import GhostPAN

__all__ = ["NanoDetBackbone", "NanoDetPlus", "nanodet_plus_ghostnet"]

#: ImageNet statistics: the GhostNet backbones were trained with them.
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class NanoDetBackbone(nn.Module):
    """GhostNet maps at strides 8/16/32 (``body``) through a :class:`GhostPAN` (``neck``): an ``OrderedDict``
    ``"0".."3"`` of maps at strides 8, 16, 32 and 64."""

    def __init__(self, body: GhostNetFeatures, neck: GhostPAN) -> None:
        super().__init__()
        self.body, self.neck = body, neck

    def forward(self, x: Tensor) -> Dict[str, Tensor]:  # noqa: UP006
        out: Dict[str, Tensor] = OrderedDict()  # noqa: UP006
        for i, f in enumerate(self.neck(list(self.body(x).values()))):
            out[str(i)] = f
        return out


class NanoDetPlus(nn.Module):
    """NanoDet-Plus: a GFL head on a Ghost-PAN, trained with a dynamic soft-label assigner guided by an
    assist head (AGM), with torchvision's detector interface.

    ``model(images, targets)`` in training mode returns the losses (``loss_qfl``, ``loss_bbox``, ``loss_dfl``
    and, with the assist head, the same three prefixed ``aux_``); in eval mode ``model(images)`` returns
    one dict per image with ``boxes`` (input-image pixels), ``scores`` and ``labels`` (1..num_classes-1,
    0 being the background as in torchvision). Images are ``3 x H x W`` floats in [0, 1]; the model resizes
    them to ``size x size`` and normalises them (``transform``, torchvision's ``GeneralizedRCNNTransform``).

    The assist head (``aux_neck`` + ``aux_head``) exists for training only: it sees the backbone maps and
    the main neck's maps, its predictions choose the positives of both heads, and from epoch
    ``detach_epoch`` on (set with :meth:`set_epoch`; ``DetectionTask`` does it) its inputs are detached so
    it stops shaping the shared features. Eval mode, export and the cost counts never run it;
    :meth:`remove_aux` drops it.

    Export: :meth:`forward_raw` (a normalised batch -> ``(N, A, C + 4 (reg_max + 1))`` head outputs) is
    the network; :meth:`postprocess` turns such outputs (e.g. onnxruntime's) into detections.

    Example:
        >>> import torch
        >>> from ghost_vision.models.detection import nanodet_plus_ghostnet
        >>> model = nanodet_plus_ghostnet(num_classes=3, width=0.5, size=160)
        >>> target = {"boxes": torch.tensor([[10.0, 12.0, 90.0, 100.0]]), "labels": torch.tensor([2])}
        >>> sorted(model([torch.rand(3, 120, 160)], [target]))  # training mode: the losses
        ['aux_loss_bbox', 'aux_loss_dfl', 'aux_loss_qfl', 'loss_bbox', 'loss_dfl', 'loss_qfl']
        >>> model = model.remove_aux()  # inference only from here on: the assist head is gone
        >>> sorted(model.eval()([torch.rand(3, 120, 160)])[0])
        ['boxes', 'labels', 'scores']
    """

    def __init__(
        self,
        backbone: NanoDetBackbone,
        head: GFLHead,
        num_classes: int,
        size: int = 320,
        *,
        aux_neck: nn.Module | None = None,
        aux_head: nn.Module | None = None,
        detach_epoch: int = 10,
        strides: Sequence[int] = (8, 16, 32, 64),
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
        loss_weights: Sequence[float] = (1.0, 2.0, 0.25),
    ) -> None:
        super().__init__()
        if head.num_classes != num_classes - 1:
            raise ValueError(f"the head predicts {head.num_classes} classes, expected num_classes - 1 = "
                             f"{num_classes - 1} (num_classes counts the background)")
        self.backbone, self.head = backbone, head
        self.aux_neck, self.aux_head = aux_neck, aux_head
        self.num_classes, self.size, self.strides = num_classes, size, tuple(strides)
        self.transform = GeneralizedRCNNTransform(size, size, list(image_mean), list(image_std), size_divisible=1,
                                                  fixed_size=(size, size))
        # kept here: optimize() freezes the head into TorchScript, which drops plain attributes
        self.num_scores, self.reg_max = head.num_classes, head.reg_max
        self.integral = Integral(head.reg_max)
        self.assigner = DynamicSoftLabelAssigner(topk=13, iou_weight=3.0)
        self.detach_epoch, self.epoch = detach_epoch, 0
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates
        self.loss_weights = tuple(loss_weights)  # QFL, GIoU, DFL

    # ------------------------------------------------------------------ public helpers
    def set_epoch(self, epoch: int) -> None:
        """The training epoch, which decides whether the assist head's inputs are detached."""
        self.epoch = int(epoch)

    def remove_aux(self) -> NanoDetPlus:
        """Drop the training-only assist head (in place); the model can then only be evaluated."""
        self.aux_neck = self.aux_head = None
        return self

    def forward_raw(self, x: Tensor) -> Tensor:
        """Head outputs ``(N, A, C + 4 (reg_max + 1))`` of a resized, normalised batch (the exported network)."""
        return self.head(list(self.backbone(x).values()))

    def priors(self, height: int, width: int, *, device: torch.device | None = None) -> Tensor:
        """``(A, 3)`` prior points ``(cx, cy, stride)`` of an input of ``height x width`` (level maps are
        ``ceil(size / stride)`` wide)."""
        sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in self.strides]
        return make_priors(sizes, self.strides, device=device)

    def decode(self, raw: Tensor, priors: Tensor, max_shape: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """``(logits (N, A, C), boxes (N, A, 4))`` from head outputs; boxes in the input's pixels."""
        c = self.num_scores
        dist = self.integral(raw[..., c:].float()) * priors[:, 2:3]
        return raw[..., :c], distance2bbox(priors[:, :2], dist, max_shape)

    @torch.no_grad()
    def postprocess(self, raw: Tensor, image_size: tuple[int, int],
                    original_sizes: Sequence[tuple[int, int]] | None = None) -> list[dict[str, Tensor]]:
        """Detections from head outputs of images of ``image_size`` (the model's ``size x size``), mapped to
        ``original_sizes`` when given: per image, scores above ``score_thresh``, the ``topk_candidates`` best,
        class-wise NMS (``nms_thresh``), the ``detections_per_img`` best."""
        raw = torch.as_tensor(raw)
        h, w = image_size
        logits, boxes = self.decode(raw, self.priors(h, w, device=raw.device), (h, w))
        scores = logits.float().sigmoid()
        out: list[dict[str, Tensor]] = []
        for s, b in zip(scores, boxes):
            flat = s.flatten()
            idx = (flat > self.score_thresh).nonzero().squeeze(1)
            if idx.numel() > self.topk_candidates:
                idx = idx[flat[idx].topk(self.topk_candidates).indices]
            sc, anchor, label = flat[idx], idx // s.shape[1], idx % s.shape[1]
            keep = batched_nms(b[anchor], sc, label, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": b[anchor[keep]], "scores": sc[keep], "labels": label[keep] + 1})
        if original_sizes is not None:
            out = self.transform.postprocess(out, [(h, w)] * len(out), [tuple(s) for s in original_sizes])
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        if self.training and targets is None:
            raise ValueError("targets should not be none when in training mode")
        if targets is not None:
            for t in targets:
                boxes, labels = t["boxes"], t["labels"]
                if boxes.dim() != 2 or boxes.shape[-1] != 4:
                    raise ValueError(f"expected target boxes of shape [N, 4], got {tuple(boxes.shape)}")
                if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= self.num_classes):
                    raise ValueError(f"target labels must be in 1..{self.num_classes - 1} (0 is the background; "
                                     f"num_classes={self.num_classes}), got {labels.tolist()}")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)
        x = batch.tensors
        if self.training:
            return self.compute_loss(x, targets)
        return self.postprocess(self.forward_raw(x), (x.shape[-2], x.shape[-1]), original_sizes)

    def compute_loss(self, x: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The training losses of a resized, normalised batch with targets in its pixels."""
        body = list(self.backbone.body(x).values())
        feats = self.backbone.neck(body)
        raw = self.head(feats)
        priors = self.priors(x.shape[-2], x.shape[-1], device=x.device)
        aux_raw = None
        if self.aux_head is not None and self.aux_neck is not None:
            detach = self.epoch >= self.detach_epoch
            aux_feats = self.aux_neck([f.detach() for f in body] if detach else body)
            main = [f.detach() for f in feats] if detach else feats
            aux_raw = self.aux_head([torch.cat([m, a], 1) for m, a in zip(main, aux_feats)])
        guide_logits, guide_boxes = self.decode((aux_raw if aux_raw is not None else raw).detach(), priors)
        assigned = [
            self.assigner(guide_logits[i], priors, guide_boxes[i], t["boxes"], t["labels"] - 1)
            for i, t in enumerate(targets)
        ]
        losses = self._losses(raw, priors, assigned, targets)
        if aux_raw is not None:
            losses.update({f"aux_{k}": v for k, v in self._losses(aux_raw, priors, assigned, targets).items()})
        return losses

    def _losses(self, raw: Tensor, priors: Tensor, assigned: list[AssignResult],
                targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        c, r = self.num_scores, self.reg_max
        w_qfl, w_giou, w_dfl = self.loss_weights
        logits, reg = raw[..., :c].reshape(-1, c), raw[..., c:].reshape(-1, 4 * (r + 1))
        labels, scores, gt_boxes = [], [], []
        for a, t in zip(assigned, targets):
            idx = a.gt_inds.clamp(min=0)
            labels.append(torch.where(a.pos, t["labels"].long()[idx] - 1 if len(t["labels"]) else idx, -1))
            scores.append(a.ious)
            gt_boxes.append(t["boxes"][idx] if len(t["boxes"]) else priors.new_zeros(len(idx), 4))
        label, score, gt = torch.cat(labels), torch.cat(scores), torch.cat(gt_boxes)
        pos = label >= 0
        # normalisers of the whole batch across DDP ranks (both all-reduces run on every rank, positives or not)
        num_pos = mean_over_ranks(pos.sum().to(logits.dtype)).clamp(min=1.0)
        weight = logits[pos].detach().sigmoid().amax(1)
        avg = mean_over_ranks(weight.sum()).clamp(min=1.0)
        loss_qfl = quality_focal_loss(logits, label, score).sum() / num_pos
        if not bool(pos.any()):
            zero = reg.sum() * 0.0
            return {"loss_qfl": w_qfl * loss_qfl, "loss_bbox": zero, "loss_dfl": zero}
        p = priors.repeat(len(assigned), 1)[pos]
        box = distance2bbox(p[:, :2], self.integral(reg[pos]) * p[:, 2:3])
        loss_bbox = (giou_loss(box, gt[pos]) * weight).sum() / avg
        dist = (bbox2distance(p[:, :2], gt[pos]) / p[:, 2:3]).clamp(0, r - 0.1)
        loss_dfl = (distribution_focal_loss(reg[pos].reshape(-1, r + 1), dist.reshape(-1))
                    * weight.repeat_interleave(4)).sum() / (4.0 * avg)
        return {"loss_qfl": w_qfl * loss_qfl, "loss_bbox": w_giou * loss_bbox, "loss_dfl": w_dfl * loss_dfl}


def nanodet_plus_ghostnet(
    *,
    num_classes: int = 91,
    size: int = 320,
    width: float = 1.0,
    backbone: str | None = None,
    weights_backbone: Weights = None,
    trainable_backbone_layers: int | None = None,
    neck_channels: int = 96,
    aux_head: bool = True,
    aux_channels: int = 192,
    aux_convs: int = 4,
    detach_epoch: int = 10,
    **kwargs: Any,
) -> NanoDetPlus:
    """NanoDet-Plus on a GhostNet: GhostNet maps at strides 8/16/32 -> :class:`GhostPAN` (96 channels, an
    extra stride-64 level) -> :class:`GFLHead` (2 depthwise-separable 5x5 convs per level, ``reg_max=7``),
    trained with :class:`DynamicSoftLabelAssigner` (top-13, IoU weight 3), Quality Focal Loss (weight 1),
    GIoU loss (2) and Distribution Focal Loss (0.25), assigned by a training-only assist head (AGM).

    Args:
        num_classes: classes including the background (torchvision's convention; the head predicts
            ``num_classes - 1`` sigmoid scores).
        size: the square input size the images are resized to (320 or 416 as NanoDet-Plus-m).
        width: GhostNet v1 width, 0.5, 1.0 or 1.3.
        backbone: a variant name instead of ``width``, e.g. ``"ghostnetv2_100"``.
        weights_backbone: GhostNet weights (a registered name such as ``"ghostnet_100.in1k"``, a path or a
            state dict). Its BatchNorms keep training, as in NanoDet.
        trainable_backbone_layers: trainable units from the top, 0..6; default all.
        neck_channels: Ghost-PAN and head width (96).
        aux_head: build the assist head (AGM) for training; ``False`` assigns from the main head itself.
        aux_channels: assist-head width (NanoDet-Plus-m: 192).
        aux_convs: assist-head convs per tower (NanoDet-Plus-m: 4).
        detach_epoch: from this epoch on the assist head's inputs are detached (NanoDet-Plus-m: 10).
        **kwargs: passed to :class:`NanoDetPlus`: ``score_thresh`` (0.05), ``nms_thresh`` (0.6),
            ``detections_per_img`` (100), ``topk_candidates`` (1000), ``image_mean``/``image_std`` (ImageNet).

    Example:
        >>> import torch
        >>> from ghost_vision.models.detection import nanodet_plus_ghostnet
        >>> model = nanodet_plus_ghostnet(num_classes=3).eval()
        >>> predictions = model([torch.rand(3, 320, 320), torch.rand(3, 500, 400)])
        >>> sorted(predictions[0])
        ['boxes', 'labels', 'scores']
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    name = resolve_variant(width, backbone)
    trainable = validate_trainable_layers(weights_backbone is not None, trainable_backbone_layers,
                                          NUM_BACKBONE_UNITS, NUM_BACKBONE_UNITS)
    body = build_body(name, weights=weights_backbone, out_indices=(2, 3, 4), trainable_layers=trainable,
                      norm_layer=nn.BatchNorm2d)
    neck = GhostPAN(list(body.out_channels), neck_channels, kernel_size=5, num_extra_levels=1)
    head = GFLHead(num_classes - 1, neck_channels, neck_channels, num_convs=2, kernel_size=5, num_levels=4)
    aux_neck = aux = None
    if aux_head:
        aux_neck = copy.deepcopy(neck)
        aux = SimpleConvHead(num_classes - 1, 2 * neck_channels, aux_channels, num_convs=aux_convs, num_levels=4)
    return NanoDetPlus(NanoDetBackbone(body, neck), head, num_classes, size, aux_neck=aux_neck, aux_head=aux,
                       detach_epoch=detach_epoch, **kwargs)
