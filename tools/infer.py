#!/usr/bin/env python
"""Draw a trained checkpoint's predictions on image files (PNGs).

    python tools/infer.py --ckpt_path runs/ssdlite_ghost_shapes/checkpoints/last.ckpt img1.jpg img2.png --out preds/

The same as ``ghost-vision infer ...``; the code lives in ``ghost_vision.commands.infer``.
"""

from ghost_vision.commands.infer import main as main

if __name__ == "__main__":
    from ghost_vision.commands import run

    run(main)
