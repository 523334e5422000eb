#!/usr/bin/env python
"""One-shot GPU check: AMP + channels_last training steps and inference, Ghost models vs MobileNetV3 peers.

    ghost-vision gpu-check --out gpu_results.json [--steps 20] [--batch 64]
    ghost-vision gpu-check --device cpu --quick --out /tmp/gpu_smoke.json   # the same code path on CPU

Prints and writes (JSON) for each pair: training step time and peak memory at ``--batch`` (bf16 autocast,
channels_last, SGD), inference latency at batch 1 and throughput at batch 32 (fp16 autocast; bf16 on CPU).
Timings use CUDA events after warm-up (``perf_counter`` on CPU); each pair is measured interleaved, median
of the rounds. Every phase prints a progress line with the elapsed time, so a run cut short still shows how
far it got. ``--quick`` (small batches, few steps, segmentation at 128x256) is the smoke test the test
suite runs on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision

from ghost_vision.models import get_model


def _pair(ghost: str, peer: str, kind: str, size: int, **kwargs: Any) -> tuple[Any, Any, str, int]:
    """Builders of a Ghost model and its MobileNetV3 peer from the model registry (random init)."""
    return lambda: get_model(ghost, **kwargs), lambda: get_model(peer, **kwargs), kind, size


PAIRS = {
    "ssdlite320": _pair("ssdlite320_ghostnet", "ssdlite320_mobilenet_v3_large", "det", 320, num_classes=91),
    "deeplabv3": _pair("deeplabv3_ghostnet", "deeplabv3_mobilenet_v3_large", "seg", 512, num_classes=19),
    "lraspp": _pair("lraspp_ghostnet", "lraspp_mobilenet_v3_large", "seg", 512, num_classes=19),
}


_T0 = time.perf_counter()


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, rounds: int, device: torch.device) -> float:
    """Milliseconds per call (CUDA events on a GPU, wall clock on CPU)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        return (time.perf_counter() - t0) * 1e3 / rounds
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(rounds):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / rounds


def _train_fn(model, kind: str, size: int, batch: int, device: torch.device):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator(device=device).manual_seed(0)
    if kind == "det":
        images = [torch.rand(3, size, size, device=device, generator=g) for _ in range(batch)]
        targets = [{"boxes": torch.tensor([[20.0, 30.0, 180.0, 220.0], [100.0, 90.0, 300.0, 310.0]], device=device),
                    "labels": torch.tensor([1, 2], device=device)} for _ in range(batch)]

        def loss_fn():
            return sum(model(images, targets).values())
    else:
        images = torch.rand(batch, 3, size, 2 * size, device=device, generator=g).to(
            memory_format=torch.channels_last)
        masks = torch.randint(0, 19, (batch, size, 2 * size), device=device, generator=g)

        def loss_fn():
            return torch.nn.functional.cross_entropy(model(images)["out"], masks, ignore_index=255)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _infer_fn(model, kind: str, size: int, batch: int, device: torch.device):
    g = torch.Generator(device=device).manual_seed(1)
    if kind == "det":
        images = [torch.rand(3, size, size, device=device, generator=g) for _ in range(batch)]
    else:
        images = torch.rand(batch, 3, size, 2 * size, device=device, generator=g).to(
            memory_format=torch.channels_last)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    @torch.no_grad()
    def run():
        with torch.autocast(device.type, dtype=dtype):
            model(images)

    return run


def measure(name: str, steps: int, batch: int, device: torch.device, rounds: int = 5, infer_batch: int = 32,
            seg_size: int | None = None) -> dict:
    make_ghost, make_peer, kind, size = PAIRS[name]
    size = seg_size if (seg_size and kind == "seg") else size
    result: dict = {"pair": name}
    models = {"ghost": make_ghost(), "peer": make_peer()}
    seg_batch = max(2, batch // 8)
    for tag, m in models.items():
        models[tag] = m.to(device).to(memory_format=torch.channels_last)
    # training: interleave the two models round by round, median per model
    times: dict[str, list[float]] = {"ghost": [], "peer": []}
    for tag, m in models.items():
        _log(f"{name}: {tag} training warm-up (3 steps)")
        m.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fn = _train_fn(m, kind, size, batch if kind == "det" else seg_batch, device)
        for _ in range(3):
            fn()
        _sync(device)
        if device.type == "cuda":
            result[f"{tag}_train_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        models[tag] = (m, fn)
    _log(f"{name}: timing {rounds} interleaved training rounds")
    for _ in range(rounds):
        for tag in ("ghost", "peer"):
            times[tag].append(_timed(models[tag][1], max(1, steps // rounds), device))
    for tag in ("ghost", "peer"):
        result[f"{tag}_train_ms"] = statistics.median(times[tag])
    result["train_batch"] = batch if kind == "det" else seg_batch
    result["train_ratio"] = result["ghost_train_ms"] / result["peer_train_ms"]
    for bs, key in ((1, "latency_b1_ms"), (infer_batch if kind == "det" else max(1, infer_batch // 8), "batch_ms")):
        _log(f"{name}: inference at batch {bs}")
        fns = {}
        for tag in ("ghost", "peer"):
            m = models[tag][0].eval()
            fns[tag] = _infer_fn(m, kind, size, bs, device)
            for _ in range(5):
                fns[tag]()
        times = {"ghost": [], "peer": []}
        for _ in range(rounds):
            for tag in ("ghost", "peer"):
                times[tag].append(_timed(fns[tag], 10 if device.type == "cuda" else 1, device))
        for tag in ("ghost", "peer"):
            result[f"{tag}_{key}"] = statistics.median(times[tag])
        result[f"{key}_ratio"] = result[f"ghost_{key}"] / result[f"peer_{key}"]
        result[f"{key}_batch"] = bs
    return result


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_results.json"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run of the same code)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 2 steps, 2 rounds, segmentation at 128x256")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu-check needs a CUDA GPU (or --device cpu for a smoke run)")
    rounds, infer_batch, seg_size = 5, 32, None
    if args.quick:
        args.steps, args.batch, rounds, infer_batch, seg_size = 2, 2, 2, 2, 128
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "torchvision": torchvision.__version__, "quick": args.quick, "results": []}
    for name in args.pairs:
        try:
            res = measure(name, args.steps, args.batch, device, rounds, infer_batch, seg_size)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next pair
            import traceback

            traceback.print_exc()
            res = {"pair": name, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(res, indent=1), flush=True)
        info["results"].append(res)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    args.out.write_text(json.dumps(info, indent=1))
    return info
