"""Command line: LightningCLI with the DataModule -> model links and the recipes' defaults.

``tools/train.py`` (fit, then validate the best checkpoint) and ``tools/eval.py`` are thin wrappers around
:func:`train` and :func:`evaluate`. Every ``--trainer.*``, ``--model.*``, ``--data.*`` override of
LightningCLI works, and config errors get jsonargparse's messages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from ghost_vision.tasks.callbacks import DrawPredictions, TrainingCurves, output_dir

__all__ = ["GhostCLI", "train", "evaluate", "format_metrics"]


class GhostCLI(LightningCLI):
    """LightningCLI whose model gets ``num_classes`` and ``class_names`` from the DataModule."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.classes", "model.init_args.class_names", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "best-{epoch:03d}"})
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="checkpoint to resume from ('last' = the run's last.ckpt) or to evaluate")
        parser.add_argument("--output", type=str | None, default=None,
                            help="write the final metrics as flat JSON to this file")

    def before_instantiate_classes(self) -> None:
        # jsonargparse (4.53) parses ``--model.init_args.model_kwargs.KEY null`` into the *string* "None"
        # for the dict[str, Any] ``model_kwargs``; the documented from-scratch override
        # ``--model.init_args.model_kwargs.weights_backbone null`` needs a real None.
        init_args = (self.config.get("model") or {}).get("init_args") or {}
        kwargs = init_args.get("model_kwargs")
        if isinstance(kwargs, dict):
            init_args["model_kwargs"] = {k: None if v in ("None", "null") else v for k, v in kwargs.items()}


def _make_cli(args: Sequence[str] | None) -> GhostCLI:
    """``args=None`` parses ``sys.argv`` (the tools rewrite it so that a bare CONFIG becomes ``--config``)."""
    return GhostCLI(
        args=None if args is None else list(args),
        run=False,
        auto_configure_optimizers=False,  # the tasks own optimizer/scheduler set-up (no decay on norms, warm-up)
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"callbacks": [TrainingCurves(), DrawPredictions()]},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": __doc__},
    )


def _flat(results: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in results:
        for key, value in row.items():
            name = key.split("/", 1)[1] if "/" in key else key
            out[name] = float(value)
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-column table of metric names and values."""
    width = max((len(k) for k in metrics), default=6)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 8}"]
    lines += [f"{k.ljust(width)}  {v:.4f}" if math.isfinite(v) else f"{k.ljust(width)}  {v}"
              for k, v in metrics.items()]
    return "\n".join(lines)


@rank_zero_only
def _report(metrics: dict[str, float], output: str | None, default: Path) -> None:
    print(format_metrics(metrics))
    for path in {Path(output)} if output else {default}:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n")
        rank_zero_info(f"metrics written to {path}")


def _finish(trainer: Any) -> None:
    """Under DDP: wait for every rank, then close the process group, so that no rank exits while another
    still talks to it (an abrupt peer exit can abort the survivor at interpreter shutdown)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        trainer.strategy.barrier("ghost_vision.finish")
        torch.distributed.destroy_process_group()


def train(args: Sequence[str] | None = None) -> dict[str, float]:
    """Fit, then validate the best checkpoint (``last`` when no metric is monitored); returns metrics."""
    cli = _make_cli(args)
    trainer, task, dm = cli.trainer, cli.model, cli.datamodule
    trainer.fit(task, datamodule=dm, ckpt_path=cli.config.get("ckpt_path"))
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    best = best or (ckpt.last_model_path if ckpt is not None and ckpt.last_model_path else None)
    results = trainer.validate(task, datamodule=dm, ckpt_path=best, verbose=False)
    metrics = _flat(results)
    if best:
        rank_zero_info(f"validated checkpoint {best}")
    _report(metrics, cli.config.get("output"), output_dir(trainer) / "metrics.json")
    _finish(trainer)
    return metrics


def evaluate(args: Sequence[str] | None = None) -> dict[str, float]:
    """Validate ``--ckpt_path`` on the config's validation split; print and write the metrics.

    The model is built without reading the backbone's pretrained weights (the checkpoint restores every
    weight), so a recipe naming ``ghostnet_100.in1k`` evaluates offline."""
    from ghost_vision.models import skip_weight_loading

    with skip_weight_loading():
        cli = _make_cli(args)
    ckpt_path = cli.config.get("ckpt_path")
    if not ckpt_path or ckpt_path == "last":
        raise SystemExit("tools/eval.py needs --ckpt_path PATH/TO/CHECKPOINT.ckpt")
    if not Path(ckpt_path).is_file():
        raise SystemExit(f"checkpoint not found: {ckpt_path}")
    results = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, verbose=False)
    metrics = _flat(results)
    _report(metrics, cli.config.get("output"), output_dir(cli.trainer) / "eval_metrics.json")
    _finish(cli.trainer)
    return metrics


def load_task(ckpt_path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a DetectionTask or SegmentationTask from a checkpoint, whichever it holds."""
    from ghost_vision.tasks import DetectionTask, SegmentationTask

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters", {})
    cls = SegmentationTask if "aux_weight" in hp else DetectionTask
    return cls.load_from_checkpoint(ckpt_path, map_location=map_location)
