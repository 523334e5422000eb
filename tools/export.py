#!/usr/bin/env python
"""Export a Ghost model (or a torchvision peer) to ONNX and TorchScript, checked on export.

    python tools/export.py ghostnet_100 --out exported

The same as ``ghost-vision export ...``; the code lives in ``ghost_vision.commands.export``.
"""

from ghost_vision.commands.export import main as main

if __name__ == "__main__":
    from ghost_vision.commands import run

    run(main)
