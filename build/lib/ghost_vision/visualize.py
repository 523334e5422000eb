"""Pictures of results: predictions drawn on images (torchvision's drawing utilities) and training curves."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

__all__ = ["draw_detections", "draw_segmentation", "save_image", "plot_curves", "PALETTE"]


def _palette(n: int) -> list[tuple[int, int, int]]:
    g = torch.Generator().manual_seed(3)
    return [tuple(int(v) for v in torch.randint(40, 256, (3,), generator=g)) for _ in range(n)]


PALETTE = _palette(256)


def _to_uint8(image: Tensor) -> Tensor:
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return image[:3] if image.shape[0] >= 3 else image.expand(3, -1, -1)


def draw_detections(
    image: Tensor,
    prediction: Mapping[str, Tensor],
    *,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.3,
    width: int = 2,
) -> Tensor:
    """Draw boxes with ``label score`` captions on a 3xHxW image (float [0,1] or uint8); returns uint8.

    Instance ``masks`` in the prediction (Mask R-CNN's ``N x 1 x H x W`` probabilities, or ``N x H x W``) are
    overlaid first, each ``> 0.5`` in its box's colour.

    Example:
        >>> import torch
        >>> prediction = {"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
        ...               "scores": torch.tensor([0.9])}
        >>> drawn = draw_detections(torch.rand(3, 64, 64), prediction, class_names=["background", "cat"])
        >>> drawn.dtype, tuple(drawn.shape)
        (torch.uint8, (3, 64, 64))
    """
    img = _to_uint8(image)
    keep = prediction["scores"].detach().cpu() >= score_thresh if "scores" in prediction else None
    boxes = prediction["boxes"].detach().cpu().float()
    labels = prediction["labels"].detach().cpu()
    scores = prediction["scores"].detach().cpu() if "scores" in prediction else None
    masks = prediction.get("masks")
    if masks is not None:
        masks = masks.detach().cpu()
        masks = (masks[:, 0] if masks.ndim == 4 else masks) > 0.5
    if keep is not None:
        boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
        masks = masks[keep] if masks is not None else None
    if len(boxes) == 0:
        return img
    if masks is not None:
        img = draw_segmentation_masks(img, masks, alpha=0.45, colors=[PALETTE[int(lab) % len(PALETTE)] for lab in labels])

    def name(label: int) -> str:
        if class_names is not None and 1 <= label <= len(class_names):
            return class_names[label - 1]
        return str(label)

    captions = [name(int(lab)) + (f" {float(s):.2f}" if scores is not None else "") for lab, s in
                zip(labels, scores if scores is not None else [None] * len(labels))]
    colors = [PALETTE[int(lab) % len(PALETTE)] for lab in labels]
    return draw_bounding_boxes(img, boxes, labels=captions, colors=colors, width=width)


def draw_segmentation(image: Tensor, mask: Tensor, *, num_classes: int, alpha: float = 0.5,
                      ignore_index: int = 255) -> Tensor:
    """Overlay a class-id mask (HxW) on a 3xHxW image; ``ignore_index`` pixels stay uncoloured.

    Example:
        >>> import torch
        >>> mask = torch.zeros(64, 64, dtype=torch.int64)
        >>> mask[10:30, 10:30] = 2
        >>> drawn = draw_segmentation(torch.rand(3, 64, 64), mask, num_classes=3)
        >>> drawn.dtype, tuple(drawn.shape)
        (torch.uint8, (3, 64, 64))
    """
    img = _to_uint8(image)
    mask = mask.detach().cpu()
    present = [c for c in range(num_classes) if c != ignore_index and bool((mask == c).any())]
    if not present:
        return img
    masks = torch.stack([mask == c for c in present])
    return draw_segmentation_masks(img, masks, alpha=alpha, colors=[PALETTE[c] for c in present])


def save_image(images: Tensor | Sequence[Tensor], path: str | Path, *, nrow: int = 4) -> Path:
    """Write one uint8 image or a grid of them (padded to the largest size) as PNG.

    Example:
        >>> import tempfile, torch
        >>> images = [torch.zeros(3, 32, 48, dtype=torch.uint8), torch.full((3, 40, 40), 255, dtype=torch.uint8)]
        >>> save_image(images, f"{tempfile.mkdtemp()}/grid.png").suffix
        '.png'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(images, Tensor) and images.ndim == 3:
        grid = images
    else:
        images = list(images)
        h = max(int(i.shape[1]) for i in images)
        w = max(int(i.shape[2]) for i in images)
        padded = [torch.nn.functional.pad(i, (0, w - i.shape[2], 0, h - i.shape[1])) for i in images]
        grid = make_grid(torch.stack(padded), nrow=min(nrow, len(padded)), padding=4, pad_value=255)
    write_png(grid.to(torch.uint8).cpu(), str(path))
    return path


def plot_curves(history: Sequence[Mapping[str, float]], path: str | Path, *, title: str = "") -> Path:
    """Plot every metric in ``history`` (a list of ``{"epoch": e, name: value}``) against the epoch.

    Losses go on the left panel, validation metrics on the right. Also writes the numbers next to the
    picture as JSON (same name, ``.json``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted({k for row in history for k in row if k not in ("epoch", "step")})
    # Left: every training loss (total and parts) and validation losses; right: the headline metrics.
    losses = [n for n in names if "loss" in n or (n.startswith("train/") and n != "train/skipped_steps")]
    headline = ("map", "map_50", "map_75", "mar_100", "miou", "pixel_accuracy", "mean_accuracy")
    metrics = [n for n in names if n not in losses and n.split("/", 1)[-1] in headline]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, group, ylabel in ((axes[0], losses, "loss"), (axes[1], metrics, "metric")):
        for name in group:
            pts = [(row["epoch"], row[name]) for row in history if name in row]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(list(history), indent=1))
    return path
