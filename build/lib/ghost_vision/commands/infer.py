"""Run a trained checkpoint on images and write the predictions drawn on them as PNGs.

    ghost-vision infer --ckpt_path runs/ssdlite_ghost_shapes/checkpoints/last.ckpt img1.jpg img2.png --out preds/

``--fast`` runs the model through ``ghost_vision.deploy.optimize`` (BatchNorm folded, concat-free Ghost
blocks, frozen TorchScript): about twice as fast on CPU, same predictions within float rounding.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from ghost_vision.cli import load_task
from ghost_vision.data.io import read_image
from ghost_vision.deploy import optimize
from ghost_vision.tasks.callbacks import predict_and_draw
from ghost_vision.visualize import save_image


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="image files (any format PIL reads)")
    parser.add_argument("--ckpt_path", required=True, type=Path, help="a DetectionTask/SegmentationTask .ckpt")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder for the PNGs")
    parser.add_argument("--score_thresh", type=float, default=0.3, help="hide boxes scoring below this")
    parser.add_argument("--fast", action="store_true", help="use the optimized inference path (deploy.optimize)")
    args = parser.parse_args(argv)
    if not args.ckpt_path.is_file():
        parser.error(f"checkpoint not found: {args.ckpt_path}")
    task = load_task(args.ckpt_path).eval()
    model = optimize(task.model) if args.fast else task.model
    written = []
    for path in tqdm(args.images, desc="infer", unit="img"):
        # RGB whatever the file's mode, EXIF orientation applied; float 3xHxW in [0, 1] like the datasets
        image = torch.from_numpy(read_image(path)).permute(2, 0, 1).float().div(255)
        (drawn,) = predict_and_draw(task, [image], model=model, score_thresh=args.score_thresh)
        written.append(save_image(drawn, args.out / f"{path.stem}_pred.png"))
    print(f"wrote {len(written)} picture(s) to {args.out}")
    return written
