"""The base of the Lightning tasks: shared hyperparameters, optimizer/schedule set-up, the non-finite loss
policy, exact mid-epoch resume (public hooks only); :func:`~ghost_vision.tasks.load_task` (in
``loading.py``) reads back the task class it records."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from .common import OPTIMIZERS, SCHEDULERS, WarmupSchedule, build_model, build_optimizer, build_scheduler

__all__ = ["BaseTask", "NonFiniteLossError", "TASK_KEY"]

#: Checkpoint key holding the task class (``module.QualName``) that wrote the checkpoint.
TASK_KEY = "ghost_vision_task"
#: Checkpoint key holding the training loader's resume state (see :mod:`ghost_vision.data.resumable`).
LOADER_KEY = "ghost_vision_train_loader"


def _rng_states() -> dict[str, Any]:
    """torch / numpy / random global states in types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _stateful_loaders(loaders: Any) -> list[Any]:
    """The loaders of ``trainer.train_dataloader`` (one, or a list/dict of them) that have a resume state."""
    if loaders is None:
        return []
    if isinstance(loaders, Mapping):
        return [x for v in loaders.values() for x in _stateful_loaders(v)]
    if isinstance(loaders, (list, tuple)):
        return [x for v in loaders for x in _stateful_loaders(v)]
    ok = callable(getattr(loaders, "state_dict", None)) and callable(getattr(loaders, "load_state_dict", None))
    return [loaders] if ok else []


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite (unless the task is told to skip such steps).

    With ``on_nonfinite="skip"`` the step's gradients are never computed, so the optimizer leaves the
    weights as they are (Lightning still counts the step in ``global_step`` and the LR schedule), and the
    running statistics the forward pass changed are restored; ``task.skipped_steps`` counts such steps.
    """


class BaseTask(L.LightningModule):
    """What every task shares: the model, optimizer and LR schedule, the non-finite loss policy, the
    ``num_classes`` checkpoint guard, ``init_from`` fine-tuning and exact resume.

    Subclasses list their own arguments (LightningCLI reads their signature) and pass the shared ones on
    by keyword; all of them end up in ``self.hparams`` (the whole chain of ``__init__`` arguments is saved).

    Args:
        model: a registry name (:func:`ghost_vision.models.get_model`) or ``{"class_path", "init_args"}``.
        model_kwargs: extra builder arguments.
        num_classes: classes of the model (checked against a checkpoint's on load).
        class_names: class names for drawings and logs.
        optimizer: ``"sgd"`` (Nesterov momentum) or ``"adamw"``; no weight decay on norms and biases.
        lr: peak learning rate (reached after the warm-up).
        momentum: SGD momentum (unused by AdamW).
        weight_decay: weight decay of the conv/linear weights.
        scheduler: after a linear warm-up, ``"cosine"``, ``"step"``, ``"poly"`` or ``"constant"``.
        warmup_epochs: length of the linear warm-up, in epochs (may be fractional).
        milestones: fractions of training where ``"step"`` multiplies the learning rate by 0.1.
        on_nonfinite: ``"raise"`` or ``"skip"`` for a NaN/inf training loss.
        init_from: a checkpoint whose fitting tensors initialise the model.
        channels_last: keep the model's 4-D weights, and so its feature maps, in channels-last (NHWC) memory.
            Same arithmetic, same checkpoints, faster: oneDNN's CPU depthwise convolutions run 2-4.5x faster
            this way, backward included. Measured on a 2-core AMD EPYC, 1 thread, a training step at batch 16:
            SSDLite-Ghost 1.7x, NanoDet 1.5-1.7x, the SSDLite-MobileNetV3 peer 1.5x; at batch 4 DeepLab-lite
            1.4x, LR-ASPP 1.2x, the FPN detectors (mostly 256-channel 3x3 convs) 1.03-1.1x.
    """

    model: nn.Module

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any):  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``; the backbone's pretrained weights named in the saved
        ``model_kwargs`` (e.g. ``weights_backbone: ghostnet_100.in1k``) are not downloaded or read again:
        the checkpoint restores every weight (strictly)."""
        from ghost_vision.models import skip_weight_loading

        with skip_weight_loading():
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def __init__(
        self,
        *,
        model: str | dict[str, Any],
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 4e-5,
        scheduler: str = "cosine",
        warmup_epochs: float = 0.0,
        milestones: Sequence[float] = (0.67, 0.89),
        on_nonfinite: str = "raise",
        init_from: str | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        for key, value, choices in (("optimizer", optimizer, OPTIMIZERS), ("scheduler", scheduler, SCHEDULERS),
                                    ("on_nonfinite", on_nonfinite, ("raise", "skip"))):
            if value not in choices:
                raise ValueError(f"{key} must be one of {', '.join(map(repr, choices))}; got {value!r}")
        # collects the arguments of every __init__ in the subclass chain (Lightning walks the frames)
        self.save_hyperparameters()
        self.skipped_steps = 0
        self.model = build_model(model, num_classes, **(model_kwargs or {}))
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if init_from:
            self._load_init_from(init_from)

    # ------------------------------------------------------------------ non-finite losses
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

    def skip_together(self, skip: bool) -> bool:
        """Whether to skip this training step (return ``None``): ``skip`` on this process, or on any process
        under DDP. A process that skipped backward while the others ran it would leave their gradient
        all-reduce waiting forever, so a step is skipped by all or by none (for a batch of nothing but
        unreadable samples, or a non-finite loss with ``on_nonfinite="skip"``)."""
        trainer = self._trainer_or_none()
        if trainer is None or trainer.world_size <= 1:
            return skip
        return bool(trainer.strategy.reduce_boolean_decision(skip, all=False))

    def _trainer_or_none(self) -> Any:
        try:
            return self.trainer
        except RuntimeError:  # not attached to a Trainer (a bare module in a unit test)
            return None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.hparams.on_nonfinite == "skip":  # cheap: buffers are running statistics and counters
            self._buffers_backup = [b.detach().clone() for b in self.model.buffers()]

    # ------------------------------------------------------------------ optimizer and LR schedule
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = build_optimizer(
            self.model, name=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay, momentum=hp.momentum
        )
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("the LR schedule needs a finite length: set --trainer.max_epochs or --trainer.max_steps")
        # the warm-up length in steps needs the batches per epoch, known for certain only once the train
        # loader is set up: on_train_start fixes it (before the first step)
        scheduler = build_scheduler(optimizer, name=hp.scheduler, total_steps=int(total), warmup_steps=0,
                                    milestones=tuple(hp.milestones))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        trainer = self.trainer
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            return max(1, math.ceil(batches / max(1, trainer.accumulate_grad_batches)))
        # an iterable dataset of unknown length: assume max_epochs split the steps evenly
        return max(1, int(trainer.estimated_stepping_batches) // max(1, trainer.max_epochs or 1))

    def _set_warmup(self) -> None:
        """Give the LR schedule its warm-up in steps and re-apply the factor of the current step."""
        schedulers = self.lr_schedulers()
        for sched in schedulers if isinstance(schedulers, list) else [schedulers]:
            fns = getattr(sched, "lr_lambdas", [])
            if not any(isinstance(fn, WarmupSchedule) for fn in fns):
                continue  # a scheduler a subclass configured itself
            steps = round(self.hparams.warmup_epochs * self._steps_per_epoch())
            for fn in fns:
                fn.set_warmup(steps)
            for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, fns):
                group["lr"] = base * fn(sched.last_epoch)

    # ------------------------------------------------------------------ checkpoints and exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TASK_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        # Also outside ``hyper_parameters``: ``load_from_checkpoint(path, num_classes=3)`` overwrites those
        # before ``on_load_checkpoint`` sees them, and the guard needs the value the weights were trained with.
        checkpoint["num_classes"] = int(self.hparams.num_classes)
        # Global RNG states (torch, numpy, random; per process), restored when a fit resumes so that model
        # randomness (dropout, proposal sampling) continues as in an uninterrupted run. The train loader's
        # order and augmentations do not use them (ghost_vision.data.resumable).
        checkpoint["rng_states"] = _rng_states()
        # The train loader's position (epoch, batches served), handed back in on_train_start.
        loaders = _stateful_loaders(self.trainer.train_dataloader)  # the trainer calls this hook
        if loaders:
            checkpoint[LOADER_KEY] = [loader.state_dict() for loader in loaders]
        # ``init_from`` only initialises a *new* run; a checkpoint of that run already holds the weights, so
        # loading it must not read (or need) the original file again.
        hp = checkpoint.get("hyper_parameters")
        if hp is not None and hp.get("init_from"):
            hp["initialized_from"] = hp["init_from"]
            hp["init_from"] = None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")
        self._loader_states_to_restore = checkpoint.get(LOADER_KEY)
        saved = checkpoint.get("num_classes", checkpoint.get("hyper_parameters", {}).get("num_classes"))
        if saved is not None and saved != self.hparams.num_classes:
            raise ValueError(
                f"the checkpoint was trained with num_classes={saved} but this model has "
                f"num_classes={self.hparams.num_classes}. To fine-tune it on the new classes, start a new run "
                "with --model.init_args.init_from PATH.ckpt (loads every weight whose shape fits, the new head "
                "starts fresh) instead of --ckpt_path."
            )
        self._keep_unnormalised_peer(checkpoint.get("state_dict") or {})

    def _keep_unnormalised_peer(self, state: Mapping[str, Any]) -> None:
        """A torchvision segmentation peer saved before peers normalised their input (ghost_vision.models.peers)
        was trained on [0, 1] tensors: run it as trained (the wrapper's network alone), with a warning."""
        from ghost_vision.models import NormalizedInput

        if isinstance(self.model, NormalizedInput) and state and not any(k.startswith("model.model.") for k in state):
            warnings.warn(
                "this checkpoint's torchvision peer was trained without input normalisation (before "
                "ghost_vision.models.peers): it is run as trained, on [0, 1] input (normalize=False). Retrain it "
                "for a comparison that feeds the peer what its weights expect (docs/peers.md).", stacklevel=2)
            self.model = self.model.model
            self.hparams.model_kwargs = {**(self.hparams.model_kwargs or {}), "normalize": False}

    def on_train_start(self) -> None:
        self._set_warmup()
        # Resuming mid-epoch: hand the train loader its saved position. Lightning restores loader states
        # only while it builds the train loader, and ``estimated_stepping_batches`` (configure_optimizers)
        # built it before the checkpoint was read, so Lightning's own copy of the state is not applied. The
        # loader's iterator exists but has not served a batch (ghost_vision.data.resumable reads the state
        # when the first batch is asked for), so loading it here is in time; loading the same state twice
        # (a Lightning that does apply it) changes nothing.
        states, self._loader_states_to_restore = getattr(self, "_loader_states_to_restore", None), None
        loaders = _stateful_loaders(self.trainer.train_dataloader)
        if states:
            if len(states) != len(loaders):
                raise RuntimeError(f"the checkpoint holds {len(states)} train loader state(s), but this run has "
                                   f"{len(loaders)} resumable train loader(s): resume with the same data set-up")
            for loader, state in zip(loaders, states):
                loader.load_state_dict(state)
        # after the sanity check (whose loader draws from the global RNG), before the first resumed batch
        rng, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if rng is not None:
            _set_rng_states(rng)

    def _load_init_from(self, path: str) -> None:
        """Load every tensor of a checkpoint whose name and shape fit (fine-tuning with a new head)."""
        from ghost_vision.models.weights import read_state_dict

        sd = read_state_dict(path)
        sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
        own = self.model.state_dict()

        def fitting(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}

        # else: a torchvision-format state dict of a wrapped peer (ghost_vision.models.NormalizedInput)
        fit = fitting(sd) or fitting({f"model.{k}": v for k, v in sd.items()})
        if not fit:
            raise ValueError(f"init_from={path}: no tensor of the checkpoint fits this model")
        self.model.load_state_dict(fit, strict=False)
        skipped = [k for k in own if k not in fit]
        self.init_report = {"loaded": len(fit), "skipped": len(skipped)}
        message = f"init_from={path}: {len(fit)} of {len(own)} tensors loaded"
        if skipped:
            names = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
            message += f"; {len(skipped)} keep their initialisation (not in it, or another shape): {names}"
        rank_zero_info(message)
