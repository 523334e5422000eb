#!/usr/bin/env python
"""Ghost models vs their torchvision MobileNetV3 peers, side by side on this CPU.

    python tools/benchmark.py --quick --pairs backbone --out /tmp/b

The same as ``ghost-vision benchmark ...``; the code lives in ``ghost_vision.commands.benchmark``.
"""

from ghost_vision.commands.benchmark import main as main

if __name__ == "__main__":
    from ghost_vision.commands import run

    run(main)
