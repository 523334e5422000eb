"""Training and evaluation: LightningCLI with the DataModule -> model links and the recipes' defaults.

``ghost-vision train`` / ``ghost-vision eval`` (and ``tools/train.py`` / ``tools/eval.py``) call :func:`train`
and :func:`evaluate`. The first argument is a recipe: a packaged one by name (``ssdlite_ghost_shapes``, see
``ghost-vision configs``) or the path of a YAML file. Every ``--trainer.*``, ``--model.*``, ``--data.*``
override of LightningCLI works, and config errors get jsonargparse's messages.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from ghost_vision.recipes import RECIPES_DIR, recipe_path
from ghost_vision.tasks import load_task  # also importable from here (its historical place)
from ghost_vision.tasks.callbacks import DrawPredictions, SkippedFiles, TrainingCurves, output_dir
from ghost_vision.tasks.checkpoint_io import CheckpointError, check_checkpoint

__all__ = ["GhostCLI", "train", "evaluate", "format_metrics", "side_by_side", "config_args", "load_task"]

# train()/evaluate() hand LightningCLI the arguments explicitly (the recipe name resolved) while sys.argv keeps
# the command line as typed, for Lightning's DDP launcher; Lightning would warn about having both.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")


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


def config_args(args: Sequence[str]) -> list[str]:
    """LightningCLI arguments from ``[CONFIG, overrides...]``: a leading bare CONFIG becomes ``--config``, and
    a recipe name (here or after ``--config``) becomes the packaged recipe's path.

    ``sys.argv`` itself is left as it is: under DDP Lightning re-launches the same command line for the
    other ranks (``python -m ghost_vision train NAME ...`` or ``ghost-vision train NAME ...``), and each rank
    resolves it again in the same way.

    Example:
        >>> config_args(["ssdlite_ghost_shapes", "--trainer.max_epochs", "3"])[:2] == [
        ...     "--config", str(RECIPES_DIR / "ssdlite_ghost_shapes.yaml")]
        True
    """
    def named(value: str) -> str:
        packaged = RECIPES_DIR / f"{value}.yaml"
        return str(packaged) if not Path(value).is_file() and packaged.is_file() else value

    args = list(args)
    if args and not args[0].startswith("-"):
        args = ["--config", str(recipe_path(args[0])), *args[1:]]
    for i, arg in enumerate(args):
        if i and args[i - 1] == "--config":
            args[i] = _repaired(named(arg))
        elif arg.startswith("--config="):
            args[i] = "--config=" + _repaired(named(arg.removeprefix("--config=")))
    return args


_ATOMIC_IO = "ghost_vision.tasks.checkpoint_io.AtomicCheckpointIO"


def _repaired(config: str) -> str:
    """``config`` itself, or, for a ``config.yaml`` saved by ghost-vision 0.1's trainers, its repaired text
    (jsonargparse takes a YAML string for ``--config`` as well as a path). Those trainers held the checkpoint
    plugin as an instance, which jsonargparse wrote as the string "Unable to serialize instance
    <...AtomicCheckpointIO object at 0x...>", and such a file no longer parsed (``--config run/config.yaml``
    failed on ``trainer.plugins``). The placeholder becomes the class path it stood for; nothing else changes."""
    import yaml

    path = Path(config)
    try:
        text = path.read_text(encoding="utf-8") if path.suffix in (".yaml", ".yml") and path.is_file() else ""
        cfg = yaml.safe_load(text) if "Unable to serialize instance" in text else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return config  # jsonargparse reports an unreadable file
    plugins = (cfg.get("trainer") or {}).get("plugins") if isinstance(cfg, dict) else None
    if not isinstance(plugins, list):
        return config
    stale = f"Unable to serialize instance <{_ATOMIC_IO} object"
    fixed = [{"class_path": _ATOMIC_IO} if isinstance(p, str) and p.startswith(stale) else p for p in plugins]
    if fixed == plugins:
        return config
    cfg["trainer"]["plugins"] = fixed
    return yaml.safe_dump(cfg, sort_keys=False)


def _make_cli(args: Sequence[str] | None, prog: str | None = None) -> GhostCLI:
    """``args=None`` parses ``sys.argv[1:]``."""
    parser_kwargs: dict[str, Any] = {"description": __doc__}
    if prog:
        parser_kwargs["prog"] = prog
    return GhostCLI(
        args=config_args(sys.argv[1:] if args is None else args),
        run=False,
        auto_configure_optimizers=False,  # the tasks own optimizer/scheduler set-up (no decay on norms, warm-up)
        subclass_mode_model=True,
        subclass_mode_data=True,
        # atomic checkpoint writes: a job killed while saving keeps the previous last.ckpt
        trainer_defaults={"callbacks": [TrainingCurves(), DrawPredictions(), SkippedFiles()],
                          # as a class path, not an instance: jsonargparse can then write it into config.yaml
                          "plugins": [{"class_path": _ATOMIC_IO}]},
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
    )


def _flat(results: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in results:
        for key, value in row.items():
            name = key.split("/", 1)[1] if "/" in key else key
            out[name] = float(value)
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-column table of metric names and values.

    Example:
        >>> print(format_metrics({"map": 0.5, "map_50": 0.75}))
        metric  value
        ------  --------
        map     0.5000
        map_50  0.7500
    """
    width = max((len(k) for k in metrics), default=6)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 8}"]
    lines += [f"{k.ljust(width)}  {v:.4f}" if math.isfinite(v) else f"{k.ljust(width)}  {v}"
              for k, v in metrics.items()]
    return "\n".join(lines)


def side_by_side(fp32: dict[str, float], int8: dict[str, float]) -> str:
    """A table of fp32 and int8 metrics and their difference.

    Example:
        >>> print(side_by_side({"map": 0.5}, {"map": 0.49}))
        metric      fp32      int8   int8-fp32
        ------  --------  --------  ----------
        map       0.5000    0.4900     -0.0100
    """
    keys = [k for k in fp32 if k in int8]
    width = max([len(k) for k in keys] + [6])
    lines = [f"{'metric'.ljust(width)}      fp32      int8   int8-fp32", f"{'-' * width}  --------  --------  ----------"]
    lines += [f"{k.ljust(width)}  {fp32[k]:8.4f}  {int8[k]:8.4f}  {int8[k] - fp32[k]:+10.4f}" for k in keys]
    return "\n".join(lines)


@rank_zero_only
def _report(metrics: dict[str, float], output: str | None, default: Path, extra: dict[str, Any] | None = None) -> None:
    print(format_metrics(metrics))
    for path in {Path(output)} if output else {default}:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**metrics, **(extra or {})}, indent=2) + "\n")
        rank_zero_info(f"metrics written to {path}")


def _checked_ckpt_path(cli: GhostCLI) -> str | None:
    """``--ckpt_path``, verified before any work: a missing, truncated or foreign file stops here, named
    (``last`` is checked once it names a file of the run's checkpoint folder)."""
    ckpt_path = cli.config.get("ckpt_path")
    target = ckpt_path
    if ckpt_path == "last":
        ckpt = cli.trainer.checkpoint_callback
        dirpath = getattr(ckpt, "dirpath", None)
        target = Path(dirpath) / f"{getattr(ckpt, 'CHECKPOINT_NAME_LAST', 'last')}.ckpt" if dirpath else None
        if target is None or not target.is_file():
            return ckpt_path
    if target:
        try:
            check_checkpoint(target)
        except CheckpointError as e:
            raise SystemExit(str(e)) from None
    return ckpt_path


def _skipped(trainer: Any) -> dict[str, Any]:
    """The files skipped as unreadable during the last validation, for the metrics JSON (when skipping)."""
    cb = next((c for c in trainer.callbacks if isinstance(c, SkippedFiles)), None)
    names = None if cb is None else cb.names.get("val")
    return {} if names is None else {"skipped_file_names": names}


def _finish(trainer: Any) -> None:
    """Under DDP: wait for every rank, then close the process group, so that no rank exits while another
    still talks to it (an abrupt peer exit can abort the survivor at interpreter shutdown)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        trainer.strategy.barrier("ghost_vision.finish")
        torch.distributed.destroy_process_group()


def train(args: Sequence[str] | None = None, *, prog: str | None = None) -> dict[str, float]:
    """Fit, then validate the best checkpoint (``last`` when no metric is monitored); returns metrics.

    ``args``: ``[CONFIG, overrides...]`` as on the command line (``None``: ``sys.argv[1:]``).

    Example:
        >>> train(["ssdlite_ghost_shapes", "--trainer.max_epochs", "1"])  # doctest: +SKIP
        {'map': ..., 'map_50': ..., ...}
    """
    cli = _make_cli(args, prog)
    trainer, task, dm = cli.trainer, cli.model, cli.datamodule
    trainer.fit(task, datamodule=dm, ckpt_path=_checked_ckpt_path(cli))
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    best = best or (ckpt.last_model_path if ckpt is not None and ckpt.last_model_path else None)
    results = trainer.validate(task, datamodule=dm, ckpt_path=best, verbose=False)
    metrics = _flat(results)
    if best:
        rank_zero_info(f"validated checkpoint {best}")
    _report(metrics, cli.config.get("output"), output_dir(trainer) / "metrics.json", _skipped(trainer))
    _finish(trainer)
    return metrics


def evaluate(args: Sequence[str] | None = None, *, prog: str | None = None) -> dict[str, float]:
    """Validate ``--ckpt_path`` on the config's validation split; print and write the metrics.

    ``args``: ``[CONFIG, --ckpt_path PATH, overrides...]`` as on the command line (``None``: ``sys.argv[1:]``).
    The model is built without reading the backbone's pretrained weights (the checkpoint restores every
    weight), so a recipe naming ``ghostnet_100.in1k`` evaluates offline. ``--int8`` also quantizes the model
    (:func:`ghost_vision.deploy.quantize.quantize`, 200 validation images) and prints fp32 and int8 metrics
    side by side.
    """
    from ghost_vision.models import skip_weight_loading

    args = list(sys.argv[1:] if args is None else args)
    int8 = "--int8" in args
    args = [a for a in args if a != "--int8"]
    with skip_weight_loading():
        cli = _make_cli(args, prog)
    ckpt_path = cli.config.get("ckpt_path")
    if not ckpt_path or ckpt_path == "last":
        raise SystemExit("eval needs --ckpt_path PATH/TO/CHECKPOINT.ckpt")
    _checked_ckpt_path(cli)
    results = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, verbose=False)
    metrics = _flat(results)
    if int8:
        return _evaluate_int8(cli, metrics)
    _report(metrics, cli.config.get("output"), output_dir(cli.trainer) / "eval_metrics.json", _skipped(cli.trainer))
    _finish(cli.trainer)
    return metrics


def _evaluate_int8(cli: GhostCLI, fp32: dict[str, float]) -> dict[str, float]:
    """``eval --int8``: quantize the restored model (calibrated on the DataModule's validation images, no labels
    used), validate again, print fp32 and int8 side by side; the JSON holds both (``int8/...`` keys)."""
    from ghost_vision.deploy.quantize import quantize

    task = cli.model.eval()
    task.model = quantize(task.model, cli.datamodule, num_images=200)
    int8 = _flat(cli.trainer.validate(task, datamodule=cli.datamodule, verbose=False))
    print(side_by_side(fp32, int8))
    out = {**fp32, **{f"int8/{k}": v for k, v in int8.items()}}
    path = Path(cli.config.get("output") or output_dir(cli.trainer) / "eval_metrics_int8.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**out, "int8_settings": task.model.meta["settings"]}, indent=2) + "\n")
    _finish(cli.trainer)
    return out
