"""Tiny torchvision-style networks for fast task tests (importable as ``_toy`` via a ``class_path``)."""

from __future__ import annotations

import os
import sys

import lightning as L
import torch
from torch import Tensor, nn


class ToyDetector(nn.Module):
    """A 'detector' with a backbone (conv + BN) and a class-count-dependent head.

    Training returns ``{"loss_cls": ...}``; ``nan_calls`` lists the training calls (0-based) whose loss is
    NaN. Eval returns one box per image.
    """

    def __init__(self, num_classes: int, nan_calls: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(8, num_classes)
        self.nan_calls = set(nan_calls)
        self.calls = 0

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training:
            if self.calls in self.nan_calls:  # a blown-up input: NaN activations (and BN statistics)
                images = [img * float("nan") for img in images]
            self.calls += 1
        feats = torch.cat([self.backbone(img[None]) for img in images])
        logits = self.head(feats)
        if self.training:
            labels = torch.stack([t["labels"][0] if len(t["labels"]) else torch.tensor(0) for t in targets])
            return {"loss_cls": nn.functional.cross_entropy(logits, labels)}
        scores, labels = logits[:, 1:].softmax(1).max(1)
        return [
            {"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "scores": s[None], "labels": (lab + 1)[None]}
            for s, lab in zip(scores, labels)
        ]


def toy_detection_batches(n: int = 8, batch_size: int = 2, num_classes: int = 5, seed: int = 0):
    """A list-backed detection DataLoader (``(images, targets)`` tuples)."""
    from torch.utils.data import DataLoader

    from ghost_vision.data import detection_collate

    g = torch.Generator().manual_seed(seed)
    samples = [
        (torch.rand(3, 24, 32, generator=g),
         {"boxes": torch.tensor([[1.0, 2.0, 20.0, 22.0]]),
          "labels": torch.tensor([1 + i % (num_classes - 1)]), "image_id": torch.tensor(i)})
        for i in range(n)
    ]
    return DataLoader(samples, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)


class KillAt(L.Callback):
    """Ends the process abruptly (``os._exit(17)``: no clean-up, like a killed job) when a training batch
    starts at ``global_step == step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(17)
