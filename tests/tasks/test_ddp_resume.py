"""End-to-end reliability runs through real ``tools/*.py`` subprocesses (slow: about a minute each).

* DDP: 2 CPU processes (gloo) fit + validate; evaluating one checkpoint with 1 and with 2 processes gives
  the same JSON, bit for bit, with an odd number of validation images (``DistributedSampler`` pads).
* Resume: a run killed (``os._exit``) mid-epoch resumes from ``last.ckpt`` with ``--ckpt_path last`` and
  ends with exactly the weights and metrics of an uninterrupted run (same seed, CPU, ``num_workers=0``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, REPO, subprocess_env, tiny_args, tool_cmd

pytestmark = pytest.mark.slow


def run(cmd: list[str], *, expect: int = 0, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


def _command(entry: str, command: str, config: str, *args: str) -> list[str]:
    """``python tools/train.py configs/X.yaml ...`` or ``python -m ghost_vision train X ...`` (recipe by name):
    Lightning re-launches either command line for rank 1."""
    if entry == "tools":
        return tool_cmd(command, str(CONFIGS / config), *args)
    return [sys.executable, "-m", "ghost_vision", command, config.removesuffix(".yaml"), *args]


@pytest.mark.parametrize(("config", "entry"), [("ssdlite_ghost_shapes.yaml", "tools"),
                                               ("deeplabv3_ghost_shapes.yaml", "module")])
def test_ddp_two_processes_match_one(config, entry, tmp_path):
    data = tmp_path / "data"
    # 2-process fit + validate of the best checkpoint; 5 val images: rank 1 gets a padded duplicate
    args = tiny_args(config, tmp_path / "ddp", data_root=data, num_val=5, val_batches=None)
    run(_command(entry, "train", config, *args, *DDP, "--output", str(tmp_path / "ddp_train.json")))
    best = sorted((tmp_path / "ddp" / "ckpt").glob("best-*.ckpt"))
    assert len(best) == 1 and (tmp_path / "ddp" / "ckpt" / "last.ckpt").is_file()
    # the same checkpoint evaluated by 1 and by 2 processes
    eval_args = tiny_args(config, tmp_path / "eval", data_root=data, num_val=5, val_batches=None)
    run(_command(entry, "eval", config, *eval_args, "--ckpt_path", str(best[0]), "--output", str(tmp_path / "one.json")))
    run(_command(entry, "eval", config, *eval_args, *DDP, "--ckpt_path", str(best[0]),
                 "--output", str(tmp_path / "two.json")))
    one, two, trained = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two", "ddp_train"))
    assert one == two == trained
    assert ("map" in one) or ("miou" in one)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path):
    config = "deeplabv3_ghost_shapes.yaml"  # random scale/crop/flip augmentations, cheapest model
    cfg = str(CONFIGS / config)
    data = tmp_path / "data"

    def args(name: str) -> list[str]:
        # 8 images, batch 2: 4 steps per epoch, 2 epochs; checkpoints every 2 steps (2 and 6 are mid-epoch)
        return [*tiny_args(config, tmp_path / name, data_root=data, epochs=2, train_batches=None),
                "--checkpoint.every_n_train_steps", "2", "--output", str(tmp_path / f"{name}.json")]

    run(tool_cmd("train", cfg, *args("straight")))
    # killed when step 7 starts (epoch 1, batch 2 of 4): last.ckpt holds step 6, in the middle of epoch 1
    killer = json.dumps({"class_path": "_toy.KillAt", "init_args": {"step": 7}})
    run(tool_cmd("train", cfg, *args("resumed"), f"--trainer.callbacks+={killer}"), expect=17)
    last = tmp_path / "resumed" / "ckpt" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6 and ckpt["epoch"] == 1
    assert not (tmp_path / "resumed.json").exists()
    # resume: completes the interrupted epoch from its 3rd batch, then validates
    run(tool_cmd("train", cfg, *args("resumed"), "--ckpt_path", "last"))
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 8

    straight, resumed = _state(tmp_path / "straight" / "ckpt" / "last.ckpt"), _state(last)
    assert straight.keys() == resumed.keys()
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not different, different[:10]
    m_straight = json.loads((tmp_path / "straight.json").read_text())
    m_resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert m_straight == m_resumed
