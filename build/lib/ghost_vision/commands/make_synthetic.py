"""Write the synthetic shapes datasets in COCO, Pascal VOC or Cityscapes format, or as image/mask folders.

Example:
    ghost-vision make-synthetic coco data_cache/shapes_coco --num-train 200 --num-val 50
    ghost-vision make-synthetic cityscapes data_cache/shapes_cityscapes --seed 1
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

WRITERS = ("coco", "voc", "cityscapes", "folder")


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> Path:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("format", choices=WRITERS, help="on-disk format to write")
    parser.add_argument("root", type=Path, help="output folder (created; skipped if already complete)")
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--year", default="2007", help="VOC year folder name (voc only)")
    args = parser.parse_args(argv)

    from ghost_vision.data import synthetic

    kwargs = {"num_train": args.num_train, "num_val": args.num_val, "seed": args.seed, "progress": True}
    if args.format == "voc":
        kwargs["year"] = args.year
    root = getattr(synthetic, f"write_synthetic_{args.format}")(args.root, **kwargs)
    print(f"synthetic {args.format} dataset ready at {root}")
    return root
