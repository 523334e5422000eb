#!/usr/bin/env python
"""Run a trained checkpoint on images and write the predictions drawn on them as PNGs.

    python tools/infer.py --ckpt_path runs/ssdlite_ghost_shapes/checkpoints/last.ckpt img1.jpg img2.png --out preds/

``--fast`` runs the model through ``ghost_vision.deploy.optimize`` (BatchNorm folded, concat-free Ghost
blocks, frozen TorchScript): about twice as fast on CPU, same predictions within float rounding.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ghost_vision.cli import load_task  # noqa: E402
from ghost_vision.data.io import read_image  # noqa: E402
from ghost_vision.deploy import optimize  # noqa: E402
from ghost_vision.tasks import DetectionTask  # noqa: E402
from ghost_vision.visualize import draw_detections, draw_segmentation, save_image  # noqa: E402


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    names = task.hparams.get("class_names")
    written = []
    for path in tqdm(args.images, desc="infer", unit="img"):
        # RGB whatever the file's mode, EXIF orientation applied; float 3xHxW in [0, 1] like the datasets
        image = torch.from_numpy(read_image(path)).permute(2, 0, 1).float().div(255)
        with torch.no_grad():
            if isinstance(task, DetectionTask):
                pred = model([image])[0]
                drawn = draw_detections(image, pred, class_names=names, score_thresh=args.score_thresh)
            else:
                mask = model(image[None])["out"].argmax(1)[0]
                drawn = draw_segmentation(image, mask, num_classes=task.hparams.num_classes)
        written.append(save_image(drawn, args.out / f"{path.stem}_pred.png"))
    print(f"wrote {len(written)} picture(s) to {args.out}")
    return written


if __name__ == "__main__":
    main()
