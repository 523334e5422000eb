"""Ghost models vs their torchvision MobileNetV3 peers, side by side on this CPU.

For each pair (``--pairs``; default all): params, MACs, batch-1 latency and batch-8 throughput of the plain
eager Ghost model, our fast path (``ghost_vision.deploy.optimize``: frozen TorchScript; and the same rewrites
left eager), the peer given channels_last and the peer given the same freezing (all variants interleaved
round by round, medians, per-round ratios and their median), the same in onnxruntime (both prepared by
``optimize_for_onnx`` and exported by ``ghost_vision.deploy.export``), for detectors one training step at batch 32
(time and RSS peak, each in a fresh process), and the SSD train preset's data-loading rate (2 workers).
Detector latency is the network up to the head outputs (what is exported); ``*_full`` adds torchvision's
transform and postprocessing (batch 1). The ``nanodet`` pair compares NanoDet-Plus-GhostNet with SSDLite-GhostNet
(the detector it is meant to outdo; its "peer" columns), without NanoDet's training-only assist head except in the
training step.

``--v3`` adds the GhostNetV3 rows: params/MACs of the training vs the fused (deploy) form of every width, the
fused backbone's batch-1 latency against fused GhostNet v1 and the peer, and one SSDLite training step (time,
RSS peak) on the multi-branch v3 training form against the same detector on v1.

Usage (the onnxruntime part needs ``pip install 'ghost-vision[onnx]'``, or ``--skip onnx``):
    ghost-vision benchmark --out bench_out                 # everything (tens of minutes on 2 cores)
    ghost-vision benchmark --pairs --v3 --out bench_v3     # only the GhostNetV3 rows
    ghost-vision benchmark --quick --pairs backbone --out /tmp/b   # CI smoke run, < 2 min
    ghost-vision benchmark --pairs ssdlite --profile --out bench_out
    ghost-vision benchmark --pairs --int8 --out bench_int8   # only the int8 rows (docs/int8.md)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ghost_vision.deploy import freeze_network, optimize, optimize_for_onnx
from ghost_vision.deploy.bench import (
    PAIRS,
    V3_TRAIN,
    build,
    count_macs,
    count_params,
    interleaved,
    maskrcnn_costs,
    ort_op_profile,
    ratio_summary,
    train_step_subprocess,
    v3_costs,
)
from ghost_vision.deploy.export import export_onnx, exportable, ort_session

CL = torch.channels_last


def _net_input(pair: dict[str, Any], batch: int) -> torch.Tensor:
    x = pair["input"](batch)
    return torch.stack(x) if isinstance(x, list) else x


def _variants(pair: dict[str, Any], ghost, peer, batch: int, full: bool) -> dict[str, Any]:
    """Callables for one batch size; detectors run their network part on a ready tensor.

    ``ghost_fast`` is ``optimize(ghost)`` (frozen TorchScript), ``ghost_fast_eager`` the same rewrites left as
    Python modules; ``peer_channels_last`` is the target's reference and ``peer_frozen`` the peer given the
    same TorchScript freezing (channels_last too), so that the comparison is also like for like.
    """
    fast = optimize(ghost)
    peer_cl = copy.deepcopy(peer).to(memory_format=CL)
    peer_frozen, _ = freeze_network(copy.deepcopy(peer_cl))
    nets = {"ghost_eager": ghost, "ghost_fast": fast, "ghost_fast_eager": optimize(ghost, script=False),
            "peer_channels_last": peer_cl, "peer_frozen": peer_frozen}
    if pair["kind"] == "det":
        nets = {k: exportable(m)[0] for k, m in nets.items()}
    x = _net_input(pair, batch)
    fns = {k: (lambda m=m: m(x)) for k, m in nets.items()}
    if full and pair["kind"] == "det":
        images = pair["input"](batch)
        fns["ghost_fast_full"] = lambda: fast(images)
        fns["peer_channels_last_full"] = lambda: peer_cl(images)
    return fns


def _timing(name: str, fns: dict[str, Any], rounds: int, batch: int) -> dict[str, Any]:
    with tqdm(total=rounds, desc=f"{name} batch {batch}", leave=False) as bar:
        times = interleaved(fns, rounds, warmup=1, progress=bar)
    out: dict[str, Any] = {"batch": batch, "rounds": rounds,
                           "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
                           "min_ms": {k: 1e3 * min(v) for k, v in times.items()}}
    if batch > 1:
        out["images_per_s"] = {k: batch / statistics.median(v) for k, v in times.items()}
    out["ratios"] = {
        "fast_vs_peer": ratio_summary(times, "ghost_fast", "peer_channels_last"),
        "eager_vs_peer": ratio_summary(times, "ghost_eager", "peer_channels_last"),
        "eager_vs_fast": ratio_summary(times, "ghost_eager", "ghost_fast"),
        "eager_vs_fast_eager": ratio_summary(times, "ghost_eager", "ghost_fast_eager"),
        "fast_vs_peer_frozen": ratio_summary(times, "ghost_fast", "peer_frozen"),
    }
    if "ghost_fast_full" in times:
        out["ratios"]["full_fast_vs_peer"] = ratio_summary(times, "ghost_fast_full", "peer_channels_last_full")
    return out


def _onnx(name: str, pair: dict[str, Any], ghost, peer, rounds: int, threads: int, tmp: Path,
          profile: bool = False) -> dict[str, Any]:
    """Both models exported the same way: ``optimize_for_onnx`` (BatchNorm folding for both; the Ghost
    rewrites touch only Ghost blocks) -> the legacy exporter -> onnxruntime with all graph optimizations."""
    sessions, reports = {}, {}
    for key, model in (("ghost", ghost), ("peer", peer)):
        path = tmp / f"{name}_{key}.onnx"
        rep = export_onnx(optimize_for_onnx(model), _net_input(pair, 1), path,
                          threads=threads)
        reports[key] = {k: rep[k] for k in ("dynamic_batch", "dynamic_size", "max_abs_diff")}
        sessions[key] = ort_session(path, threads)
    x = _net_input(pair, 1).numpy()
    fns = {k: (lambda s=s: s.run(None, {"images": x})) for k, s in sessions.items()}
    with tqdm(total=rounds, desc=f"{name} onnxruntime", leave=False) as bar:
        times = interleaved(fns, rounds, warmup=2, progress=bar)
    out = {"export": reports, "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
           "ratio": ratio_summary(times, "ghost", "peer")}
    if profile:
        out["profile_ms"] = {k: ort_op_profile(tmp / f"{name}_{k}.onnx", x, threads) for k in sessions}
    return out


def _profile(fns: dict[str, Any], keys: tuple[str, ...], runs: int = 3) -> dict[str, list[dict[str, Any]]]:
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for key in keys:
        with torch.inference_mode():
            fns[key]()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(runs):
                    fns[key]()
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        out[key] = [{"op": e.key, "self_ms_per_run": e.self_cpu_time_total / 1e3 / runs, "calls_per_run": e.count // runs}
                    for e in rows]
    return out


def _data_loading(num_images: int, batch: int, workers: int, tmp: Path) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from ghost_vision.data import SYNTHETIC_CLASSES, VOCDetection, write_synthetic_voc
    from ghost_vision.data.loading import detection_collate
    from ghost_vision.data.transforms import build_transforms

    root = write_synthetic_voc(tmp / "voc", num_train=num_images, num_val=1)
    ds = VOCDetection(root, year="2007", image_set="train", classes=SYNTHETIC_CLASSES,
                      transforms=build_transforms("det_train", size=320))
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=detection_collate,
                        persistent_workers=False)
    t0, n, first = time.perf_counter(), 0, None
    for images, _ in tqdm(loader, desc="data loading", leave=False):
        n += len(images)
        if first is None:
            first, n0 = time.perf_counter(), n
    end = time.perf_counter()
    steady = (n - n0) / (end - first) if end > first and n > n0 else None
    return {"images": n, "batch": batch, "workers": workers, "images_per_s_incl_startup": n / (end - t0),
            "images_per_s_after_first_batch": steady}


def _v3(args: argparse.Namespace) -> dict[str, Any]:
    """GhostNetV3: costs of both forms, fused latency vs v1 and the peer, training step vs v1."""
    out: dict[str, Any] = {"costs": v3_costs()}
    nets = {k: build((n, dict(features_only=True)))
            for k, n in (("v3", "ghostnetv3_100"), ("v2", "ghostnetv2_100"), ("v1", "ghostnet_100"))}
    peer, _ = freeze_network(build(PAIRS["backbone"]["peer"]).to(memory_format=CL))
    x = PAIRS["backbone"]["input"](1)
    models = {"v3_fast": optimize(nets["v3"]), "v2_fast": optimize(nets["v2"]), "v1_fast": optimize(nets["v1"]),
              "peer_frozen": peer, "v3_train_form_eager": nets["v3"]}
    with tqdm(total=args.rounds, desc="v3 batch 1", leave=False) as bar:
        times = interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, args.rounds, warmup=1, progress=bar)
    out["batch1"] = {"size": PAIRS["backbone"]["size"], "rounds": args.rounds,
                     "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
                     "ratios": {"v3_fast_vs_v1_fast": ratio_summary(times, "v3_fast", "v1_fast"),
                                "v3_fast_vs_v2_fast": ratio_summary(times, "v3_fast", "v2_fast"),
                                "v3_fast_vs_peer_frozen": ratio_summary(times, "v3_fast", "peer_frozen")}}
    if "train" not in args.skip:
        t: dict[str, Any] = {k: train_step_subprocess("v3", k, args.train_batch, args.threads) for k in V3_TRAIN}
        t["time_ratio"] = t["v3"]["step_s"] / t["v1"]["step_s"]
        t["process_peak_ratio"] = t["v3"]["process_peak_mb"] / t["v1"]["process_peak_mb"]
        if t["v3"]["step_peak_mb"] and t["v1"]["step_peak_mb"]:
            t["step_peak_ratio"] = t["v3"]["step_peak_mb"] / t["v1"]["step_peak_mb"]
        out["train"] = t
    return out


def _md_v3(v: dict[str, Any]) -> list[str]:
    lines = ["", "GhostNetV3 (training form → fused by `reparameterize`, classifier at 224 px):", "",
             "| variant | params train → deploy (M) | MACs train → deploy (G) |", "|---|---|---|"]
    for name, c in v["costs"].items():
        lines.append(f"| {name} | {c['train_params_m']:.2f} → {c['deploy_params_m']:.2f} | "
                     f"{c['train_macs_g']:.3f} → {c['deploy_macs_g']:.3f} |")
    b1 = v["batch1"]
    lines += ["", f"- v3 backbone batch 1 ({b1['size']}) median ms: " + ", ".join(
        f"{k} {ms:.1f}" for k, ms in b1["median_ms"].items()) + "; fused v3/v1 "
        f"{b1['ratios']['v3_fast_vs_v1_fast']['median_of_round_ratios']:.2f}×, fused v3/v2 "
        f"{b1['ratios']['v3_fast_vs_v2_fast']['median_of_round_ratios']:.2f}×, fused v3/peer frozen "
        f"{b1['ratios']['v3_fast_vs_peer_frozen']['median_of_round_ratios']:.2f}×"]
    if "train" in v:
        t = v["train"]
        lines.append(f"- SSDLite training step (batch {t['v3']['batch']}), v3 training form vs v1: "
                     f"{t['v3']['step_s']:.2f} s vs {t['v1']['step_s']:.2f} s ({t['time_ratio']:.2f}×); process RSS "
                     f"peak {t['v3']['process_peak_mb']:.0f} vs {t['v1']['process_peak_mb']:.0f} MiB "
                     f"({t['process_peak_ratio']:.2f}×)" + (f"; step peak {t['step_peak_ratio']:.2f}×"
                                                            if "step_peak_ratio" in t else ""))
    return lines


def _md(results: dict[str, Any]) -> str:
    c = results["conditions"]
    lines = [f"# Benchmark ({'quick' if c['quick'] else 'full'})", "",
             f"{c['date']} · torch {c['torch']} · {c['threads']} threads · {c['cpu_count']} CPUs · "
             f"load average {c['load_start']} → {c['load_end']}", "",
             "| pair | params G/P (M) | MACs G/P (G) | MAC ratio | b1 fast/peer | b1 fast/peer frozen "
             "| b1 eager/fast | b8 fast/peer | b8 eager/fast | ORT G/P |", "|" + "---|" * 10]
    for name, r in results["pairs"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} |" + " |" * 8)
            continue
        b1, b8 = r.get("batch1", {}).get("ratios", {}), r.get("batch8", {}).get("ratios", {})

        def f(d: dict, k: str) -> str:
            return f"{d[k]['median_of_round_ratios']:.2f}×" if k in d else "–"
        ort = f"{r['onnxruntime']['ratio']['median_of_round_ratios']:.2f}×" if "ratio" in r.get("onnxruntime", {}) else "–"
        lines.append(f"| {name} ({r['size']}) | {r['params_m']['ghost']:.2f} / {r['params_m']['peer']:.2f} | "
                     f"{r['macs_g']['ghost']:.3f} / {r['macs_g']['peer']:.3f} | {r['mac_ratio']:.2f}× | "
                     f"{f(b1, 'fast_vs_peer')} | {f(b1, 'fast_vs_peer_frozen')} | {f(b1, 'eager_vs_fast')} | "
                     f"{f(b8, 'fast_vs_peer')} | {f(b8, 'eager_vs_fast')} | {ort} |")
    lines += ["", "Ratios are medians of per-round time ratios (< 1: Ghost faster); eager/fast is the speed-up of "
              "the fast path (`optimize`, frozen TorchScript) over the plain eager Ghost model; 'peer frozen' is "
              "the peer given the same TorchScript freezing.", ""]
    for name, r in results["pairs"].items():
        for key in ("batch1", "batch8"):
            if key in r:
                ms = ", ".join(f"{k} {v:.1f}" for k, v in r[key]["median_ms"].items())
                lines.append(f"- {name} {key} median ms: {ms}")
        if "median_ms" in r.get("onnxruntime", {}):
            lines.append(f"- {name} onnxruntime b1 median ms: " + ", ".join(
                f"{k} {v:.1f}" for k, v in r["onnxruntime"]["median_ms"].items()))
        for key, prof in r.get("onnxruntime", {}).get("profile_ms", {}).items():
            lines.append(f"- {name} onnxruntime profile, {key} (ms/run): " + ", ".join(
                f"{op} {ms:.2f}" for op, ms in list(prof.items())[:8]))
        for key, rows in r.get("profile", {}).items():
            lines.append(f"- {name} torch profile, {key} (ms/run): " + ", ".join(
                f"{row['op']} {row['self_ms_per_run']:.2f}" for row in rows[:8]))
        if "train" in r and "ghost" in r["train"]:
            t = r["train"]
            lines.append(f"- {name} training step (batch {t['ghost']['batch']}): {t['ghost']['step_s']:.2f} s vs "
                         f"{t['peer']['step_s']:.2f} s ({t['time_ratio']:.2f}×); step RSS peak "
                         f"{t['ghost']['step_peak_mb']:.0f} vs {t['peer']['step_peak_mb']:.0f} MiB "
                         f"({t['step_peak_ratio']:.2f}×); process peak {t['process_peak_ratio']:.2f}×")
        for label, row in r.get("whole_model_costs", {}).items():
            lines.append(f"- {name} whole model, {label} ({row['size']} px, {row['proposals']} proposals, "
                         f"{row['detections']} detections): {row['params_m']:.2f} M params, {row['macs_g']:.2f} GMACs "
                         f"({row['backbone_macs_g']:.2f} before the RoI heads)")
    if "data" in results:
        d = results["data"]
        lines.append(f"- data loading (det_train 320, {d['workers']} workers): "
                     f"{d['loader']['images_per_s_after_first_batch'] or 0:.1f} img/s vs training step "
                     f"{d.get('train_images_per_s', float('nan')):.1f} img/s → {d.get('ratio', float('nan')):.2f}×")
    if "v3" in results:
        lines += _md_v3(results["v3"])
    if "int8" in results:
        from ghost_vision.commands.int8 import md_int8

        lines += md_int8(results["int8"])
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--v3", action="store_true", help="add the GhostNetV3 rows (see above)")
    p.add_argument("--out", type=Path, default=Path("bench_out"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15, help="batch-1 rounds (batch 8: a third)")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--data-images", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="few rounds, small batches (CI smoke run)")
    p.add_argument("--skip", nargs="*", default=[], choices=["batch8", "onnx", "train", "data"])
    p.add_argument("--int8", action="store_true",
                   help="add the int8 rows: SSDLite-Ghost int8 vs fp32 (onnxruntime, fast path) and the quantized peer")
    p.add_argument("--profile", action="store_true",
                   help="top ops of ghost_fast and the peer (torch.profiler) and onnxruntime's per-op profile")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.train_batch, args.data_images = 3, 2, 8
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"conditions": {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
        "python": platform.python_version(), "threads": args.threads, "cpu_count": os.cpu_count(),
        "quick": args.quick, "load_start": [round(v, 2) for v in os.getloadavg()], "argv": list(sys.argv[1:] if argv is None else argv)},
        "pairs": {}}
    rounds8 = max(2, args.rounds // 3)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in tqdm(args.pairs, desc="pairs"):
            pair, r = PAIRS[name], {"size": PAIRS[name]["size"], "kind": PAIRS[name]["kind"]}
            results["pairs"][name] = r
            try:
                ghost, peer = build(pair["ghost"]), build(pair["peer"])
            except (ImportError, AttributeError) as exc:
                r["error"] = f"{type(exc).__name__}: {exc}"
                continue
            x1 = pair["input"](1)
            r["params_m"] = {"ghost": count_params(ghost) / 1e6, "peer": count_params(peer) / 1e6}
            r["macs_g"] = {"ghost": count_macs(ghost, x1) / 1e9, "peer": count_macs(peer, x1) / 1e9}
            r["mac_ratio"] = r["macs_g"]["ghost"] / r["macs_g"]["peer"]
            if name == "maskrcnn":  # whole models at fixed RoI counts, with torchvision's ResNet-50 Mask R-CNN
                r["whole_model_costs"] = maskrcnn_costs()
            fns = _variants(pair, ghost, peer, 1, full=True)
            r["batch1"] = _timing(name, fns, args.rounds, 1)
            if args.profile:
                r["profile"] = _profile(fns, ("ghost_fast", "peer_channels_last"))
            if "batch8" not in args.skip:
                batch = 2 if args.quick else 8
                r["batch8"] = _timing(name, _variants(pair, ghost, peer, batch, full=False), rounds8, batch)
            if "onnx" not in args.skip:
                try:
                    ort_rounds = args.rounds if args.quick else 3 * args.rounds  # ORT runs are short
                    r["onnxruntime"] = _onnx(name, pair, ghost, peer, ort_rounds, args.threads, tmp, args.profile)
                except Exception as exc:  # noqa: BLE001 - report and go on with the other measurements
                    r["onnxruntime"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            if pair["kind"] == "det" and "train" not in args.skip:
                t = {k: train_step_subprocess(name, k, args.train_batch, args.threads) for k in ("ghost", "peer")}
                t["time_ratio"] = t["ghost"]["step_s"] / t["peer"]["step_s"]
                t["process_peak_ratio"] = t["ghost"]["process_peak_mb"] / t["peer"]["process_peak_mb"]
                t["step_peak_ratio"] = t["ghost"]["step_peak_mb"] / t["peer"]["step_peak_mb"]
                r["train"] = t
        if "data" not in args.skip:
            d: dict[str, Any] = {"workers": 2, "loader": _data_loading(args.data_images, 32 if not args.quick else 4,
                                                                        2, tmp)}
            train = results["pairs"].get("ssdlite", {}).get("train", {}).get("ghost")
            if train:
                d["train_images_per_s"] = train["images_per_s"]
                d["ratio"] = (d["loader"]["images_per_s_after_first_batch"] or 0) / train["images_per_s"]
            results["data"] = d
    if args.v3:
        results["v3"] = _v3(args)
    if args.int8:
        from ghost_vision.commands.int8 import benchmark_int8

        results["int8"] = benchmark_int8(args.rounds if args.quick else 3 * args.rounds, args.threads,
                                         num_images=2 if args.quick else 8)
    results["conditions"]["load_end"] = [round(v, 2) for v in os.getloadavg()]
    (args.out / "benchmark.json").write_text(json.dumps(results, indent=1))
    md = _md(results)
    (args.out / "benchmark.md").write_text(md)
    print(md)
    return results
