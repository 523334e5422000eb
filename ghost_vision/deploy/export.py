"""ONNX and TorchScript export of every Ghost model, checked against onnxruntime / the eager model.

Detectors are exported up to their head outputs: decoding and NMS have data-dependent shapes, so they stay
in Python (``model.box_coder``/``model.postprocess_detections``). :func:`exportable` picks the network part:

* SSD (ours or torchvision's): ``SSDHeadOutputs`` -> ``(bbox_regression, cls_logits)``;
* NanoDet-Plus: ``NanoDetOutputs`` -> the GFL head outputs ``(N, A, C + 4 (reg_max + 1))`` (decode and NMS:
  ``model.postprocess``); the training-only assist head is not part of it;
* RetinaNet / FCOS: backbone maps + head outputs; Faster R-CNN: backbone maps + RPN head outputs
  (the RoI heads need proposals, i.e. NMS);
* segmentation models: their output dict as a tuple; classifiers as they are; feature backbones: maps.

Example:
    >>> import torch
    >>> from ghost_vision.models import create_ghostnet
    >>> from ghost_vision.deploy.export import export_onnx
    >>> model = create_ghostnet("ghostnet_050").eval()
    >>> report = export_onnx(model, torch.rand(1, 3, 224, 224), "/tmp/ghostnet_050.onnx")  # doctest: +SKIP
    >>> report["max_abs_diff"] < 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ghost_vision._optional import require

__all__ = [
    "DetectorNetwork",
    "NanoDetOutputs",
    "SSDHeadOutputs",
    "TupleOutputs",
    "exportable",
    "export_onnx",
    "export_torchscript",
    "ort_session",
    "flatten_outputs",
]


def flatten_outputs(out: Any) -> list[Tensor]:
    """Tensors of a nested output (dicts in key order, lists/tuples in order).

    Example:
        >>> import torch
        >>> out = {"boxes": torch.zeros(2, 4), "scores": [torch.zeros(2), torch.ones(1)]}
        >>> [tuple(t.shape) for t in flatten_outputs(out)]
        [(2, 4), (2,), (1,)]
    """
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    return [t for o in out for t in flatten_outputs(o)]


class TupleOutputs(nn.Module):
    """Wraps a model whose output is a dict/list of tensors so that it returns a flat tuple (ONNX, tracing)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(flatten_outputs(self.model(x)))


class _HeadOutputs(nn.Module):
    """A one-stage detector's ``backbone`` and ``head`` for export, with its ``transform`` for :meth:`preprocess`;
    subclasses say what ``forward`` returns."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.transform = model.transform

    def preprocess(self, images: list[Tensor]) -> Tensor:
        """Resize and normalize a list of ``3 x H x W`` float images like the full model does."""
        return self.transform(images)[0].tensors


class SSDHeadOutputs(_HeadOutputs):
    """An SSD (ours or torchvision's) up to its head outputs, for export: ``(bbox_regression, cls_logits)``
    of shapes ``(N, A, 4)`` and ``(N, A, num_classes)`` for a batch that is already resized to the model's
    size and normalized with its ``image_mean``/``image_std`` (see :meth:`preprocess`).

    Decoding (``model.box_coder`` with ``model.anchor_generator``'s default boxes), score thresholding
    and NMS stay outside the exported graph: NMS has data-dependent output shapes.

    Example:
        >>> import torch
        >>> from ghost_vision.models.detection import ssdlite320_ghostnet
        >>> heads = SSDHeadOutputs(ssdlite320_ghostnet(num_classes=3, width=0.5).eval())
        >>> with torch.no_grad():
        ...     regression, logits = heads(heads.preprocess([torch.rand(3, 240, 320)]))
        >>> tuple(regression.shape), tuple(logits.shape)
        ((1, 3234, 4), (1, 3234, 3))
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = list(self.backbone(x).values())
        out = self.head(features)
        return out["bbox_regression"], out["cls_logits"]


class NanoDetOutputs(_HeadOutputs):
    """A :class:`~ghost_vision.models.detection.NanoDetPlus` up to its head outputs, for export:
    ``(N, A, num_classes - 1 + 4 (reg_max + 1))`` for a batch already resized and normalised (see
    :meth:`preprocess`). ``model.postprocess(outputs, (h, w), original_sizes)`` turns them into detections
    (fp32 decoding, class-wise NMS), as the model's own ``forward`` does. The assist head is left out.

    Example:
        >>> import torch
        >>> from ghost_vision.models import get_model
        >>> model = get_model("nanodet_plus_ghostnet", num_classes=3, width=0.5, size=160).eval()
        >>> core = NanoDetOutputs(model)
        >>> images = [torch.rand(3, 120, 200)]
        >>> x = core.preprocess(images)
        >>> tuple(x.shape)
        (1, 3, 160, 160)
        >>> detections = model.postprocess(core(x), (160, 160), [img.shape[-2:] for img in images])
        >>> torch.equal(detections[0]["boxes"], model(images)[0]["boxes"])
        True
    """

    def forward(self, x: Tensor) -> Tensor:
        return self.head(list(self.backbone(x).values()))


class DetectorNetwork(nn.Module):
    """A torchvision-style detector up to its head outputs, for an already resized and normalised batch.

    Returns the backbone maps followed by the head outputs (RetinaNet/FCOS: ``model.head``; Faster R-CNN:
    ``model.rpn.head``'s objectness and box deltas per level) as a flat tuple.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head if hasattr(model, "rpn") else None
        self.head = None if self.rpn_head is not None else model.head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = list(self.backbone(x).values())
        heads = self.rpn_head(feats) if self.rpn_head is not None else self.head(feats)
        return tuple(feats) + tuple(flatten_outputs(heads))


def exportable(model: nn.Module) -> tuple[nn.Module, bool]:
    """``(network, dynamic_size_ok)``: the part of ``model`` that can be exported, returning tensors.

    Example:
        >>> from torchvision.models.detection import ssdlite320_mobilenet_v3_large
        >>> net, dynamic_size = exportable(ssdlite320_mobilenet_v3_large(num_classes=3, weights_backbone=None).eval())
        >>> type(net).__name__, dynamic_size
        ('SSDHeadOutputs', False)
    """
    from torchvision.models.detection.ssd import SSD

    from ..models.detection import NanoDetPlus

    if isinstance(model, SSD):  # fixed size: the default boxes are made for it
        return SSDHeadOutputs(model).eval(), False
    if isinstance(model, NanoDetPlus):  # prior points are made for any size outside the graph
        return NanoDetOutputs(model).eval(), True
    if hasattr(model, "backbone") and (hasattr(model, "rpn") or hasattr(model, "head")) and hasattr(
        model, "transform"
    ):
        return DetectorNetwork(model).eval(), True
    # eval(): a wrapper in training mode would put the model back into training mode after export
    return TupleOutputs(model).eval(), True


def _inference_form(model: nn.Module) -> nn.Module:
    """``model`` in eval mode; with GhostNetV3 training branches inside, a re-parameterized copy (the fused
    form is what gets exported; the caller's model is left as it is)."""
    from ..models.layers_v3 import GhostBottleneckV3, GhostModuleV3, reparameterize

    model = model.eval()
    if any(isinstance(m, (GhostBottleneckV3, GhostModuleV3)) for m in model.modules()):
        model = reparameterize(copy.deepcopy(model))
    return model


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session with all graph optimisations and ``threads`` intra-op threads."""
    ort = require("onnxruntime", extra="onnx", purpose="running an ONNX file in onnxruntime")

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    # no busy-waiting pool threads: they would steal the cores from the next session/model being timed
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _max_diff(ref: Sequence[Tensor], got: Sequence[np.ndarray]) -> float:
    if len(ref) != len(got):
        raise AssertionError(f"{len(got)} outputs, expected {len(ref)}")
    diffs = [0.0]
    for r, g in zip(ref, got):
        r = r.detach().float().numpy()
        if r.shape != g.shape:
            raise AssertionError(f"output shape {g.shape}, expected {r.shape}")
        diffs.append(float(np.abs(r - g).max() / max(1.0, float(np.abs(r).max()))) if r.size else 0.0)
    return max(diffs)


def export_onnx(
    model: nn.Module,
    example: Tensor,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    dynamic_size: bool | None = None,
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
    threads: int | None = None,
) -> dict[str, Any]:
    """Export ``exportable(model)`` to ONNX and check it in onnxruntime against the eager model.

    GhostNetV3 training branches are fused first (on a copy). The check runs the example and, when the axes are dynamic, a batch of 2 and a 32-px larger input;
    outputs must agree within ``atol`` (relative to each output's magnitude when it exceeds 1). The
    legacy TorchScript-based exporter (``dynamo=False``) is used where this torch has it.

    Returns:
        a report: ``path``, ``outputs`` (names), ``dynamic_batch``, ``dynamic_size``, ``max_abs_diff``,
        ``checked_shapes``.

    Example:
        >>> import tempfile, torch
        >>> from ghost_vision.models import ghostnet_050
        >>> path = f"{tempfile.mkdtemp()}/ghostnet_050.onnx"
        >>> report = export_onnx(ghostnet_050().eval(), torch.rand(1, 3, 64, 64), path)
        >>> report["max_abs_diff"] < 1e-4, report["checked_shapes"]
        (True, [[1, 3, 64, 64], [2, 3, 64, 64], [1, 3, 96, 96]])
        >>> [i.name for i in ort_session(path).get_inputs()]
        ['images']
    """
    require("onnx", extra="onnx", purpose="ONNX export")  # torch.onnx.export writes through the onnx package
    model = _inference_form(model)
    net, size_ok = exportable(model)
    dynamic_size = size_ok if dynamic_size is None else (dynamic_size and size_ok)
    with torch.inference_mode():
        ranks = [t.dim() for t in flatten_outputs(net(example))]
    outputs = [f"output_{i}" for i in range(len(ranks))]
    axes: dict[str, dict[int, str]] = {"images": {}}
    if dynamic_batch:
        axes["images"][0] = "batch"
    if dynamic_size:
        axes["images"].update({2: "height", 3: "width"})
    for name, rank in zip(outputs, ranks):  # every output is batch-first; maps (N, C, H, W), heads (N, A, K)
        axes[name] = {0: "batch"} if dynamic_batch else {}
        if dynamic_size and rank >= 3:
            axes[name].update({1: f"{name}_anchors"} if rank == 3 else {2: f"{name}_h", 3: f"{name}_w"})
    axes = {k: v for k, v in axes.items() if v}
    kwargs: dict[str, Any] = dict(
        input_names=["images"], output_names=outputs, dynamic_axes=axes or None, opset_version=opset,
        do_constant_folding=True,
    )
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (example,), str(path), dynamo=False, **kwargs)
        except TypeError:  # an older torch without the dynamo switch
            torch.onnx.export(net, (example,), str(path), **kwargs)
    report: dict[str, Any] = dict(path=str(path), outputs=outputs, dynamic_batch=dynamic_batch,
                                  dynamic_size=bool(dynamic_size), max_abs_diff=None, checked_shapes=[])
    if not check:
        return report
    sess = ort_session(path, threads)
    shapes = [tuple(example.shape)]
    if dynamic_batch:
        shapes.append((2, *example.shape[1:]))
    if dynamic_size:
        shapes.append((example.shape[0], example.shape[1], example.shape[2] + 32, example.shape[3] + 32))
    worst = 0.0
    for shape in shapes:
        x = example if shape == tuple(example.shape) else torch.rand(shape, dtype=example.dtype)
        with torch.inference_mode():
            ref = flatten_outputs(net(x))
        got = sess.run(None, {"images": x.contiguous().numpy()})
        worst = max(worst, _max_diff(ref, got))
    report.update(max_abs_diff=worst, checked_shapes=[list(s) for s in shapes])
    if worst > atol:
        raise AssertionError(f"onnxruntime differs from eager by {worst:.3g} (> {atol}) for {path}")
    return report


def export_torchscript(
    model: nn.Module, example: Tensor, path: str | os.PathLike, *, atol: float = 1e-4
) -> dict[str, Any]:
    """Save TorchScript: ``torch.jit.script`` of the whole model where it compiles (detectors keep their
    postprocessing then), else ``torch.jit.trace`` of :func:`exportable`'s network. Checked on ``example``.

    Returns:
        a report: ``path``, ``method`` (``"script"`` or ``"trace"``), ``max_abs_diff``, ``script_error``.

    Example:
        >>> import tempfile, torch
        >>> from ghost_vision.models import ghostnet_050
        >>> report = export_torchscript(ghostnet_050().eval(), torch.rand(1, 3, 64, 64), f"{tempfile.mkdtemp()}/g.pt")
        >>> report["method"], report["max_abs_diff"] < 1e-4
        ('script', True)
    """
    model = _inference_form(model)
    report: dict[str, Any] = dict(path=str(path), method=None, max_abs_diff=None, script_error=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.script(model)
            report["method"] = "script"
            net = model
        except Exception as exc:  # noqa: BLE001 - any scripting failure falls back to tracing
            report["script_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            net, _ = exportable(model)
            with torch.no_grad():
                scripted = torch.jit.trace(net, (example,), check_trace=False)
            report["method"] = "trace"
    from torchvision.models.detection.ssd import SSD

    probe = net
    if report["method"] == "script" and (isinstance(model, SSD) or hasattr(model, "transform")):
        probe, _ = exportable(model)  # compare the network part: detections are (losses, dets) in script
        scripted_probe = torch.jit.trace(probe, (example,), check_trace=False)
    else:
        scripted_probe = scripted
    with torch.inference_mode():
        ref = flatten_outputs(probe(example))
        got = [t.numpy() for t in flatten_outputs(scripted_probe(example))]
    report["max_abs_diff"] = _max_diff(ref, got)
    if report["max_abs_diff"] > atol:
        raise AssertionError(f"TorchScript differs from eager by {report['max_abs_diff']:.3g}")
    scripted.save(str(path))
    return report
