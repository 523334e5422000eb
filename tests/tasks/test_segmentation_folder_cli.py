"""The recipe ``deeplabv3_ghost_folder`` through the command line: the override lines of docs/data.md for your own
folders (``SegmentationFolderDataModule``), ``tools/eval.py`` on your split, and the synthetic recipe itself."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, tiny_args
from test_cli import SEG_KEYS, run_tool, train_tiny

from ghost_vision.cli import load_task
from ghost_vision.data import write_synthetic_folder
from ghost_vision.tasks import SegmentationTask

CONFIG = "deeplabv3_ghost_folder.yaml"
SYNTHETIC_ONLY = ("--data.init_args.root", "--data.init_args.num_train", "--data.init_args.num_val")


def _without(args: list[str], keys: tuple[str, ...]) -> list[str]:
    """``args`` minus the ``--key value`` pairs named in ``keys``."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in keys:
            skip = True
        else:
            out.append(a)
    return out


@pytest.mark.slow  # ~30 s: two CLI runs
def test_own_folders_with_the_readme_overrides_train_and_evaluate(tmp_path):
    data = write_synthetic_folder(tmp_path / "mine", num_train=6, num_val=3, seed=1)  # stands in for your data
    (data / "val.txt").write_text("val_00002\nval_00000\n")
    own = [
        "--data.class_path", "ghost_vision.data.SegmentationFolderDataModule",
        "--data.init_args.root", str(data),
        "--data.init_args.classes", "[bg, circle, triangle, rectangle, star]",
        "--data.init_args.val_split_file", "val.txt",
        "--data.init_args.ignore_index", "255",
    ]
    base = _without(tiny_args(CONFIG, tmp_path / "run"), SYNTHETIC_ONLY)
    out = tmp_path / "train.json"
    run_tool("train", str(CONFIGS / CONFIG), *base, *own, "--output", str(out))
    metrics = json.loads(out.read_text())
    assert SEG_KEYS <= set(metrics) and 0.0 <= metrics["miou"] <= 1.0
    best = sorted((tmp_path / "run" / "ckpt").glob("best-*.ckpt"))
    task = load_task(best[0])
    assert type(task) is SegmentationTask and task.hparams.num_classes == 5
    assert list(task.hparams.class_names) == ["bg", "circle", "triangle", "rectangle", "star"]
    # evaluation on your split: the numbers of the run's final validation of that checkpoint
    evaluated = run_tool("eval", str(CONFIGS / CONFIG), *base, *own, "--ckpt_path", str(best[0]),
                         "--output", str(tmp_path / "eval.json"))
    assert evaluated == metrics


def test_synthetic_folder_recipe_fits(tmp_path_factory):
    run = train_tiny(CONFIG, tmp_path_factory.mktemp("folder"))
    assert SEG_KEYS <= set(run["metrics"]) and 0.0 <= run["metrics"]["miou"] <= 1.0
    assert sorted(p.name for p in (run["tmp"] / "data").iterdir()) == [".complete.json", "images", "masks"]
    hp = torch.load(run["last"], map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hp["num_classes"] == 5 and list(hp["class_names"]) == ["background", "circle", "triangle", "rectangle",
                                                                  "star"]
