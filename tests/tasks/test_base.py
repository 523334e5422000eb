"""BaseTask and load_task: shared hyperparameters, the task class recorded in checkpoints, loading
checkpoints with it (and older ones without it), argument checks. Tiny networks: seconds."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from _toy import toy_detection_batches
from torch import nn

from ghost_vision.tasks import BaseTask, DetectionTask, SegmentationTask, load_task
from ghost_vision.tasks.base import TASK_KEY

TOY = "_toy.ToyDetector"


class ToySeg(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


class MyDetectionTask(DetectionTask):
    """A user's subclass with an extra argument: its class is what the checkpoint records."""

    def __init__(self, *args, extra: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)


def _trainer(tmp_path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     default_root_dir=tmp_path)


def _save(task: L.LightningModule, path, loader) -> None:
    trainer = _trainer(path.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, train_dataloaders=loader)
    trainer.save_checkpoint(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("base_ckpts")
    det, seg, sub = root / "det.ckpt", root / "seg.ckpt", root / "sub.ckpt"
    _save(DetectionTask({"class_path": TOY}, num_classes=4, lr=0.01), det, toy_detection_batches(4, num_classes=4))
    seg_loader = torch.utils.data.DataLoader(
        [(torch.rand(3, 8, 8), torch.randint(0, 3, (8, 8))) for _ in range(4)], batch_size=2)
    _save(SegmentationTask({"class_path": f"{__name__}.ToySeg"}, num_classes=3, lr=0.01), seg, seg_loader)
    _save(MyDetectionTask({"class_path": TOY}, num_classes=4, extra=5), sub, toy_detection_batches(4, num_classes=4))
    return {"det": det, "seg": seg, "sub": sub}


def test_checkpoint_records_the_task_class_and_load_task_uses_it(checkpoints):
    expected = {"det": "ghost_vision.tasks.detection.DetectionTask",
                "seg": "ghost_vision.tasks.segmentation.SegmentationTask",
                "sub": f"{__name__}.MyDetectionTask"}
    for name, path in checkpoints.items():
        assert torch.load(path, weights_only=False)[TASK_KEY] == expected[name]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a recorded class: no guessing, no warning
            task = load_task(path)
        assert f"{type(task).__module__}.{type(task).__qualname__}" == expected[name]
    assert load_task(checkpoints["sub"]).hparams.extra == 5
    # the historical import path still works
    from ghost_vision.cli import load_task as cli_load_task

    assert cli_load_task is load_task


def test_older_checkpoint_without_the_class_is_inferred_with_a_warning(checkpoints, tmp_path):
    for name, cls in (("det", DetectionTask), ("seg", SegmentationTask)):
        ckpt = torch.load(checkpoints[name], weights_only=False)
        del ckpt[TASK_KEY]
        old = tmp_path / f"old_{name}.ckpt"
        torch.save(ckpt, old)
        with pytest.warns(UserWarning, match=f"written before checkpoints recorded their task class; loading it "
                                             f"as {cls.__name__}"):
            assert type(load_task(old)) is cls


def test_load_task_errors_name_the_file(checkpoints, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.ckpt"):
        load_task(tmp_path / "nope.ckpt")
    bare = tmp_path / "bare.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bare)
    with pytest.raises(ValueError, match=r"bare.pth is not a Lightning checkpoint of a ghost_vision task"):
        load_task(bare)
    ckpt = torch.load(checkpoints["det"], weights_only=False)
    ckpt[TASK_KEY] = "torch.nn.Linear"
    wrong = tmp_path / "wrong.ckpt"
    torch.save(ckpt, wrong)
    with pytest.raises(ValueError, match="'torch.nn.Linear' is not a ghost_vision task"):
        load_task(wrong)
    ckpt[TASK_KEY] = "somewhere.Gone"
    torch.save(ckpt, wrong)
    with pytest.raises(ValueError, match="cannot import the checkpoint's task class 'somewhere.Gone'"):
        load_task(wrong)
    del ckpt[TASK_KEY]
    ckpt["hyper_parameters"]["mystery"] = 1  # fits neither built-in task
    torch.save(ckpt, wrong)
    with pytest.raises(ValueError, match=r"wrong.ckpt: the checkpoint does not record its task class .* fit no "
                                         r"built-in task; load it with YourTask.load_from_checkpoint"):
        load_task(wrong)


def test_base_task_checks_the_shared_arguments():
    assert issubclass(DetectionTask, BaseTask) and issubclass(SegmentationTask, BaseTask)
    with pytest.raises(ValueError, match="optimizer must be one of 'sgd', 'adamw'; got 'adam'"):
        DetectionTask({"class_path": TOY}, num_classes=3, optimizer="adam")
    with pytest.raises(ValueError, match="scheduler must be one of 'cosine', 'step', 'poly', 'constant'; got 'x'"):
        SegmentationTask({"class_path": f"{__name__}.ToySeg"}, num_classes=3, scheduler="x")
    task = SegmentationTask({"class_path": f"{__name__}.ToySeg"}, num_classes=3, lr=0.5)
    assert (task.hparams.lr, task.hparams.aux_weight, task.hparams.scheduler) == (0.5, 0.4, "poly")


class _Stop(Exception):
    pass


class _StopAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise _Stop


def test_mid_epoch_resume_in_process_matches_an_uninterrupted_run(tmp_path):
    """A fast version of test_ddp_resume's exactness check, through the public hooks only: stopped when step 7
    starts (the last of epoch 1's 4 batches) and resumed from last.ckpt (step 6, 2 batches into epoch 1), the
    run ends with the weights of a straight run; without the loader state the resumed epoch starts over."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ghost_vision.data import detection_collate
    from ghost_vision.data.resumable import ResumableDataLoader

    g = torch.Generator().manual_seed(0)
    samples = [(torch.rand(3, 16, 16, generator=g), {"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]),
                                                     "labels": torch.tensor([1 + i % 3])}) for i in range(8)]

    def run(name: str, *, stop: int | None = None, resume: bool = False) -> DetectionTask:
        torch.manual_seed(0)  # the same initial weights in both runs
        task = DetectionTask({"class_path": TOY}, num_classes=4, lr=0.1, warmup_epochs=1.0, scheduler="cosine")
        loader = ResumableDataLoader(samples, batch_size=2, shuffle=True, seed=3, collate_fn=detection_collate)
        ckpt = ModelCheckpoint(dirpath=tmp_path / name, every_n_train_steps=2, save_last=True, save_top_k=0)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, limit_val_batches=0,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                            callbacks=[ckpt] + ([_StopAt(stop)] if stop is not None else []))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(task, train_dataloaders=loader,
                        ckpt_path=str(tmp_path / name / "last.ckpt") if resume else None)
        return task

    straight = run("straight")
    with pytest.raises(_Stop):
        run("resumed", stop=7)
    saved = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=False)
    assert (saved["global_step"], saved["epoch"]) == (6, 1)
    assert saved["ghost_vision_train_loader"] == [{"seed": 3, "epoch": 1, "batches": 2}]
    resumed = run("resumed", resume=True)
    for (key, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key


class _FakeStrategy:
    def __init__(self, others_skip: bool) -> None:
        self.others_skip, self.asked = others_skip, []

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002 - Lightning's name
        self.asked.append((decision, all))
        return decision or self.others_skip  # all=False: True when any process says True


@pytest.mark.parametrize("others_skip", [False, True])
def test_training_steps_are_skipped_by_all_processes_or_none(monkeypatch, others_skip):
    """Under DDP a step that one process skips (a batch of nothing but unreadable samples) is skipped by every
    process, else the others' gradient all-reduce would wait forever; one process decides alone."""
    task = SegmentationTask({"class_path": f"{__name__}.ToySeg"}, num_classes=3)
    strategy = _FakeStrategy(others_skip)
    fake = type("FakeTrainer", (), {"world_size": 2, "strategy": strategy})()
    monkeypatch.setattr(SegmentationTask, "trainer", property(lambda self: fake))
    monkeypatch.setattr(SegmentationTask, "log", lambda self, *a, **k: None)
    batch = (torch.rand(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
    out = task.training_step(batch, 0)
    assert (out is None) == others_skip
    assert strategy.asked[0] == (False, False)
    assert task.training_step(None, 1) is None and strategy.asked[-1] == (True, False)
    fake.world_size = 1  # one process: no collective call
    n = len(strategy.asked)
    assert task.training_step(batch, 2) is not None and len(strategy.asked) == n
