"""An int8 model: an onnxruntime QDQ core between the eval model's own fp32 pre- and post-processing.

:class:`QuantizedModel` is called like the model it came from: a classifier returns logits, a segmenter
``{"out": ..., ["aux": ...]}``, a detector a list of ``{"boxes", "scores", "labels"}`` dicts in the input
images' coordinates. :meth:`QuantizedModel.save` writes one zip archive (``model.onnx``, ``meta.json`` and,
for SSD, ``anchors.npy``); :func:`load_quantized` restores it with onnxruntime and torchvision only (no
checkpoint, no Lightning, no ghost_vision model code):

* classifiers and segmenters: the whole network (a segmenter's normalisation and final upsampling
  included, the upsampling kept fp32) is the ONNX graph;
* SSD (SSDLite-Ghost, torchvision's SSDLite): torchvision's ``GeneralizedRCNNTransform`` rebuilt from the
  saved mean/std/size, the default boxes saved as an array, and torchvision's own
  ``SSD.postprocess_detections`` (box decoding, score threshold, top-k, batched NMS) with the saved settings;
* RetinaNet / FCOS / Faster R-CNN (FPN): the model's torch parts around the exported core (transform,
  anchor generator, post-processing; Faster R-CNN's RPN proposal filtering and RoI heads, fp32) are kept
  as a module and pickled into the archive (``shell.pt``): loading it needs torchvision and unpickles
  code objects, so load only archives you made.

Example:
    >>> from ghost_vision.deploy.quantized_model import load_quantized
    >>> qmodel = load_quantized("ssdlite_int8.zip")  # doctest: +SKIP
    >>> detections = qmodel([image])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ghost_vision._optional import require

__all__ = ["ARCHIVE_FORMAT", "QuantizedModel", "QuantizedModelError", "load_quantized"]

ARCHIVE_FORMAT = "ghost-vision-int8/1"


class QuantizedModelError(RuntimeError):
    """A saved int8 model cannot be loaded: truncated or foreign file, or another onnxruntime version."""


def _session(onnx_bytes: bytes, threads: int | None):
    ort = require("onnxruntime", extra="onnx", purpose="running an int8 model")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only (not the "unused initializer" notes of the optimizer)
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def _rcnn_transform(cfg: dict[str, Any]) -> nn.Module:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    t = GeneralizedRCNNTransform(cfg["min_size"], cfg["max_size"], cfg["image_mean"], cfg["image_std"],
                                 size_divisible=cfg["size_divisible"],
                                 fixed_size=tuple(cfg["fixed_size"]) if cfg["fixed_size"] else None)
    t.min_size = tuple(cfg["min_size"])
    return t


def transform_config(t: nn.Module) -> dict[str, Any]:
    """The parameters of a torchvision ``GeneralizedRCNNTransform`` (what :func:`_rcnn_transform` rebuilds)."""
    return dict(min_size=list(t.min_size), max_size=int(t.max_size), image_mean=list(map(float, t.image_mean)),
                image_std=list(map(float, t.image_std)), size_divisible=int(t.size_divisible),
                fixed_size=list(t.fixed_size) if t.fixed_size else None)


class _SSDPost:
    """The attributes torchvision's ``SSD.postprocess_detections`` reads from ``self``."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from torchvision.models.detection import _utils as det_utils

        self.box_coder = det_utils.BoxCoder(tuple(cfg["box_coder_weights"]))
        self.score_thresh, self.nms_thresh = cfg["score_thresh"], cfg["nms_thresh"]
        self.topk_candidates, self.detections_per_img = cfg["topk_candidates"], cfg["detections_per_img"]


class QuantizedModel(nn.Module):
    """An int8 onnxruntime core with the eval model's fp32 pre/post-processing; called like that model.

    Built by :func:`ghost_vision.deploy.quantize.quantize` or :func:`load_quantized`. ``meta`` holds
    what the archive needs to be self-describing (kind, output names, settings, onnxruntime version).

    Example:
        >>> import torch
        >>> from ghost_vision.deploy import quantize
        >>> from ghost_vision.models import get_model
        >>> segmenter = get_model("lraspp_ghostnet", num_classes=3, width=0.5).eval()
        >>> qmodel = quantize(segmenter, torch.rand(2, 3, 64, 64), num_images=2)
        >>> qmodel(torch.rand(1, 3, 64, 96))["out"].shape  # segmenters: {"out": logits at the input size}
        torch.Size([1, 3, 64, 96])
    """

    def __init__(self, onnx_bytes: bytes, meta: dict[str, Any], *, anchors: Tensor | None = None,
                 shell: nn.Module | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.onnx_bytes, self.meta, self.anchors, self.shell = onnx_bytes, meta, anchors, shell
        self.session = _session(onnx_bytes, threads)
        self.kind = meta["kind"]
        if self.kind == "ssd":
            self.transform = _rcnn_transform(meta["transform"])
            self._post = _SSDPost(meta["postprocess"])
        self.eval()  # inference only (torchvision's transform skips its postprocess in training mode)

    def train(self, mode: bool = True) -> QuantizedModel:
        """An int8 model only runs inference: it stays in eval mode (``train()`` is a no-op)."""
        return super().train(False)

    def extra_repr(self) -> str:
        s = self.meta.get("settings", {})
        return f"kind={self.kind}, {s.get('activation_type')}/{s.get('weight_type')}, reduce_range={s.get('reduce_range')}"

    def core(self, x: Tensor) -> list[Tensor]:
        """The int8 network on an already pre-processed batch: its outputs as fp32 tensors."""
        outs = self.session.run(None, {"images": x.detach().float().contiguous().cpu().numpy()})
        return [torch.from_numpy(o) for o in outs]

    def forward(self, x: Any) -> Any:
        if self.kind == "classifier":
            return self.core(x)[0]
        if self.kind == "segmenter":
            return OrderedDict(zip(self.meta["outputs"], self.core(x)))
        if self.kind == "ssd":
            return self._ssd(x)
        return self._fpn(x)

    def _ssd(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        from torchvision.models.detection.ssd import SSD

        sizes = [tuple(img.shape[-2:]) for img in images]
        fixed = self.meta["transform"]["fixed_size"]
        if fixed and all(list(s) == list(fixed) for s in sizes):
            # already the model's size: torchvision's bilinear resize to the same size is the identity, so only
            # normalise (the same values, without the interpolation pass)
            from torchvision.models.detection.image_list import ImageList

            image_list = ImageList(torch.stack([self.transform.normalize(img) for img in images]), sizes)
        else:
            image_list, _ = self.transform(list(images))
        bbox, logits = self.core(image_list.tensors)
        anchors = [self.anchors] * len(images)
        dets = SSD.postprocess_detections(self._post, {"bbox_regression": bbox, "cls_logits": logits}, anchors,
                                          image_list.image_sizes)
        return self.transform.postprocess(dets, image_list.image_sizes, sizes)

    def _fpn(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """RetinaNet/FCOS/Faster R-CNN's own forward (eval branch), with the backbone and head(s) int8."""
        m = self.shell
        sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, _ = m.transform(list(images))
        outs = self.core(image_list.tensors)
        n = len(self.meta["feature_names"])
        feats, heads = outs[:n], outs[n:]
        if self.kind == "fasterrcnn":
            dets = self._rpn_roi(m, image_list, feats, heads)
        else:
            head = dict(zip(self.meta["head_keys"], heads))
            anchors = m.anchor_generator(image_list, feats)
            hw = [f.shape[-2] * f.shape[-1] for f in feats]
            a = head["cls_logits"].shape[1] // sum(hw)
            split = [v * a for v in hw]
            dets = m.postprocess_detections({k: list(v.split(split, dim=1)) for k, v in head.items()},
                                            [list(x.split(split)) for x in anchors], image_list.image_sizes)
        return m.transform.postprocess(dets, image_list.image_sizes, sizes)

    def _rpn_roi(self, m: nn.Module, image_list: Any, feats: list[Tensor], heads: list[Tensor]) -> Any:
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        levels = len(feats)
        objectness, deltas = heads[:levels], heads[levels:]
        anchors = m.rpn.anchor_generator(image_list, feats)
        per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        obj, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = m.rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
        boxes, _ = m.rpn.filter_proposals(proposals, obj, image_list.image_sizes, per_level)
        features = OrderedDict(zip(self.meta["feature_names"], feats))
        dets, _ = m.roi_heads(features, boxes, image_list.image_sizes)
        return dets

    def save(self, path: str | os.PathLike) -> None:
        """Write the zip archive (see the module docstring); :func:`load_quantized` reads it back."""
        meta = {**self.meta, "format": ARCHIVE_FORMAT, "onnx_sha256": hashlib.sha256(self.onnx_bytes).hexdigest()}
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("meta.json", json.dumps(meta, indent=1))
            z.writestr("model.onnx", self.onnx_bytes)
            if self.anchors is not None:
                buf = io.BytesIO()
                np.save(buf, self.anchors.numpy())
                z.writestr("anchors.npy", buf.getvalue())
            if self.shell is not None:
                buf = io.BytesIO()
                torch.save(self.shell, buf)
                z.writestr("shell.pt", buf.getvalue())


def load_quantized(path: str | os.PathLike, *, threads: int | None = None,
                   check_version: bool = True) -> QuantizedModel:
    """Restore a :meth:`QuantizedModel.save` archive.

    Args:
        path: the ``.zip`` archive.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        check_version: refuse an archive written with another onnxruntime major.minor version (its int8
            kernels and QDQ fusions may differ: re-quantize, or pass ``False`` to run it anyway).

    Raises:
        QuantizedModelError: a missing, truncated or foreign file, a corrupted graph, another onnxruntime.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from ghost_vision.deploy import quantize
        >>> from ghost_vision.models import create_ghostnet
        >>> qmodel = quantize(create_ghostnet("ghostnet_050", num_classes=4).eval(), torch.rand(2, 3, 64, 64),
        ...                   num_images=2)
        >>> path = Path(tempfile.mkdtemp()) / "classifier_int8.zip"
        >>> qmodel.save(path)
        >>> x = torch.rand(1, 3, 64, 64)
        >>> torch.equal(load_quantized(path)(x), qmodel(x))
        True
    """
    ort = require("onnxruntime", extra="onnx", purpose="loading an int8 model")
    if not os.path.isfile(path):
        raise QuantizedModelError(f"{path}: no such int8 model file")
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("meta.json"))
            onnx_bytes = z.read("model.onnx")
            names = set(z.namelist())
            anchors = torch.from_numpy(np.load(io.BytesIO(z.read("anchors.npy")))) if "anchors.npy" in names else None
            shell = (torch.load(io.BytesIO(z.read("shell.pt")), weights_only=False)
                     if "shell.pt" in names else None)
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError, zipfile.LargeZipFile) as exc:
        raise QuantizedModelError(f"{path} is truncated or not a ghost-vision int8 archive ({exc}); "
                                  "save it again with QuantizedModel.save") from exc
    if meta.get("format") != ARCHIVE_FORMAT:
        raise QuantizedModelError(f"{path}: archive format {meta.get('format')!r}, this ghost-vision reads "
                                  f"{ARCHIVE_FORMAT!r}")
    if hashlib.sha256(onnx_bytes).hexdigest() != meta.get("onnx_sha256"):
        raise QuantizedModelError(f"{path}: the ONNX graph does not match its checksum (corrupted file)")
    saved, here = meta.get("onnxruntime", "?"), ort.__version__
    if check_version and saved.split(".")[:2] != here.split(".")[:2]:
        raise QuantizedModelError(
            f"{path} was quantized with onnxruntime {saved}, this is onnxruntime {here}: int8 kernels and QDQ "
            "fusions change between versions, so re-quantize it here (or load_quantized(..., check_version=False)"
            " to run it anyway)")
    return QuantizedModel(onnx_bytes, meta, anchors=anchors, shell=shell, threads=threads)
