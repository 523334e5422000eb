"""Export a Ghost model (or a torchvision peer) to ONNX and TorchScript, checked on export.

ONNX: dynamic batch and, where the model allows (not SSD, whose default boxes fix the size), dynamic
height/width; the file is run in onnxruntime on the example, a batch of 2 and a larger size and compared
with the eager model. Detectors are exported up to their head outputs (see
``ghost_vision.deploy.export.exportable``). By default the rewritten models are exported: for ONNX
``optimize_for_onnx`` (BatchNorm folded, concat-free Ghost modules where onnxruntime would reorder around a
concatenation), for TorchScript the fast path ``optimize(script=False)`` (scripted here, not frozen);
``--plain`` exports the model as built. GhostNetV3 models are always exported re-parameterized (their
training branches fused, ``ghost_vision.models.reparameterize``), also with ``--plain``.

ONNX needs the ``onnx`` extra: ``pip install 'ghost-vision[onnx]'``.

Usage:
    ghost-vision export ghostnet_100 --out exported
    ghost-vision export ghostnet_100_features --size 320 320
    ghost-vision export ssdlite320_ghostnet --num-classes 91 --out exported
    ghost-vision export deeplabv3_ghostnet --num-classes 19 --size 512 1024 --weights ckpt.pth
    ghost-vision export ssdlite320_ghostnet --num-classes 4 --weights model.pth --int8 --calib ssdlite_ghost_shapes
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ghost_vision._optional import require
from ghost_vision.deploy import optimize, optimize_for_onnx
from ghost_vision.deploy.export import export_onnx, export_torchscript
from ghost_vision.models import get_model, load_weights, reparameterize, variant_config


def build_model(name: str, num_classes: int | None) -> torch.nn.Module:
    """A model by registry name (:func:`ghost_vision.models.list_models`: GhostNet variants as classifiers,
    detectors, segmenters, the torchvision peers), or ``<variant>_features`` for a feature backbone."""
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    base = name.removesuffix("_features")
    if base != name and variant_config(base) is not None:
        return get_model(base, features_only=True, out_indices=(1, 2, 3, 4))
    try:
        return get_model(name, **kwargs)
    except ValueError as exc:
        raise SystemExit(f"{exc} (or '<variant>_features' for a feature backbone)") from exc


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--weights", default=None, help="a checkpoint (state dict) for the whole model")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="example input size (default 224x224 for classifiers, 320x320 otherwise)")
    p.add_argument("--out", type=Path, default=Path("exported"))
    p.add_argument("--formats", nargs="+", default=["onnx", "torchscript"], choices=["onnx", "torchscript"])
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--static", action="store_true", help="no dynamic axes")
    p.add_argument("--plain", action="store_true", help="export the model as built (no BatchNorm folding)")
    p.add_argument("--int8", action="store_true",
                   help="also write NAME_int8.zip: the network core quantized (onnxruntime static QDQ, see docs/int8.md)")
    p.add_argument("--calib", default=None, metavar="DIR_OR_RECIPE",
                   help="--int8 calibration images: an image folder or a recipe (its validation split)")
    p.add_argument("--calib-images", type=int, default=200, help="--int8: calibration images used")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "percentile", "entropy"])
    p.add_argument("--exclude", nargs="*", default=None, help="--int8: node name patterns or op types kept fp32")
    p.add_argument("--sensitivity", action="store_true",
                   help="also write NAME_int8_sensitivity.json: each node group int8 alone, its output error, worst "
                        "first, with the --exclude pattern to keep it fp32 (up to 16 of the calibration images)")
    args = p.parse_args(argv)
    for flag in ("int8", "sensitivity"):
        if getattr(args, flag) and not args.calib:
            p.error(f"--{flag} needs --calib DIR_OR_RECIPE (an image folder or a recipe whose validation split is "
                    "read)")
    if "onnx" in args.formats:  # before building anything: say at once which extra is missing
        for module in ("onnx", "onnxruntime"):
            require(module, extra="onnx", purpose="ONNX export (checked in onnxruntime)")

    model = build_model(args.model, args.num_classes)
    backbone = variant_config(args.model) is not None  # a GhostNet classifier: 224 px, timm/official weights
    if args.weights:
        load_weights(model, args.weights) if backbone else model.load_state_dict(
            torch.load(args.weights, map_location="cpu", weights_only=True))
    reparameterize(model.eval())  # GhostNetV3: always the fused inference form (no-op for v1/v2)
    onnx_model = model if args.plain else optimize_for_onnx(model)
    ts_model = model if args.plain else optimize(model, script=False)
    h, w = args.size or ((224, 224) if backbone else (320, 320))
    example = torch.rand(1, 3, h, w)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": args.model, "input": [1, 3, h, w], "optimized": not args.plain}
    if "onnx" in args.formats:
        report["onnx"] = export_onnx(onnx_model, example, args.out / f"{args.model}.onnx", opset=args.opset,
                                     dynamic_batch=not args.static, dynamic_size=not args.static)
        print(f"ONNX: {report['onnx']['path']} (dynamic batch {report['onnx']['dynamic_batch']}, size "
              f"{report['onnx']['dynamic_size']}; onnxruntime max diff {report['onnx']['max_abs_diff']:.2e})")
    if "torchscript" in args.formats:
        try:
            report["torchscript"] = export_torchscript(ts_model, example, args.out / f"{args.model}.pt")
            print(f"TorchScript ({report['torchscript']['method']}): {report['torchscript']['path']}")
        except Exception as exc:  # noqa: BLE001 - ONNX may still be useful; say why TorchScript failed
            report["torchscript"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"TorchScript failed: {report['torchscript']['error']}")
    if args.int8:
        from ghost_vision.commands.int8 import export_int8

        report["int8"] = export_int8(model, args.model, args.out, args.calib, num_images=args.calib_images,
                                     method=args.calib_method, exclude=args.exclude)
    if args.sensitivity:
        from ghost_vision.commands.int8 import export_sensitivity

        report["int8_sensitivity"] = export_sensitivity(model, args.model, args.out, args.calib,
                                                        num_images=min(args.calib_images, 16), method=args.calib_method)
    (args.out / f"{args.model}.json").write_text(json.dumps(report, indent=1))
    return report
