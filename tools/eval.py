#!/usr/bin/env python
"""Evaluate a checkpoint on a recipe's validation split; print a metric table and write flat JSON.

    python tools/eval.py configs/ssdlite_ghost_shapes.yaml --ckpt_path runs/.../best.ckpt [--output m.json]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghost_vision.cli import evaluate  # noqa: E402


def main() -> dict[str, float]:
    # A bare CONFIG becomes --config CONFIG; LightningCLI then parses sys.argv itself (under DDP, Lightning
    # re-launches this script with the same sys.argv for the other ranks).
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        sys.argv = [sys.argv[0], "--config", *sys.argv[1:]]
    return evaluate()


if __name__ == "__main__":
    from ghost_vision.data.io import DataError

    try:
        main()
    except (FileNotFoundError, DataError) as exc:  # missing or broken data: the message says what to do
        raise SystemExit(f"error: {exc}") from None
