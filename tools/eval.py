#!/usr/bin/env python
"""Evaluate a checkpoint on a recipe's validation split; print a metric table and write flat JSON.

    python tools/eval.py configs/ssdlite_ghost_shapes.yaml --ckpt_path runs/.../best.ckpt [--output m.json]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghost_vision.cli import evaluate  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0], *argv[1:]]
    evaluate(argv)


if __name__ == "__main__":
    main()
