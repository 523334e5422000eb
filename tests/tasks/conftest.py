"""Helpers for the task/CLI tests: tiny-run overrides for the recipes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

# Per recipe: overrides that make a run take seconds (narrow backbone, small crops/inputs, tiny batches).
TINY = {
    "ssdlite_ghost_shapes.yaml": [
        "--model.init_args.model_kwargs", "{width: 0.5}", "--data.init_args.batch_size", "4",
        "--data.init_args.val_batch_size", "1",
    ],
    "ssdlite_ghostv3_shapes.yaml": [
        "--model.init_args.model_kwargs", "{backbone: ghostnetv3_050}", "--data.init_args.batch_size", "4",
        "--data.init_args.val_batch_size", "1",
    ],
    "nanodet_ghost_shapes.yaml": [
        "--model.init_args.model_kwargs", "{width: 0.5, size: 160, aux_channels: 32, aux_convs: 1, detach_epoch: 1}",
        "--data.init_args.batch_size", "4", "--data.init_args.val_batch_size", "1",
    ],
    "fasterrcnn_ghost_fpn_shapes.yaml": [
        "--model.init_args.model_kwargs", "{width: 0.5, min_size: 128, max_size: 160}",
        "--data.init_args.batch_size", "2", "--data.init_args.val_batch_size", "1",
    ],
    "maskrcnn_ghost_fpn_shapes.yaml": [
        "--model.init_args.model_kwargs", "{width: 0.5, min_size: 128, max_size: 160, box_detections_per_img: 20}",
        "--data.init_args.batch_size", "2", "--data.init_args.val_batch_size", "1",
    ],
    "deeplabv3_ghost_shapes.yaml": [
        "--model.init_args.model_kwargs", "{output_stride: 16, decoder: true, width: 0.5}",
        "--data.init_args.batch_size", "2", "--data.init_args.crop_size", "64",
    ],
    "deeplabv3_ghost_folder.yaml": [
        "--model.init_args.model_kwargs", "{output_stride: 16, decoder: true, width: 0.5}",
        "--data.init_args.batch_size", "2", "--data.init_args.crop_size", "64",
    ],
}


def tiny_args(config: str, tmp: Path, *, data_root: Path | None = None, num_train: int = 8, num_val: int = 4,
              epochs: int = 1, train_batches: int | None = 2, val_batches: int | None = 2) -> list[str]:
    """``tools/train.py`` arguments (after the config) for a seconds-long run writing only under ``tmp``."""
    args = [
        "--trainer.max_epochs", str(epochs),
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(tmp),
        "--trainer.logger.init_args.save_dir", str(tmp),
        "--checkpoint.dirpath", str(tmp / "ckpt"),
        "--data.init_args.root", str(data_root or tmp / "data"),
        "--data.init_args.num_train", str(num_train),
        "--data.init_args.num_val", str(num_val),
        "--data.init_args.num_workers", "0",
        *TINY[config],
    ]
    if train_batches is not None:
        args += ["--trainer.limit_train_batches", str(train_batches)]
    if val_batches is not None:
        args += ["--trainer.limit_val_batches", str(val_batches)]
    return args


def subprocess_env() -> dict[str, str]:
    """Environment for ``tools/*.py`` subprocesses: quiet, 1 thread per process, ``_toy`` importable."""
    env = dict(os.environ)
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(REPO), env.get("PYTHONPATH", "")]))
    return env


def tool_cmd(tool: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / f"{tool}.py"), *args]


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every tasks test runs with one intra-op thread (see tests/conftest.py)."""
