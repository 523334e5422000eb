#!/usr/bin/env python
"""Train a recipe, then validate its best checkpoint.

    python tools/train.py configs/ssdlite_ghost_shapes.yaml [--trainer.max_epochs 3] [--ckpt_path last]

Every LightningCLI override works (``--print_config`` shows the resolved config).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghost_vision.cli import train  # noqa: E402


def main() -> dict[str, float]:
    # A bare CONFIG becomes --config CONFIG; LightningCLI then parses sys.argv itself (under DDP, Lightning
    # re-launches this script with the same sys.argv for the other ranks).
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        sys.argv = [sys.argv[0], "--config", *sys.argv[1:]]
    return train()


if __name__ == "__main__":
    from ghost_vision.data.io import DataError

    try:
        main()
    except (FileNotFoundError, DataError) as exc:  # missing or broken data: the message says what to do
        raise SystemExit(f"error: {exc}") from None
