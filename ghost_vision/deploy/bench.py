"""Benchmark helpers for ``tools/benchmark.py``: model pairs, MACs, interleaved timing, training steps.

Example:
    >>> from ghost_vision.deploy.bench import PAIRS, build, count_macs, count_params
    >>> pair = PAIRS["backbone"]
    >>> ghost, peer = build(pair["ghost"]), build(pair["peer"])
    >>> count_macs(ghost, pair["input"](1)) < count_macs(peer, pair["input"](1))
    True
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PAIRS", "V3_VARIANTS", "V3_TRAIN", "build", "count_params", "count_macs", "interleaved", "ratio_summary",
           "train_step", "train_step_subprocess", "peak_rss_mb", "ort_op_profile", "v3_costs", "MASKRCNN_COSTS",
           "maskrcnn_costs"]


def _det_images(size: int) -> Callable[[int], list[Tensor]]:
    return lambda b: [torch.rand(3, size, size) for _ in range(b)]


def _tensor(h: int, w: int) -> Callable[[int], Tensor]:
    return lambda b: torch.rand(b, 3, h, w)


#: torchvision's 320 px Faster R-CNN settings, applied to both models of the pair.
FRCNN_320 = dict(min_size=320, max_size=640, rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=150,
                 rpn_score_thresh=0.05)

#: name -> {"ghost": spec, "peer": spec, "input": batch -> model input, "kind": ...}; a spec is
#: ``(registry name, kwargs)`` for :func:`ghost_vision.models.get_model`.
PAIRS: dict[str, dict[str, Any]] = {
    "backbone": dict(
        kind="backbone", size="224x224",
        ghost=("ghostnet_100", dict(features_only=True)),
        peer=("mobilenet_v3_large_features", {}),
        input=_tensor(224, 224)),
    "ssdlite": dict(
        kind="det", size="320x320",
        ghost=("ssdlite320_ghostnet", dict(num_classes=91)),
        peer=("ssdlite320_mobilenet_v3_large", dict(num_classes=91)),
        input=_det_images(320)),
    "nanodet": dict(
        kind="det", size="320x320",
        ghost=("nanodet_plus_ghostnet", dict(num_classes=91)),
        peer=("ssdlite320_ghostnet", dict(num_classes=91)),
        input=_det_images(320)),
    "fasterrcnn": dict(
        kind="det", size="320x320",
        ghost=("fasterrcnn_ghostnet_fpn", dict(num_classes=91, **FRCNN_320)),
        peer=("fasterrcnn_mobilenet_v3_large_320_fpn", dict(num_classes=91)),
        input=_det_images(320)),
    # torchvision has no MobileNetV3 Mask R-CNN: the peer is ours, built as fasterrcnn_mobilenet_v3_large_fpn
    "maskrcnn": dict(
        kind="det", size="320x320",
        ghost=("maskrcnn_ghostnet_fpn", dict(num_classes=91, **FRCNN_320)),
        peer=("maskrcnn_mobilenet_v3_large_fpn", dict(num_classes=91, **FRCNN_320)),
        input=_det_images(320)),
    "deeplabv3": dict(
        kind="seg", size="512x1024",
        ghost=("deeplabv3_ghostnet", dict(num_classes=19)),
        peer=("deeplabv3_mobilenet_v3_large", dict(num_classes=19)),
        input=_tensor(512, 1024)),
    "lraspp": dict(
        kind="seg", size="512x1024",
        ghost=("lraspp_ghostnet", dict(num_classes=19)),
        peer=("lraspp_mobilenet_v3_large", dict(num_classes=19)),
        input=_tensor(512, 1024)),
}


#: GhostNetV3 rows of the benchmark (``tools/benchmark.py --v3``): training vs deploy form, and one SSDLite
#: training step on the v3 training form against the same detector on GhostNet v1.
V3_VARIANTS = ("ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130", "ghostnetv3_160")
V3_TRAIN: dict[str, tuple[str, dict[str, Any]]] = {
    "v1": ("ssdlite320_ghostnet", dict(num_classes=91, backbone="ghostnet_100")),
    "v3": ("ssdlite320_ghostnet", dict(num_classes=91, backbone="ghostnetv3_100")),
}


def v3_costs(names: tuple[str, ...] = V3_VARIANTS, size: int = 224) -> dict[str, dict[str, float]]:
    """Params (M) and MACs (G, at ``size`` px) of each GhostNetV3 classifier in its training form and after
    :func:`~ghost_vision.models.reparameterize` (counted on the meta device: no weights are allocated)."""
    from ..models import create_ghostnet, reparameterize

    out = {}
    for name in names:
        with torch.device("meta"):
            model = create_ghostnet(name).eval()
        x = torch.zeros(1, 3, size, size, device="meta")
        row = {"train_params_m": count_params(model) / 1e6, "train_macs_g": count_macs(model, x) / 1e9}
        reparameterize(model)
        row.update(deploy_params_m=count_params(model) / 1e6, deploy_macs_g=count_macs(model, x) / 1e9)
        out[name] = row
    return out


#: The rows of the Mask R-CNN cost table: ours, the MobileNetV3 peer, torchvision's ResNet-50 reference, and
#: the "mobile" setting of ours (fewer proposals, a 2-conv mask head).
MASKRCNN_COSTS: dict[str, tuple[str, dict[str, Any]]] = {
    "maskrcnn_ghostnet_fpn": ("maskrcnn_ghostnet_fpn", {}),
    "maskrcnn_mobilenet_v3_large_fpn": ("maskrcnn_mobilenet_v3_large_fpn", {}),
    "maskrcnn_resnet50_fpn": ("maskrcnn_resnet50_fpn", {}),
    "maskrcnn_ghostnet_fpn mobile": ("maskrcnn_ghostnet_fpn", dict(mask_head_convs=2, rpn_post_nms_top_n_test=150)),
}


def maskrcnn_costs(size: int = 320, proposals: int = 1000, detections: int = 100,
                   rows: dict[str, tuple[str, dict[str, Any]]] | None = None) -> dict[str, dict[str, float]]:
    """Params (M) and MACs (G) of whole Mask R-CNNs (backbone, FPN, RPN, box and mask heads) on one
    ``size x size`` image, at exactly ``proposals`` RoIs into the box head and ``detections`` into the mask head
    (a row's kwargs may change them, e.g. ``rpn_post_nms_top_n_test``); ``backbone_macs_g`` is the part before
    the RoI heads (backbone, FPN, RPN head: what ONNX export covers).

    The counts would otherwise depend on the random weights, so RPN and box NMS are switched off and every
    score threshold is 0 (``FlopCounterMode`` flops / 2; RoIAlign and NMS are not counted). ``rows``: name ->
    registry spec (default :data:`MASKRCNN_COSTS`); ``maskrcnn_resnet50_fpn`` is torchvision's builder.
    """
    fixed = dict(num_classes=91, min_size=size, max_size=size, rpn_pre_nms_top_n_test=proposals,
                 rpn_post_nms_top_n_test=proposals, rpn_nms_thresh=1.0, rpn_score_thresh=0.0, box_score_thresh=0.0,
                 box_nms_thresh=1.0, box_detections_per_img=detections)
    out = {}
    for label, (name, kwargs) in (MASKRCNN_COSTS if rows is None else rows).items():
        torch.manual_seed(0)
        args = {**fixed, **kwargs}
        args["rpn_pre_nms_top_n_test"] = max(args["rpn_pre_nms_top_n_test"], args["rpn_post_nms_top_n_test"])
        model = build((name, args))
        x = [torch.rand(3, size, size)]
        with torch.inference_mode():
            n_dets = len(model(x)[0]["boxes"])
        if n_dets != args["box_detections_per_img"]:
            raise RuntimeError(f"{label}: {n_dets} detections, not {detections}: the MAC count would not be fixed")
        from .export import exportable

        network = exportable(model)[0]
        out[label] = {"params_m": count_params(model) / 1e6, "macs_g": count_macs(model, x) / 1e9,
                      "backbone_macs_g": count_macs(network, torch.rand(1, 3, size, size)) / 1e9, "size": size,
                      "proposals": args["rpn_post_nms_top_n_test"], "detections": n_dets}
    return out


def build(spec: tuple[Any, ...]) -> nn.Module:
    """Build a spec of :data:`PAIRS` through the model registry (random init, no downloads), in eval mode.

    A spec is ``(registry name, kwargs)``; the older ``(module path, builder name, kwargs)`` form is read
    as the same (the module path is ignored: every builder is in the registry).
    """
    from ghost_vision.models import get_model

    *_, name, kwargs = spec
    model = get_model(name, **kwargs).eval()
    remove_aux = getattr(model, "remove_aux", None)  # NanoDet-Plus: its training-only assist head is no cost
    return remove_aux() if callable(remove_aux) else model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, x: Any) -> int:
    """Multiply-accumulates of one forward (``FlopCounterMode`` flops / 2: convs, matmuls, ...)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops() // 2)


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1, progress: Any = None
) -> dict[str, list[float]]:
    """Run every callable once per round, in turn (so that load changes hit all alike); seconds per call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
            if progress is not None:
                progress.update(1)
    return times


def ratio_summary(times: dict[str, list[float]], num: str, den: str) -> dict[str, Any]:
    """Median of the per-round ratios ``num / den`` plus the ratio of the medians."""
    per_round = [a / b for a, b in zip(times[num], times[den])]
    return dict(median_of_round_ratios=statistics.median(per_round),
                ratio_of_medians=statistics.median(times[num]) / statistics.median(times[den]),
                round_ratios=[round(r, 4) for r in per_round])


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (``VmHWM``), MiB."""
    return _proc_status_mb("VmHWM")


def _rss_mb() -> float:
    return _proc_status_mb("VmRSS")


def _reset_peak_rss() -> bool:
    try:  # Linux >= 4.0: writing 5 resets the peak RSS to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _det_batch(batch: int, size: int, seed: int = 0) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, size, size, generator=g))
        n = 3
        xy = torch.rand(n, 2, generator=g) * size * 0.6
        wh = torch.rand(n, 2, generator=g) * size * 0.35 + 16
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 91, (n,), generator=g)})
    return images, targets


def train_step(spec: tuple[Any, ...], batch: int, size: int = 320, steps: int = 2,
               channels_last: bool = True) -> dict[str, Any]:
    """Time detector training steps (SGD, synthetic boxes) and measure the RSS peak of the last one; the model
    channels-last as the training tasks keep it (``channels_last=False``: contiguous NCHW).

    The first step allocates gradients and optimizer state; after it the RSS peak is reset
    (``/proc/self/clear_refs``) so ``step_peak_mb`` is what one steady-state step adds on top of the
    resident model, gradients and data (activations, workspace), and ``process_peak_mb`` the process's
    high-water mark.
    """
    torch.manual_seed(0)
    model = build(spec).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    images, targets = _det_batch(batch, size)
    if getattr(getattr(model, "roi_heads", None), "has_mask", lambda: False)():  # Mask R-CNN: each box filled
        for image, t in zip(images, targets):
            yy, xx = torch.arange(image.shape[1])[:, None] + 0.5, torch.arange(image.shape[2])[None] + 0.5
            b = t["boxes"][:, :, None, None]
            t["masks"] = ((xx > b[:, 0]) & (xx < b[:, 2]) & (yy > b[:, 1]) & (yy < b[:, 3])).to(torch.uint8)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    times, base, reset = [], 0.0, False
    for i in range(steps):
        if i == steps - 1:
            base, reset = _rss_mb(), _reset_peak_rss()
        t0 = time.perf_counter()
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_mb()
    return dict(batch=batch, size=size, step_s=times[-1], first_step_s=times[0], images_per_s=batch / times[-1],
                rss_before_step_mb=base, process_peak_mb=peak, step_peak_mb=peak - base if reset else None,
                peak_reset=reset, threads=torch.get_num_threads(), channels_last=channels_last)


def train_step_subprocess(pair: str, which: str, batch: int, threads: int, steps: int = 2,
                          timeout: float = 900) -> dict[str, Any]:
    """:func:`train_step` in a fresh interpreter (clean RSS accounting), as JSON. ``pair`` is a key of
    :data:`PAIRS` (``which`` is ``"ghost"`` or ``"peer"``) or ``"v3"`` (``which``: a key of :data:`V3_TRAIN`)."""
    table = "V3_TRAIN" if pair == "v3" else f"PAIRS[{pair!r}]"
    code = (
        f"import json, sys, torch; torch.set_num_threads({threads}); "
        "from ghost_vision.deploy.bench import PAIRS, V3_TRAIN, train_step; "
        f"print('@@' + json.dumps(train_step({table}[{which!r}], {batch}, steps={steps})))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    raise RuntimeError(f"training-step subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}")


def ort_op_profile(path: str | os.PathLike, x: Any, threads: int, runs: int = 20) -> dict[str, float]:
    """onnxruntime's own profiler: milliseconds per run by operator, after its graph optimizations.

    Convolutions are split into ``Conv (depthwise)`` and ``Conv (other)`` by their ``group`` attribute in
    the optimized graph (where onnxruntime has already swapped in its NCHWc kernels and reorder nodes).
    """
    import tempfile

    from ghost_vision._optional import require

    onnx = require("onnx", extra="onnx", purpose="onnxruntime's per-operator profile")
    ort = require("onnxruntime", extra="onnx", purpose="onnxruntime's per-operator profile")

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, {"images": x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
        depthwise = {
            node.name for node in onnx.load(opts.optimized_model_filepath).graph.node
            if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
        }
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        if op == "Conv":
            op = "Conv (depthwise)" if e["name"][: -len("_kernel_time")] in depthwise else "Conv (other)"
        totals[op] = totals.get(op, 0.0) + e["dur"] / 1e3 / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
