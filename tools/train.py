#!/usr/bin/env python
"""Train a recipe, then validate its best checkpoint.

    python tools/train.py configs/ssdlite_ghost_shapes.yaml [--trainer.max_epochs 3] [--ckpt_path last]

Every LightningCLI override works (``--print_config`` shows the resolved config).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghost_vision.cli import train  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0], *argv[1:]]
    train(argv)


if __name__ == "__main__":
    main()
