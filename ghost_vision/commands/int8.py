"""The int8 parts of the CLI: ``export --int8`` and ``benchmark --int8`` (``eval --int8`` is in ``ghost_vision.cli``).

``--calib`` takes an image folder or a recipe (packaged name or YAML path), whose DataModule's validation
split is read (see ``ghost_vision.deploy.calibration``).
"""

from __future__ import annotations

import importlib
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from ghost_vision.deploy.bench import PAIRS, build, interleaved, ratio_summary
from ghost_vision.deploy.quantize import cpu_features, int8_settings, qdq_count, quantize, sensitivity

__all__ = ["calibration_source", "export_int8", "export_sensitivity", "benchmark_int8", "md_int8"]


def calibration_source(calib: str) -> Any:
    """An image folder as it is; a recipe (name or YAML) as its DataModule, built from its ``data`` section."""
    if Path(calib).is_dir():
        return calib
    import yaml

    from ghost_vision.recipes import recipe_path

    try:
        path = recipe_path(calib)
    except (FileNotFoundError, ValueError) as exc:
        raise FileNotFoundError(f"--calib {calib!r} is neither an image folder nor a recipe ({exc})") from exc
    data = (yaml.safe_load(Path(path).read_text()) or {}).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise FileNotFoundError(f"recipe {path} has no data: class_path section to calibrate on")
    module, _, name = data["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(data.get("init_args") or {}))


def export_int8(model: torch.nn.Module, name: str, out: Path, calib: str, *, num_images: int, method: str,
                exclude: list[str] | None = None) -> dict[str, Any]:
    """Quantize ``model`` on ``calib``, save ``out/NAME_int8.zip``; returns a report (settings, op counts)."""
    qmodel = quantize(model, calibration_source(calib), num_images=num_images, method=method, exclude=exclude)
    path = out / f"{name}_int8.zip"
    qmodel.save(path)
    ops = qdq_count(qmodel)
    report = {"path": str(path), "settings": qmodel.meta["settings"], "method": method,
              "calibration_images": qmodel.meta["calibration_images"],
              "fused_graph": {k: ops.get(k, 0) for k in ("QLinearConv", "QuantizeLinear", "DequantizeLinear", "Conv")}}
    s = report["settings"]
    print(f"int8: {path} ({s['activation_type']}/{s['weight_type']}, reduce_range={s['reduce_range']} for this "
          f"{s['cpu']} CPU; {report['calibration_images']} calibration images, {method}; after onnxruntime's "
          f"fusions {report['fused_graph']['QLinearConv']} QLinearConv, {report['fused_graph']['QuantizeLinear']} "
          f"QuantizeLinear and {report['fused_graph']['DequantizeLinear']} DequantizeLinear left)")
    return report


def export_sensitivity(model: torch.nn.Module, name: str, out: Path, calib: str, *, num_images: int, method: str,
                       show: int = 10) -> dict[str, Any]:
    """Score every node group int8 alone (:func:`~ghost_vision.deploy.quantize.sensitivity`, output error on the
    calibration images), write ``out/NAME_int8_sensitivity.json`` (worst first) and print the ``show`` worst
    with the ``--exclude`` pattern of each; returns a report (path, number of groups, the worst's pattern)."""
    import json

    rows = sensitivity(model, calibration_source(calib), num_images=num_images, method=method)
    path = out / f"{name}_int8_sensitivity.json"
    path.write_text(json.dumps(rows, indent=1))
    print(f"int8 sensitivity: {path} ({len(rows)} node groups, each int8 alone, scored by the relative L2 error "
          f"of the core outputs on {num_images} calibration images; worst first):")
    for r in rows[:show]:
        print(f"  {r['error']:.4f}  {r['nodes']:3d} nodes  --exclude '{r['exclude']}'")
    return {"path": str(path), "groups": len(rows), "worst": rows[0]["exclude"] if rows else None}


def _e2e(model: Any, images: list[torch.Tensor]):
    return lambda: model(images)


def benchmark_int8(rounds: int, threads: int, num_images: int = 16) -> dict[str, Any]:
    """SSDLite-Ghost at batch 1, 320 px: int8 vs fp32 onnxruntime vs the ``optimize()`` fast path, and the
    MobileNetV3 SSDLite peer quantized the same way; end to end (pre/post-processing included) and the network
    core alone (in rounds of its own, away from torch's spinning threads), interleaved (medians, per-round
    ratios). Random weights (speed does not depend on them),
    ``score_thresh=0.2`` for both detectors."""
    from ghost_vision.deploy import optimize

    torch.set_num_threads(threads)
    pair = PAIRS["ssdlite"]
    g = torch.Generator().manual_seed(0)
    calib = torch.rand(num_images, 3, 320, 320, generator=g)
    images = [torch.rand(3, 320, 320, generator=g)]
    # deployment-like score threshold: with random weights every anchor of every class passes eval's 0.001
    # and NMS over ~27,000 boxes would be all that is timed
    ghost, peer = (build((spec[-2], {**spec[-1], "score_thresh": 0.2})) for spec in (pair["ghost"], pair["peer"]))
    models = {"ghost_fast": optimize(ghost),
              "ghost_ort_fp32": quantize(ghost, calib, num_images=num_images, int8=False, threads=threads),
              "ghost_int8": quantize(ghost, calib, num_images=num_images, threads=threads),
              "peer_ort_fp32": quantize(peer, calib, num_images=num_images, int8=False, threads=threads),
              "peer_int8": quantize(peer, calib, num_images=num_images, threads=threads)}
    times = interleaved({k: _e2e(m, images) for k, m in models.items()}, rounds, warmup=2)
    # the cores in rounds of their own: right after a torch call (pre/post-processing, the fast path) torch's
    # OpenMP workers still spin-wait on the other cores and slow a multi-threaded onnxruntime run down (fp32
    # more than int8: 2 threads, 17.4 vs 11.7 ms for the same fp32 core, ratio 0.58x vs 0.68x)
    x = models["ghost_int8"].transform(images)[0].tensors
    cores = ("ghost_ort_fp32", "ghost_int8", "peer_ort_fp32", "peer_int8")
    times.update(interleaved({f"{k}_core": lambda m=models[k]: m.core(x) for k in cores}, rounds, warmup=2))
    ratios = {"int8_vs_fast": ("ghost_int8", "ghost_fast"), "int8_vs_ort_fp32": ("ghost_int8", "ghost_ort_fp32"),
              "int8_vs_peer_int8": ("ghost_int8", "peer_int8"),
              "core_int8_vs_fp32": ("ghost_int8_core", "ghost_ort_fp32_core"),
              "core_int8_vs_peer_int8": ("ghost_int8_core", "peer_int8_core"),
              "peer_core_int8_vs_fp32": ("peer_int8_core", "peer_ort_fp32_core")}
    return {"cpu": cpu_features(), "settings": int8_settings(), "threads": threads, "rounds": rounds,
            "load": [round(v, 2) for v in os.getloadavg()],
            "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            "ratios": {k: ratio_summary(times, a, b)["median_of_round_ratios"] for k, (a, b) in ratios.items()}}


def md_int8(r: dict[str, Any]) -> list[str]:
    """Markdown lines for the ``--int8`` rows of the benchmark report."""
    cpu = "VNNI" if r["cpu"]["vnni"] else "no VNNI (" + ", ".join(k for k, v in r["cpu"].items() if v) + ")"
    lines = ["", f"int8 (SSDLite-Ghost, batch 1, 320 px, {r['threads']} threads, {r['rounds']} interleaved rounds; CPU: "
             f"{cpu}; {r['settings']['activation_type']}/{r['settings']['weight_type']} reduce_range="
             f"{r['settings']['reduce_range']}; load {r['load']}):", ""]
    lines.append("- median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in r["median_ms"].items()))
    lines.append("- ratios (median of per-round ratios): " + ", ".join(f"{k} {v:.2f}×" for k, v in r["ratios"].items()))
    return lines
