"""int8 post-training quantization with onnxruntime's static QDQ quantizer.

:func:`quantize` exports the network core of a model (the same core as :mod:`ghost_vision.deploy.export`:
``optimize_for_onnx``'s folded, concat-free rewrite; GhostNetV3 re-parameterized), calibrates it on images
run through the model's own pre-processing, and quantizes it with the types this CPU runs fastest
(:func:`int8_settings`). The returned :class:`~ghost_vision.deploy.quantized_model.QuantizedModel` keeps
the model's fp32 pre/post-processing (resize/normalize, box decoding, NMS, final upsampling) around the
int8 core, so its outputs have the eval model's format.

Example:
    >>> import torch
    >>> from ghost_vision.models import create_ghostnet
    >>> from ghost_vision.deploy.quantize import quantize
    >>> model = create_ghostnet("ghostnet_050", num_classes=10).eval()
    >>> qmodel = quantize(model, torch.rand(4, 3, 64, 64), num_images=4)
    >>> tuple(qmodel(torch.rand(2, 3, 64, 64)).shape)
    (2, 10)
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import inspect
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ghost_vision._optional import require

from .calibration import calibration_images
from .export import _inference_form, export_onnx, exportable
from .onnx_graph import optimize_for_onnx
from .quantized_model import QuantizedModel, transform_config

__all__ = ["QuantizationError", "cpu_features", "int8_settings", "quantize", "qdq_count", "sensitivity"]

METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


class QuantizationError(RuntimeError):
    """The model cannot be quantized (not exportable, an unknown method or node pattern)."""


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, bool]:
    """The x86 flags that decide int8 kernels: ``avx2``, ``avx512bw``, ``avx512_vnni``, ``avx_vnni``, and
    ``vnni`` (either VNNI form). All ``False`` where ``cpuinfo`` cannot be read (not Linux, not x86)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    out = {f: f in flags for f in ("avx2", "avx512bw", "avx512_vnni", "avx_vnni")}
    out["vnni"] = out["avx512_vnni"] or out["avx_vnni"]
    return out


def int8_settings(features: dict[str, bool] | None = None) -> dict[str, Any]:
    """Activation/weight types for this CPU, as onnxruntime recommends for x86: uint8 activations and int8
    weights (U8S8; S8S8 has no fast x86 kernels, measured 2.35x slower than fp32), ``reduce_range`` (7-bit
    weights) where the CPU lacks VNNI, whose ``vpmaddubsw`` sums pairs of u8*s8 products in int16 and
    would saturate with full-range weights."""
    features = cpu_features() if features is None else features
    vnni = bool(features.get("vnni"))
    return dict(activation_type="QUInt8", weight_type="QInt8", reduce_range=not vnni, format="QDQ",
                cpu="VNNI" if vnni else ("AVX-512" if features.get("avx512bw") else
                                         "AVX2" if features.get("avx2") else "other"))


def _kind(model: nn.Module) -> str:
    from torchvision.models.detection.ssd import SSD

    if isinstance(model, SSD):
        return "ssd"
    if hasattr(model, "transform") and hasattr(model, "backbone"):
        if hasattr(model, "rpn"):
            return "fasterrcnn"
        if hasattr(model, "head") and hasattr(model, "anchor_generator"):
            return "retinanet_fcos"
        raise QuantizationError(f"{type(model).__name__}: a detector that is neither an SSD, an R-CNN (``rpn``) "
                                "nor a RetinaNet/FCOS (``head`` + ``anchor_generator``): no exportable core")
    seg = any(hasattr(model, a) for a in ("classifier", "aux_classifier")) and hasattr(model, "backbone")
    return "segmenter" if seg else "classifier"


def _core_inputs(model: nn.Module, kind: str, images: list[Tensor]) -> list[Tensor]:
    """Calibration batches of one image each, as the exported core receives them."""
    if kind in ("classifier", "segmenter"):
        return [img.unsqueeze(0) for img in images]
    with torch.inference_mode():
        return [model.transform([img])[0].tensors for img in images]


class _Reader:
    """onnxruntime ``CalibrationDataReader``: the core inputs one by one, in ranges (``CalibStridedMinMax``)."""

    def __init__(self, inputs: list[Tensor]) -> None:
        self.inputs, self.i, self.end = inputs, 0, len(inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.i, self.end = start_index, min(end_index, len(self.inputs))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.end:
            return None
        self.i += 1
        return {"images": self.inputs[self.i - 1].contiguous().numpy()}

    def rewind(self) -> None:
        self.i, self.end = 0, len(self.inputs)


def _stride(n: int, most: int = 16) -> int:
    """Calibration chunk size: the largest divisor of ``n`` up to ``most`` (onnxruntime wants a divisor). Every
    intermediate tensor of a chunk is held in memory (~100 MB per 320 px SSDLite image), and onnxruntime's
    other knob for this, ``CalibMaxIntermediateOutputs``, drops the data it collected (1.32: "No data is
    collected" or ranges from the last chunk only)."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def _match(patterns: Sequence[str], nodes: Sequence[Any]) -> list[str]:
    out = []
    for p in patterns:
        hit = [n.name for n in nodes if fnmatch.fnmatchcase(n.name, p) or n.op_type == p]
        if not hit:
            raise QuantizationError(f"exclude pattern {p!r} matches no node name or op type of the graph "
                                    "(see sensitivity() for the node groups)")
        out += hit
    return out


def _fp32_nodes(graph: Any) -> list[str]:
    """Nodes kept fp32 always: an upsampling that produces a graph output (a segmenter's logits at the input
    size), so the int8 part ends before it (its input is dequantized once, at the lower resolution)."""
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if n.op_type == "Resize" and set(n.output) & outputs]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence onnxruntime's optimizer notes and the quantizer's root-logger advice while quantizing (the
    defaults, warnings of both, are restored after)."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        onnxruntime.set_default_logger_severity(2)


def _export(model: nn.Module, example: Tensor, path: Path) -> None:
    q = require("onnxruntime.quantization", extra="onnx", purpose="int8 quantization")
    raw = path.with_suffix(".raw.onnx")
    try:
        export_onnx(optimize_for_onnx(model), example, raw, dynamic_batch=True, check=False)
    except Exception as exc:  # any exporter failure: say which model and why
        raise QuantizationError(f"{type(model).__name__} cannot be exported to ONNX, so it cannot be "
                                f"quantized: {type(exc).__name__}: {str(exc)[:300]}") from exc
    # shape inference + onnxruntime's basic fusions, as its quantizer wants: biases become initializers
    # (quantized to int32 into QLinearConv instead of a float Add after it)
    with _quiet():
        q.quant_pre_process(str(raw), str(path))


def _quantize_file(src: Path, dst: Path, inputs: list[Tensor], *, method: str, per_channel: bool,
                   settings: dict[str, Any], exclude: Sequence[str] = (), only: Sequence[str] | None = None,
                   cache: Path | None = None) -> None:
    onnx = require("onnx", extra="onnx", purpose="int8 quantization")
    q = require("onnxruntime.quantization", extra="onnx", purpose="int8 quantization")
    graph = onnx.load(str(src)).graph
    excluded = sorted(set(_match(exclude, graph.node)) | set(_fp32_nodes(graph)))
    kwargs: dict[str, Any] = {}
    if cache is not None and "calibration_cache_path" in inspect.signature(q.quantize_static).parameters:
        kwargs["calibration_cache_path"] = str(cache)  # onnxruntime >= 1.2x: calibrate once for all groups
    with _quiet():
        q.quantize_static(
            str(src), str(dst), _Reader(inputs), quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
            reduce_range=settings["reduce_range"], activation_type=getattr(q.QuantType, settings["activation_type"]),
            weight_type=getattr(q.QuantType, settings["weight_type"]), nodes_to_exclude=excluded,
            nodes_to_quantize=list(only) if only is not None else None,
            calibrate_method=getattr(q.CalibrationMethod, METHODS[method]),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                           "CalibStridedMinMax": _stride(len(inputs))}, **kwargs)


def _meta(model: nn.Module, kind: str, net_outputs: Any, settings: dict[str, Any], method: str,
          per_channel: bool, num_images: int, exclude: Sequence[str]) -> dict[str, Any]:
    import onnxruntime

    meta: dict[str, Any] = dict(kind=kind, onnxruntime=onnxruntime.__version__, torch=torch.__version__,
                                model=type(model).__name__, settings=settings, method=method,
                                per_channel=per_channel, calibration_images=num_images, exclude=list(exclude))
    if kind == "segmenter":
        meta["outputs"] = list(net_outputs.keys())
    if kind == "ssd":
        meta["transform"] = transform_config(model.transform)
        meta["postprocess"] = dict(score_thresh=float(model.score_thresh), nms_thresh=float(model.nms_thresh),
                                   topk_candidates=int(model.topk_candidates),
                                   detections_per_img=int(model.detections_per_img),
                                   box_coder_weights=list(map(float, model.box_coder.weights)))
    return meta


def _ssd_anchors(model: nn.Module, x: Tensor) -> Tensor:
    """The SSD's default boxes for its fixed input size (the same for every image)."""
    from torchvision.models.detection.image_list import ImageList

    with torch.inference_mode():
        feats = list(model.backbone(x).values())
        return model.anchor_generator(ImageList(x, [tuple(x.shape[-2:])]), feats)[0].clone()


def _shell(model: nn.Module, kind: str) -> nn.Module:
    """The detector without the exported parts: its transform, anchors, post-processing (and RPN/RoI heads)."""
    shell = copy.copy(model)
    shell._modules = dict(model._modules)
    shell._modules["backbone"] = nn.Identity()
    if kind == "fasterrcnn":
        rpn = copy.copy(model.rpn)
        rpn._modules = {**model.rpn._modules, "head": nn.Identity()}
        shell._modules["rpn"] = rpn
    else:
        shell._modules["head"] = nn.Identity()
    return copy.deepcopy(shell)


def _prepare(model: nn.Module, calibration: Any, num_images: int, tmp: Path) -> tuple[nn.Module, str, list[Tensor]]:
    kind = _kind(model)
    model = _inference_form(model)
    if model.training:
        raise QuantizationError("quantize() needs the model in eval mode")
    inputs = _core_inputs(model, kind, calibration_images(calibration, num_images=num_images))
    _export(model, inputs[0], tmp / "fp32.onnx")
    return model, kind, inputs


def quantize(
    model: nn.Module,
    calibration: Any,
    *,
    num_images: int = 200,
    method: str = "minmax",
    per_channel: bool = True,
    exclude: Sequence[str] | None = None,
    settings: dict[str, Any] | None = None,
    threads: int | None = None,
    int8: bool = True,
) -> QuantizedModel:
    """Quantize ``model``'s network core to int8 (static, QDQ, onnxruntime); pre/post-processing stay fp32.

    Covered: classifiers (GhostNet v1/v2/v3 - v3 in its fused deploy form), segmenters (DeepLab-lite,
    LR-ASPP), SSD detectors (SSDLite-Ghost), RetinaNet/FCOS (backbone + head int8) and Faster/Mask R-CNN
    (backbone + RPN head int8; RPN proposal filtering and the RoI box/mask heads fp32 torch).

    Args:
        model: the eval-mode model (GhostNetV3 training branches are fused on a copy).
        calibration: a tensor batch ``N x 3 x H x W`` in [0, 1], an image folder or a DataModule (its
            validation split); see :mod:`ghost_vision.deploy.calibration`.
        num_images: calibration images used (the first ones).
        method: activation range calibration: ``"minmax"``, ``"percentile"`` (99.999th) or ``"entropy"``.
        per_channel: per-output-channel weight scales (depthwise convolutions need them: their filters'
            ranges differ by orders of magnitude).
        exclude: node names (glob patterns) or op types to keep fp32, e.g. from :func:`sensitivity`.
        settings: override :func:`int8_settings` (the types chosen for this CPU).
        threads: onnxruntime intra-op threads of the returned model.
        int8: ``False`` skips the quantization: the same wrapper around the fp32 ONNX core (the baseline
            that int8 accuracy and speed are compared with; its outputs equal the eval model's).

    Returns:
        a :class:`~ghost_vision.deploy.quantized_model.QuantizedModel`.

    Raises:
        CalibrationError: an empty calibration set, or images of the wrong channel count or size.
        QuantizationError: a model that cannot be exported, an unknown ``method``, an ``exclude`` that matches
            nothing.

    Example:
        >>> import torch
        >>> from ghost_vision.models import create_ghostnet
        >>> model = create_ghostnet("ghostnet_050", num_classes=10).eval()
        >>> qmodel = quantize(model, torch.rand(4, 3, 64, 64), num_images=4, method="minmax")
        >>> qmodel(torch.rand(1, 3, 64, 64)).shape  # called like the model: logits
        torch.Size([1, 10])
    """
    if method not in METHODS:
        raise QuantizationError(f"method={method!r}: choose one of {', '.join(METHODS)}")
    settings = {**int8_settings(), **(settings or {})}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model, kind, inputs = _prepare(model, calibration, num_images, tmp)
        if int8:
            _quantize_file(tmp / "fp32.onnx", tmp / "int8.onnx", inputs, method=method, per_channel=per_channel,
                           settings=settings, exclude=exclude or ())
        else:
            settings = {"int8": False}
        onnx_bytes = (tmp / ("int8.onnx" if int8 else "fp32.onnx")).read_bytes()
    return _wrap(model, kind, inputs[0], onnx_bytes, settings, method, per_channel, len(inputs), exclude or (),
                 threads)


def _wrap(model: nn.Module, kind: str, example: Tensor, onnx_bytes: bytes, settings: dict[str, Any], method: str,
          per_channel: bool, n: int, exclude: Sequence[str], threads: int | None) -> QuantizedModel:
    net, _ = exportable(model)
    with torch.inference_mode():
        out = net.model(example) if kind in ("classifier", "segmenter") else None
    outputs: Any = out if isinstance(out, dict) else {}
    meta = _meta(model, kind, outputs, settings, method, per_channel, n, exclude)
    if kind in ("retinanet_fcos", "fasterrcnn"):
        with torch.inference_mode():
            feats = model.backbone(example)
            meta["feature_names"] = list(feats.keys())
            if kind == "retinanet_fcos":
                meta["head_keys"] = list(model.head(list(feats.values())).keys())
    anchors = _ssd_anchors(model, example) if kind == "ssd" else None
    shell = _shell(model, kind) if kind in ("retinanet_fcos", "fasterrcnn") else None
    return QuantizedModel(onnx_bytes, meta, anchors=anchors, shell=shell, threads=threads)


def qdq_count(qmodel: QuantizedModel | bytes, *, threads: int = 1) -> dict[str, int]:
    """Op counts of the graph onnxruntime actually runs (after its QDQ fusions): how many
    ``QuantizeLinear``/``DequantizeLinear`` nodes were left unfused (each one a float<->int8 conversion at
    run time) next to the fused int8 ops (``QLinearConv``, ...)."""
    onnx = require("onnx", extra="onnx", purpose="counting the optimized graph's ops")
    ort = require("onnxruntime", extra="onnx", purpose="counting the optimized graph's ops")
    data = qmodel.onnx_bytes if isinstance(qmodel, QuantizedModel) else qmodel
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _group(name: str, depth: int) -> str:
    parts = [p for p in name.split("/") if p]
    return "/" + "/".join(parts[:depth]) if len(parts) > depth else "/" + "/".join(parts[:-1] or parts)


def sensitivity(
    model: nn.Module,
    calibration: Any,
    *,
    num_images: int = 16,
    depth: int = 4,
    method: str = "minmax",
    metric: Callable[[nn.Module], float] | None = None,
    settings: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per node group: the damage done when *only* that group is int8, worst first - to choose ``exclude``.

    Groups are the exported graph's node-name prefixes of ``depth`` path components (e.g. one bottleneck,
    ``/backbone/.../blocks.3``). Calibration runs once (a shared range cache); each group is then quantized
    alone and scored by ``metric`` (accuracy drop: ``metric(fp32) - metric(int8 group)``) when given, else by
    the relative L2 error of the core outputs on the calibration inputs (``|int8 - fp32| / |fp32|``).

    Returns:
        ``[{"group", "nodes", "error" (or "drop"), "exclude" (the pattern to pass)}]``, sorted worst first.
    """
    onnx = require("onnx", extra="onnx", purpose="int8 sensitivity analysis")
    from .quantized_model import _session

    settings = {**int8_settings(), **(settings or {})}
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model, kind, inputs = _prepare(model, calibration, num_images, tmp)
        nodes = onnx.load(str(tmp / "fp32.onnx")).graph.node
        groups: dict[str, list[str]] = {}
        for n in nodes:
            if n.op_type in ("Conv", "Gemm", "MatMul"):  # a group is worth scoring when it holds weights
                groups.setdefault(_group(n.name, depth), [])
        for n in nodes:
            g = _group(n.name, depth)
            if g in groups:
                groups[g].append(n.name)
        ref_sess = _session((tmp / "fp32.onnx").read_bytes(), None)
        feeds = [{"images": x.numpy()} for x in inputs]
        ref = [ref_sess.run(None, f) for f in feeds]
        base = metric(model) if metric is not None else None
        for g, names in groups.items():
            _quantize_file(tmp / "fp32.onnx", tmp / "g.onnx", inputs, method=method, per_channel=True,
                           settings=settings, only=names, cache=tmp / "calib.json")
            data = (tmp / "g.onnx").read_bytes()
            row: dict[str, Any] = {"group": g, "nodes": len(names), "exclude": g + "/*"}
            if metric is not None:
                qm = _wrap(model, kind, inputs[0], data, settings, method, True, len(inputs), (), None)
                row["drop"] = base - metric(qm)
            else:
                sess = _session(data, None)
                num = den = 0.0
                for f, r in zip(feeds, ref):
                    for a, b in zip(sess.run(None, f), r):
                        num += float(((a - b) ** 2).sum())
                        den += float((b**2).sum())
                row["error"] = (num / max(den, 1e-30)) ** 0.5
            rows.append(row)
    key = "drop" if metric is not None else "error"
    return sorted(rows, key=lambda r: -r[key])
