#!/usr/bin/env python
"""One-shot GPU check: AMP + channels_last training steps and inference, Ghost models vs MobileNetV3 peers.

    python tools/gpu_check.py --out gpu_results.json [--steps 20] [--batch 64]

The same as ``ghost-vision gpu-check ...``; the code lives in ``ghost_vision.commands.gpu_check``.
"""

from ghost_vision.commands.gpu_check import main as main

if __name__ == "__main__":
    from ghost_vision.commands import run

    run(main)
