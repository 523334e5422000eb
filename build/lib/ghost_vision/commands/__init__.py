"""The ``ghost-vision`` command (also ``python -m ghost_vision``): one subcommand per job.

    ghost-vision configs                                   # the packaged recipes, one line each
    ghost-vision train ssdlite_ghost_shapes                # fit a recipe (by name or path), then validate
    ghost-vision eval ssdlite_ghost_shapes --ckpt_path runs/ssdlite_ghost_shapes/checkpoints/last.ckpt
    ghost-vision infer --ckpt_path last.ckpt photo.jpg     # predictions drawn on images
    ghost-vision export ghostnet_100 --out exported        # ONNX + TorchScript (needs ghost-vision[onnx])
    ghost-vision benchmark --quick --pairs backbone        # Ghost models vs MobileNetV3 peers on this CPU
    ghost-vision train-benchmark ssdlite_shapes2k --out b  # accuracy per cost: seeded training, Pareto plot

``ghost-vision COMMAND --help`` shows each command's options. ``tools/*.py`` in a source checkout are thin
shims over the same functions.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["COMMANDS", "main", "run"]

# name -> ("module:function", one-line help). Imported on use: `ghost-vision configs` does not import torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("ghost_vision.cli:train", "fit a recipe, then validate its best checkpoint (LightningCLI)"),
    "eval": ("ghost_vision.cli:evaluate", "evaluate a checkpoint on a recipe's validation split"),
    "infer": ("ghost_vision.commands.infer:main", "draw a checkpoint's predictions on image files"),
    "export": ("ghost_vision.commands.export:main", "export a model to ONNX and TorchScript, checked on export"),
    "benchmark": ("ghost_vision.commands.benchmark:main", "Ghost models vs MobileNetV3 peers on this CPU"),
    "configs": ("ghost_vision.commands.configs:main", "list the packaged recipes, or print one"),
    "train-benchmark": ("ghost_vision.commands.train_benchmark:main",
                        "accuracy per cost: train Ghost models and peers over seeds, table + Pareto plot"),
    "make-synthetic": ("ghost_vision.commands.make_synthetic:main",
                       "write the synthetic shapes data in COCO, VOC or Cityscapes format"),
    "gpu-check": ("ghost_vision.commands.gpu_check:main", "AMP training/inference timings on a CUDA GPU"),
}


def run(fn: Callable[..., Any], argv: Sequence[str] | None = None, **kwargs: Any) -> Any:
    """Call a command; missing data, a missing file or a missing optional package ends the process with
    the message (which says what to do) instead of a traceback."""
    from ghost_vision._optional import MissingExtraError

    try:
        return fn(argv, **kwargs)
    except Exception as exc:
        # DataError only exists once the data package is imported (`ghost-vision configs` never imports torch)
        io = sys.modules.get("ghost_vision.data.io")
        if isinstance(exc, (FileNotFoundError, MissingExtraError, *((io.DataError,) if io else ()))):
            raise SystemExit(f"error: {exc}") from None
        raise


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ghost-vision COMMAND [ARGS...]   (ghost-vision COMMAND --help for its options)", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``ghost-vision COMMAND ARGS...`` (``argv=None``: ``sys.argv[1:]``); returns the exit code.

    ``sys.argv`` is not rewritten: Lightning's DDP launcher starts the other ranks with the same command
    line, and they dispatch it the same way.

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        ghost-vision ...
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from ghost_vision import __version__

        print(f"ghost-vision {__version__}")
        return 0
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ghost-vision: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    run(getattr(importlib.import_module(module), func), args, prog=f"ghost-vision {name}")
    return 0
