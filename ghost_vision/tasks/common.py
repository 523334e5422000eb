"""Pieces shared by the Lightning tasks: model resolution, optimizer groups, LR schedules, loss checks."""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

__all__ = [
    "build_model",
    "param_groups",
    "build_optimizer",
    "build_scheduler",
    "NonFiniteLossError",
    "BaseTask",
]

_BUILDER_MODULES = (
    "ghost_vision.models",
    "torchvision.models.detection",
    "torchvision.models.segmentation",
)


def build_model(model: str | Mapping[str, Any], num_classes: int, **extra: Any) -> nn.Module:
    """Build a network from a builder name or a ``{"class_path": ..., "init_args": {...}}`` mapping.

    Builder names are looked up in :mod:`ghost_vision.models`, then torchvision's detection and
    segmentation builders (so the MobileNetV3 peers train with the same recipe). ``num_classes`` is
    passed to the builder.
    """
    if isinstance(model, str):
        for module_name in _BUILDER_MODULES:
            fn = getattr(importlib.import_module(module_name), model, None)
            if callable(fn):
                return fn(num_classes=num_classes, **extra)
        raise ValueError(
            f"unknown model builder {model!r}: give a builder of ghost_vision.models (e.g. ssdlite320_ghostnet, "
            "fasterrcnn_ghostnet_fpn, deeplabv3_ghostnet), a torchvision detection/segmentation builder, or "
            "{'class_path': 'package.module.Class', 'init_args': {...}}"
        )
    if "class_path" not in model:
        raise ValueError(f"model mapping needs a 'class_path' key, got keys {sorted(model)}")
    module_name, _, attr = str(model["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import model class_path {model['class_path']!r}: {exc}") from exc
    return cls(num_classes=num_classes, **dict(model.get("init_args") or {}), **extra)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weights with decay; norms' parameters and all biases without (standard practice)."""
    decay, no_decay = [], []
    for mod in module.modules():
        is_norm = isinstance(mod, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if is_norm or name.endswith("bias") or p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    module: nn.Module, *, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    groups = param_groups(module, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    total_steps: int,
    warmup_steps: int,
    warmup_factor: float = 0.001,
    milestones: tuple[float, ...] = (0.67, 0.89),
    gamma: float = 0.1,
    power: float = 0.9,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``warmup_factor`` then ``cosine``, ``step`` (at fractions ``milestones`` of
    training), ``poly`` (``(1 - t) ** power``) or ``constant``; stepped every optimizer step."""
    if name not in ("cosine", "step", "poly", "constant"):
        raise ValueError(f"scheduler must be one of cosine, step, poly, constant; got {name!r}")
    total_steps = max(1, int(total_steps))
    warmup_steps = min(max(0, int(warmup_steps)), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            alpha = step / warmup_steps
            return warmup_factor * (1 - alpha) + alpha
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if name == "cosine":
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if name == "poly":
            return max(min_lr_ratio, (1 - t) ** power)
        if name == "step":
            return gamma ** sum(t >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_states() -> dict[str, Any]:
    """torch / numpy / random global states in types that ``torch.load(weights_only=True)`` accepts."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }


def _set_rng_states(states: Mapping[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite (unless the task is told to skip such steps).

    With ``on_nonfinite="skip"`` the step's gradients are never computed, so the optimizer leaves the
    weights as they are (Lightning still counts the step in ``global_step`` and the LR schedule), and the
    running statistics the forward pass changed are restored; ``task.skipped_steps`` counts such steps.
    """


class BaseTask(L.LightningModule):
    """Optimizer/scheduler set-up, non-finite loss policy and the ``num_classes`` checkpoint guard."""

    model: nn.Module

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any):  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``; the backbone's pretrained weights named in the saved
        ``model_kwargs`` (e.g. ``weights_backbone: ghostnet_100.in1k``) are not downloaded or read again:
        the checkpoint restores every weight (strictly)."""
        from ghost_vision.models import skip_weight_loading

        with skip_weight_loading():
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def _init_common(self, *, on_nonfinite: str) -> None:
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
        self.skipped_steps = 0

    def check_loss(self, loss: Tensor, parts: Mapping[str, Tensor], batch_idx: int) -> Tensor | None:
        """Return the loss, or ``None`` to skip the step (``on_nonfinite="skip"``), or raise."""
        if torch.isfinite(loss):
            return loss
        detail = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
        if self.hparams.on_nonfinite == "skip":
            # the forward pass already ran: undo what it did to running statistics (BN), which a
            # non-finite activation would otherwise poison for good
            backup = getattr(self, "_buffers_backup", None)
            if backup is not None:
                with torch.no_grad():
                    for buf, saved in zip(self.model.buffers(), backup):
                        buf.copy_(saved)
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            return None
        raise NonFiniteLossError(
            f"non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}, "
            f"batch {batch_idx}): {detail}. Lower the learning rate, enable gradient clipping "
            "(--trainer.gradient_clip_val 10) or set --model.init_args.on_nonfinite skip to skip such steps."
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.hparams.on_nonfinite == "skip":  # cheap: buffers are running statistics and counters
            self._buffers_backup = [b.detach().clone() for b in self.model.buffers()]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = build_optimizer(
            self.model, name=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay, momentum=hp.momentum
        )
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("the LR schedule needs a finite length: set --trainer.max_epochs or --trainer.max_steps")
        total = int(total)
        if trainer.train_dataloader is None:  # estimated_stepping_batches skips this with max_epochs=-1
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            steps_per_epoch = max(1, math.ceil(batches / max(1, trainer.accumulate_grad_batches)))
        else:  # iterable dataset of unknown length: assume max_epochs split the steps evenly
            steps_per_epoch = max(1, total // max(1, trainer.max_epochs or 1))
        scheduler = build_scheduler(
            optimizer, name=hp.scheduler, total_steps=total,
            warmup_steps=round(hp.warmup_epochs * steps_per_epoch), milestones=tuple(hp.milestones),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Also outside ``hyper_parameters``: ``load_from_checkpoint(path, num_classes=3)`` overwrites those
        # before ``on_load_checkpoint`` sees them, and the guard needs the value the weights were trained with.
        checkpoint["num_classes"] = int(self.hparams.num_classes)
        # Global RNG states (torch, numpy, random; per process), restored when a fit resumes so that model
        # randomness (dropout, proposal sampling) continues as in an uninterrupted run. The train loader's
        # order and augmentations do not use them (ghost_vision.data.resumable).
        checkpoint["rng_states"] = _rng_states()
        # ``init_from`` only initialises a *new* run; a checkpoint of that run already holds the weights, so
        # loading it must not read (or need) the original file again.
        hp = checkpoint.get("hyper_parameters")
        if hp is not None and hp.get("init_from"):
            hp["initialized_from"] = hp["init_from"]
            hp["init_from"] = None

    def on_train_start(self) -> None:
        # Resuming mid-epoch: hand the train loader its saved position. Lightning restores loader states
        # only while it builds the train loader, but ``estimated_stepping_batches`` (configure_optimizers)
        # built it before the checkpoint's loop state was loaded, so the state would be dropped silently
        # (the resumed epoch would then start over). The loader's iterator exists but has not served a
        # batch yet (ghost_vision.data.resumable reads its state lazily), so loading it here is in time.
        fit_loop = self.trainer.fit_loop
        if getattr(fit_loop, "_combined_loader_states_to_load", None) and hasattr(
            fit_loop, "_load_combined_loader_states"
        ):
            fit_loop._load_combined_loader_states()
        # after the sanity check (whose loader draws from the global RNG), before the first resumed batch
        states, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if states is not None:
            _set_rng_states(states)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")
        saved = checkpoint.get("num_classes", checkpoint.get("hyper_parameters", {}).get("num_classes"))
        if saved is not None and saved != self.hparams.num_classes:
            raise ValueError(
                f"the checkpoint was trained with num_classes={saved} but this model has "
                f"num_classes={self.hparams.num_classes}. To fine-tune it on the new classes, start a new run "
                "with --model.init_args.init_from PATH.ckpt (loads every weight whose shape fits, the new head "
                "starts fresh) instead of --ckpt_path."
            )

    def _load_init_from(self, path: str) -> None:
        """Load every tensor of a checkpoint whose name and shape fit (fine-tuning with a new head)."""
        from ghost_vision.models.weights import read_state_dict

        sd = read_state_dict(path)
        sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
        own = self.model.state_dict()
        fit = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        if not fit:
            raise ValueError(f"init_from={path}: no tensor of the checkpoint fits this model")
        self.model.load_state_dict(fit, strict=False)
        self.init_report = {"loaded": len(fit), "skipped": len(own) - len(fit)}
