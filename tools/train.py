#!/usr/bin/env python
"""Train a recipe, then validate its best checkpoint (LightningCLI: every override works).

    python tools/train.py configs/ssdlite_ghost_shapes.yaml [--trainer.max_epochs 3] [--ckpt_path last] [--print_config]

The same as ``ghost-vision train ...``; the code lives in ``ghost_vision.cli``.
"""

from ghost_vision.cli import train as main

if __name__ == "__main__":
    from ghost_vision.commands import run

    run(main)
