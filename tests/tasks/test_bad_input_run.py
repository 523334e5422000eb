"""Bad input through whole runs: skipped files reported in the metrics JSON, a checkpoint save killed half-way
keeps the previous ``last.ckpt``, and a truncated or foreign ``--ckpt_path`` stops before any training."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO, subprocess_env, tool_cmd

from ghost_vision.cli import _make_cli, evaluate, train
from ghost_vision.data import DataError
from ghost_vision.tasks.checkpoint_io import AtomicCheckpointIO, CheckpointError, check_checkpoint


def _toy_config(tmp: Path, data_root: Path, *, skip: bool, batch_size: int = 4) -> Path:
    """A toy detector (``_toy.ToyDetector``) on a COCO folder: a run takes seconds."""
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "default_root_dir": str(tmp),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp), "name": "logs"}},
                    "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1},
        "checkpoint": {"dirpath": str(tmp / "ckpt")},
        "model": {"class_path": "ghost_vision.tasks.DetectionTask",
                  "init_args": {"model": {"class_path": "_toy.ToyDetector"}, "metric": "coco", "lr": 0.01}},
        "data": {"class_path": "ghost_vision.data.CocoDataModule",
                 "init_args": {"root": str(data_root), "batch_size": batch_size, "val_batch_size": 4, "num_workers": 0,
                               "pin_memory": False, "train_transform": None, "skip_corrupt": skip}},
    }
    path = tmp / f"toy_{skip}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def test_skipped_files_logged_and_written_to_metrics_json(raccoon_coco, tmp_path, caplog):
    root = raccoon_coco["root"]
    train_bad = sorted((root / "train2017").glob("*.jpg"))[5]
    train_bad.write_bytes(train_bad.read_bytes()[:3000])
    cfg = _toy_config(tmp_path / "run", root, skip=True, batch_size=1)  # one training batch is nothing but None
    with caplog.at_level(logging.WARNING, logger="ghost_vision"):
        metrics = _quiet(train, ["--config", str(cfg), "--output", str(tmp_path / "train.json")])
    bad_val = [str(root / "val2017" / f"{n}.jpg") for n in raccoon_coco["bad"]]
    written = json.loads((tmp_path / "train.json").read_text())
    assert metrics["skipped_files"] == 2.0 and written["skipped_files"] == 2.0
    assert written["skipped_file_names"] == bad_val
    lines = [r.getMessage() for r in caplog.records if "unreadable file(s) skipped" in r.getMessage()]
    assert any(line.startswith(f"train: 1 unreadable file(s) skipped so far (skip_corrupt=True): {train_bad}")
               for line in lines), lines
    assert any(line.startswith("val: 2 unreadable file(s) skipped") and all(b in line for b in bad_val)
               for line in lines), lines

    out = tmp_path / "eval.json"
    eval_metrics = _quiet(evaluate, ["--config", str(cfg), "--ckpt_path", str(tmp_path / "run" / "ckpt" / "last.ckpt"),
                                     "--output", str(out)])
    assert json.loads(out.read_text()) == {**eval_metrics, "skipped_file_names": bad_val}
    assert eval_metrics == metrics  # the run's final validation and the evaluation of its checkpoint agree

    # without skip_corrupt the first unreadable file stops the evaluation, named
    strict = _toy_config(tmp_path / "strict", root, skip=False)
    with pytest.raises(DataError, match=rf"cannot read image .*{raccoon_coco['bad'][0]}\.jpg"):
        _quiet(evaluate, ["--config", str(strict), "--ckpt_path", str(tmp_path / "run" / "ckpt" / "last.ckpt")])


def test_cli_trainer_writes_checkpoints_atomically(raccoon_coco, tmp_path):
    cli = _quiet(_make_cli, ["--config", str(_toy_config(tmp_path, raccoon_coco["root"], skip=True))])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    # the saved config.yaml names it (a class path, not an unserialisable instance with a warning on every run)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saved = cli.parser.dump(cli.config, skip_none=False)
    assert "class_path: ghost_vision.tasks.checkpoint_io.AtomicCheckpointIO" in saved
    # a config.yaml of the 0.1 trainers (the instance written as a placeholder string) re-creates its run again
    old = tmp_path / "old_config.yaml"
    old.write_text(saved.replace("  - class_path: ghost_vision.tasks.checkpoint_io.AtomicCheckpointIO", "  - Unable to "
                                 "serialize instance <ghost_vision.tasks.checkpoint_io.AtomicCheckpointIO object at 0x7f24>"))
    assert "Unable to serialize" in old.read_text()
    again = _quiet(_make_cli, ["--config", str(old)])
    assert isinstance(again.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert again.parser.dump(again.config, skip_none=False) == saved  # the same run, nothing else changed


def _lightning_ckpt(path: Path, step: int, size: int = 1000) -> dict:
    ckpt = {"state_dict": {"w": torch.full((size,), float(step))}, "pytorch-lightning_version": "2", "global_step": step}
    AtomicCheckpointIO().save_checkpoint(ckpt, path)
    return ckpt


@pytest.mark.parametrize("tool", ["train", "eval"])
def test_truncated_or_foreign_ckpt_path_fails_before_any_training(raccoon_coco, tmp_path, tool):
    good = tmp_path / "good.ckpt"
    _lightning_ckpt(good, 1)
    assert check_checkpoint(good) == good
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(3)}, foreign)  # a plain state_dict
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    cases = {
        truncated: r"is not a PyTorch checkpoint \(not a zip archive: truncated, corrupt or another format\)",
        foreign: r"is not a Lightning checkpoint \(found \['conv.weight'\]\); to start from plain weights use "
                 r"--model.init_args.init_from",
        text: r"is not a PyTorch checkpoint",
        tmp_path / "absent.ckpt": r"checkpoint not found",
    }
    fn = train if tool == "train" else evaluate
    for i, (path, message) in enumerate(cases.items()):
        run = tmp_path / f"run{i}"
        cfg = _toy_config(run, raccoon_coco["root"], skip=True)
        with pytest.raises(SystemExit, match=rf"--ckpt_path: .*{message}") as exc:
            _quiet(fn, ["--config", str(cfg), "--ckpt_path", str(path)])
        assert str(path) in str(exc.value)
        assert not (run / "ckpt").exists() and not (run / "logs").exists()  # nothing ran
    if tool == "train":  # --ckpt_path last: the run's own last.ckpt, truncated
        run = tmp_path / "resume"
        cfg = _toy_config(run, raccoon_coco["root"], skip=True)
        (run / "ckpt").mkdir()
        (run / "ckpt" / "last.ckpt").write_bytes(truncated.read_bytes())
        with pytest.raises(SystemExit, match=rf"--ckpt_path: {run / 'ckpt' / 'last.ckpt'} is not a PyTorch checkpoint"):
            _quiet(train, ["--config", str(cfg), "--ckpt_path", "last"])
        assert not (run / "logs").exists()


def test_ckpt_check_on_a_real_zip_of_something_else(tmp_path):
    import zipfile

    path = tmp_path / "photos.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {path}"):
        check_checkpoint(path)


class _SlowFile:
    """A file object that stalls once ``limit`` bytes are written (a slow disk), telling ``queue`` so."""

    def __init__(self, f, queue, limit: int) -> None:
        self.f, self.queue, self.limit, self.n = f, queue, limit, 0

    def write(self, b) -> int:
        self.n += self.f.write(b)
        if self.n > self.limit:
            self.f.flush()
            self.queue.put("MID-WRITE")
            time.sleep(600)
        return len(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def _big_ckpt(step: int) -> dict:
    return {"state_dict": {"w": torch.full((2_000_000,), float(step))}, "pytorch-lightning_version": "2",
            "global_step": step}


def _save_twice(mode: str, target: Path, queue) -> None:
    """Child process: save step 1 whole, then stall half-way through saving step 2."""
    import ghost_vision.tasks.checkpoint_io as cio

    io = AtomicCheckpointIO()
    io.save_checkpoint(_big_ckpt(1), target)  # the previous last.ckpt
    queue.put("SAVED 1")
    if mode == "atomic":
        real_open = open
        cio.open = lambda p, m="r", *a, **k: _SlowFile(real_open(p, m, *a, **k), queue, 2_000_000)
        io.save_checkpoint(_big_ckpt(2), target)
    else:  # the contrast: what an in-place write does
        with _SlowFile(open(target, "wb"), queue, 2_000_000) as f:
            torch.save(_big_ckpt(2), f)


@pytest.mark.parametrize("mode", ["atomic", "in_place"])
def test_kill_during_checkpoint_save(tmp_path, mode):
    """SIGKILL while the second checkpoint is half-written: with AtomicCheckpointIO the previous last.ckpt
    is intact and loads; an in-place write (the contrast) leaves a truncated file, which the --ckpt_path check
    refuses, naming it. (A forked child: this process has torch and Lightning imported already.)"""
    import multiprocessing as mp

    target = tmp_path / "ckpt" / "last.ckpt"
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_save_twice, args=(mode, target, queue), daemon=True)
    child.start()
    try:
        messages = [queue.get(timeout=120), queue.get(timeout=120)]
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=60)
    finally:
        if child.is_alive():
            child.kill()
    assert messages == ["SAVED 1", "MID-WRITE"]
    assert child.exitcode == -signal.SIGKILL
    if mode == "atomic":
        temps = list(target.parent.glob(".last.ckpt.tmp-*"))
        assert len(temps) == 1 and temps[0].stat().st_size > 2_000_000  # killed mid-write, indeed
        check_checkpoint(target)
        ckpt = torch.load(target, map_location="cpu", weights_only=False)
        assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.full((2_000_000,), 1.0))
    else:
        with pytest.raises(CheckpointError, match=rf"--ckpt_path: .*{target}"):
            check_checkpoint(target)


@pytest.mark.slow
def test_ddp_skip_report_and_metrics_match_one_process(raccoon_coco, tmp_path):
    """2 CPU processes (gloo) evaluate with skip_corrupt: same metrics and skipped names as 1 process."""
    cfg = _toy_config(tmp_path / "fit", raccoon_coco["root"], skip=True)
    env = subprocess_env()
    subprocess.run(tool_cmd("train", str(cfg), "--trainer.limit_train_batches", "1"), cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)
    ckpt = tmp_path / "fit" / "ckpt" / "last.ckpt"
    outs = {}
    for name, extra in (("one", []), ("two", ["--trainer.strategy", "ddp", "--trainer.devices", "2"])):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run(tool_cmd("eval", str(cfg), "--ckpt_path", str(ckpt), "--output", str(out), *extra),
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        outs[name] = json.loads(out.read_text())
    assert outs["one"] == outs["two"]
    assert outs["one"]["skipped_file_names"] == [str(raccoon_coco["root"] / "val2017" / f"{n}.jpg")
                                                 for n in raccoon_coco["bad"]]
    assert os.path.isfile(ckpt)


def _toy_fit(ckpt_dir: Path | None, queue=None, ckpt_path: str | None = None):
    """4 steps of a toy detector with the CLI's checkpoint plugin; with ``queue``, writing last.ckpt stalls
    half-way from step 3 on (a slow disk) and says so."""
    import lightning as L
    from _toy import toy_detection_batches
    from lightning.pytorch.callbacks import ModelCheckpoint

    import ghost_vision.tasks.checkpoint_io as cio
    from ghost_vision.tasks import DetectionTask

    class SlowLastSave(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 2:
                real_open = open
                cio.open = lambda p, m="r", *a, **k: (
                    _SlowFile(real_open(p, m, *a, **k), queue, 1000) if "last" in str(p) else real_open(p, m, *a, **k))

    callbacks = [] if ckpt_dir is None else [
        ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=-1), SlowLastSave()]
    task = DetectionTask({"class_path": "_toy.ToyDetector"}, num_classes=5, lr=0.01, metric="voc07")
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=0,
                        enable_model_summary=False, enable_checkpointing=ckpt_dir is not None,
                        plugins=[AtomicCheckpointIO()], callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, toy_detection_batches(8, 2), ckpt_path=ckpt_path)
    return trainer


def test_fit_killed_while_saving_last_ckpt_resumes_from_the_previous_one(tmp_path):
    """A real Lightning fit with the CLI's checkpoint plugin, SIGKILLed while step 3's last.ckpt is half-written:
    last.ckpt still holds step 2, whole, and a new fit resumes from it."""
    import multiprocessing as mp

    ckpt_dir = tmp_path / "ckpt"
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_toy_fit, args=(ckpt_dir, queue), daemon=True)
    child.start()
    try:
        assert queue.get(timeout=300) == "MID-WRITE"
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=60)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == -signal.SIGKILL
    assert (ckpt_dir / "epoch=0-step=3.ckpt").is_file() and list(ckpt_dir.glob(".last.ckpt.tmp-*"))
    last = check_checkpoint(ckpt_dir / "last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2
    assert _toy_fit(None, ckpt_path=str(last)).global_step == 4
