"""Precise BatchNorm statistics: replace the running averages of the BatchNorm layers by their exact average over
a number of training batches, computed with the current weights ("PreciseBN", Wu & Johnson, *Rethinking "Batch"
in BatchNorm*, 2021; detectron2's and fvcore's hook of that name).

Why it matters here: a BatchNorm's running statistics are an exponential average of past batches, computed with
past weights. With torchvision's MobileNetV3 setting (``momentum=0.01``, a horizon of ~100 steps) and a short
from-scratch budget the averages lag the weights, and the eval-mode model is worse than what it has learnt (the
segmentation peer in ``docs/accuracy_per_cost.md`` predicted one class). Re-estimating before validation removes
that artefact for every model alike.

Hand-written rather than :func:`torch.optim.swa_utils.update_bn`: that puts the whole model in training mode,
where torchvision's detectors need targets; here the model runs its eval-mode forward (images only, any task)
with only the BatchNorms that train computing batch statistics, and layers kept frozen (``norm_eval``, frozen
stages, ``FrozenBatchNorm2d``) are left alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

__all__ = ["PreciseBN", "recompute_bn_stats"]


def _training_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorms that ``model.train()`` puts in training mode (its ``train()`` overrides decide)."""
    was_training = {m: m.training for m in model.modules()}
    model.train()
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m, mode in was_training.items():
        m.training = mode
    return norms


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[Any], *, num_batches: int,
                       forward: Callable[[nn.Module, Any], Any] | None = None) -> int:
    """Set the running mean and variance of ``model``'s training BatchNorms to their average over batches.

    Args:
        model: any module; the BatchNorms that its ``train()`` would put in training mode are re-estimated.
        batches: inputs of the model (or whatever ``forward`` takes); the first ``num_batches`` are used.
        num_batches: how many batches (> 0).
        forward: ``forward(model, batch)`` runs the model on one batch (default ``model(batch)``).

    Returns:
        The number of batches used (fewer than ``num_batches`` when ``batches`` ran out).

    The model runs in eval mode except for those BatchNorms (momentum ``None``: a cumulative average, each batch
    weighted alike); afterwards every module's mode, momentum and ``num_batches_tracked`` are as before, and
    BatchNorms that the eval-mode forward does not reach (a training-only head such as NanoDet-Plus's assist head)
    keep their statistics.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01))
        >>> data = [torch.randn(8, 3, 16, 16) + 2 for _ in range(4)]
        >>> recompute_bn_stats(net, data, num_batches=10)
        4
        >>> torch.allclose(net[1].running_mean, torch.stack([net[0](x).mean((0, 2, 3)) for x in data]).mean(0))
        True
    """
    if num_batches <= 0:
        raise ValueError(f"num_batches must be > 0, got {num_batches}")
    forward = forward or (lambda m, b: m(b))
    norms = _training_norms(model)
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    saved = [(m.momentum, m.num_batches_tracked.clone(), m.running_mean.clone(), m.running_var.clone())
             for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    try:
        for batch in batches:
            if used >= num_batches:
                break
            if batch is None:  # a batch of only skipped samples (skip_corrupt=True)
                continue
            forward(model, batch)
            used += 1
    finally:
        for m, (momentum, tracked, mean, var) in zip(norms, saved):
            if used == 0 or int(m.num_batches_tracked) == 0:  # not on the eval-mode path (a training-only head)
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
        for m, mode in modes.items():
            m.training = mode
    if used == 0:
        raise ValueError("recompute_bn_stats: no batch to estimate the BatchNorm statistics from (empty loader)")
    return used


class PreciseBN(L.Callback):
    """Before every validation (during ``fit``, ``validate`` and ``ghost-vision eval``), re-estimate the task's
    BatchNorm statistics on ``num_batches`` training batches (:func:`recompute_bn_stats`).

    The training batches come from the DataModule's ``train_dataloader()`` (set up for ``fit`` if needed), with
    the random states of Python, NumPy and torch restored afterwards, so training after a validation draws the
    same batches and augmentations as without this callback. Under DDP every rank reads that loader as the
    DataModule builds it (Lightning does not shard it), and the statistics are then averaged over ranks, so the
    ranks always validate the same model. Checkpoints saved after a validation hold the new statistics.

    In a recipe::

        trainer:
          callbacks:
            - class_path: ghost_vision.tasks.PreciseBN
              init_args: {num_batches: 50}

    or ``--trainer.callbacks+=ghost_vision.tasks.PreciseBN --trainer.callbacks.num_batches 50``.

    Example:
        >>> trainer = L.Trainer(callbacks=[PreciseBN(num_batches=50)])  # doctest: +SKIP
    """

    def __init__(self, num_batches: int = 50) -> None:
        if num_batches <= 0:
            raise ValueError(f"PreciseBN: num_batches must be > 0, got {num_batches}")
        self.num_batches = num_batches
        self.last_used = 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        dm = trainer.datamodule
        if dm is None:
            raise ValueError("PreciseBN needs a DataModule (its train_dataloader) to re-estimate BatchNorm "
                             "statistics; pass datamodule= to the Trainer call, or remove the callback")
        if getattr(dm, "train_dataset", "n/a") is None:  # validate/eval only set up the validation split
            dm.setup("fit")
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            def forward(task: L.LightningModule, batch: Any) -> None:
                images = move_data_to_device(batch[0], task.device)
                task(list(images) if isinstance(images, tuple) else images)

            self.last_used = recompute_bn_stats(pl_module, dm.train_dataloader(), num_batches=self.num_batches,
                                                forward=forward)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
        if trainer.world_size > 1:
            for m in _training_norms(pl_module):
                m.running_mean.copy_(trainer.strategy.reduce(m.running_mean, reduce_op="mean"))
                m.running_var.copy_(trainer.strategy.reduce(m.running_var, reduce_op="mean"))
        rank_zero_info(f"PreciseBN: BatchNorm statistics re-estimated on {self.last_used} training batches")
