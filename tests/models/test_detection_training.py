"""Overfitting one fixed synthetic batch: the total loss must fall by >= 80 % within 100 steps (CPU)."""

from __future__ import annotations

import pytest
import torch

from ghost_vision.models.detection import fasterrcnn_ghostnet_fpn, ssdlite320_ghostnet


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread: on a shared 2-core runner, two OpenMP threads made a Faster R-CNN step (RoIAlign
    backward) over 10x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 0.3, 1.0)}


def _synthetic_batch(size: int = 320) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of faint noise with solid rectangles, one colour per class."""
    g = torch.Generator().manual_seed(0)
    layout = [
        ([[30.0, 40.0, 150.0, 200.0], [180.0, 100.0, 290.0, 260.0]], [1, 2]),
        ([[60.0, 60.0, 260.0, 180.0]], [2]),
    ]
    images, targets = [], []
    for boxes, labels in layout:
        img = 0.2 * torch.rand(3, size, size, generator=g)
        for (x0, y0, x1, y1), label in zip(boxes, labels):
            img[:, int(y0) : int(y1), int(x0) : int(x1)] = torch.tensor(COLOURS[label])[:, None, None]
        images.append(img)
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)})
    return images, targets


def _overfit(model: torch.nn.Module, lr: float, max_steps: int = 100) -> tuple[float, float, int]:
    images, targets = _synthetic_batch()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    first = last = float("nan")
    for step in range(max_steps + 1):  # the loss after 100 updates is measured at step 100
        loss = sum(model(images, targets).values())
        last = loss.item()
        if step == 0:
            first = last
        if last <= 0.2 * first or step == max_steps:
            return first, last, step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    raise AssertionError("unreachable")


def test_ssdlite_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = ssdlite320_ghostnet(num_classes=3)
    first, last, steps = _overfit(model, lr=1e-3)
    assert last <= 0.2 * first, f"SSDLite loss {first:.3f} -> {last:.3f} after {steps} steps"


def test_fasterrcnn_overfits_one_batch() -> None:
    torch.manual_seed(0)
    # the default 91 classes; fewer sampled RoIs/proposals than the COCO defaults keep a CPU step cheap
    model = fasterrcnn_ghostnet_fpn(
        min_size=320, max_size=320, box_batch_size_per_image=64, rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
    )
    first, last, steps = _overfit(model, lr=5e-4)
    assert last <= 0.2 * first, f"Faster R-CNN loss {first:.3f} -> {last:.3f} after {steps} steps"


@pytest.mark.slow
def test_ssdlite_ghostnetv3_overfits_one_batch() -> None:
    """GhostNetV3 trains in its multi-branch form (every branch gets gradients) and fuses afterwards."""
    from ghost_vision.models import reparameterize

    torch.manual_seed(0)
    model = ssdlite320_ghostnet(num_classes=3, backbone="ghostnetv3_050")
    first, last, steps = _overfit(model, lr=1e-3)
    assert last <= 0.2 * first, f"SSDLite-GhostNetV3 loss {first:.3f} -> {last:.3f} after {steps} steps"
    branches = model.backbone.body.blocks[3][0].ghost1.cheap_rpr_conv
    assert all(b.conv.weight.grad is not None and b.conv.weight.grad.abs().sum() > 0 for b in branches)
    images, _ = _synthetic_batch()
    model.eval()
    with torch.no_grad():
        x = model.transform(images)[0].tensors
        before = list(model.backbone(x).values())
        after = list(reparameterize(model).backbone(x).values())
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, a.abs().max().item()))
