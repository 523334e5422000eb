#!/usr/bin/env python
"""Write the synthetic shapes datasets in COCO, Pascal VOC and/or Cityscapes format.

    python tools/make_synthetic.py coco data_cache/shapes_coco --num-train 200 --num-val 50

The same as ``ghost-vision make-synthetic ...``; the code lives in ``ghost_vision.commands.make_synthetic``.
"""

from ghost_vision.commands.make_synthetic import main as main

if __name__ == "__main__":
    from ghost_vision.commands import run

    run(main)
