#!/usr/bin/env python
"""Evaluate a checkpoint on a recipe's validation split; print a metric table and write flat JSON.

    python tools/eval.py configs/ssdlite_ghost_shapes.yaml --ckpt_path runs/.../best.ckpt [--output m.json]

The same as ``ghost-vision eval ...``; the code lives in ``ghost_vision.cli``.
"""

from ghost_vision.cli import evaluate as main

if __name__ == "__main__":
    from ghost_vision.commands import run

    run(main)
