"""Unit tests of the task plumbing: LR schedules, parameter groups, model resolution, non-finite losses,
the ``num_classes`` checkpoint guard and ``init_from`` fine-tuning (with a tiny network: seconds)."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
from _toy import ToyDetector, toy_detection_batches
from torch import nn

from ghost_vision.tasks import DetectionTask, NonFiniteLossError, SegmentationTask
from ghost_vision.tasks.common import build_model, build_optimizer, build_scheduler, param_groups

TOY = "_toy.ToyDetector"


def _lrs(name: str, total: int, warmup: int, steps: int, **kw) -> list[float]:
    """LR factors (base lr 1.0) for steps 0..steps-1 read from the optimizer, as the trainer sees them."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, name=name, total_steps=total, warmup_steps=warmup, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_scheduler_warmup_then_cosine():
    lrs = _lrs("cosine", total=10, warmup=2, steps=11, warmup_factor=0.1)
    # warm-up: 0.1 -> linear -> 1 at step 2; then 0.5 * (1 + cos(pi * (s - 2) / 8))
    expected = [0.1, 0.55] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 11)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs[2] == pytest.approx(1.0) and lrs[6] == pytest.approx(0.5) and lrs[10] == pytest.approx(0.0)


def test_scheduler_cosine_min_lr_ratio():
    lrs = _lrs("cosine", total=4, warmup=0, steps=5, min_lr_ratio=0.2)
    assert lrs == pytest.approx([1.0, 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)), 0.6,
                                 0.2 + 0.8 * 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.2])


def test_scheduler_warmup_then_step():
    # 4 warm-up steps, then 16 steps with milestones at 50% and 75% of them (steps 12 and 16)
    lrs = _lrs("step", total=20, warmup=4, steps=20, warmup_factor=0.0, milestones=(0.5, 0.75), gamma=0.1)
    assert lrs[:4] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert lrs[4:12] == pytest.approx([1.0] * 8)
    assert lrs[12:16] == pytest.approx([0.1] * 4)
    assert lrs[16:] == pytest.approx([0.01] * 4)


def test_scheduler_poly_and_constant():
    lrs = _lrs("poly", total=10, warmup=0, steps=11, power=0.9)
    assert lrs == pytest.approx([(1 - s / 10) ** 0.9 for s in range(11)])
    lrs = _lrs("poly", total=12, warmup=2, steps=12, power=2.0, warmup_factor=0.5)
    assert lrs[:3] == pytest.approx([0.5, 0.75, 1.0])
    assert lrs[7] == pytest.approx((1 - 5 / 10) ** 2)
    assert _lrs("constant", total=5, warmup=2, steps=5, warmup_factor=0.5) == pytest.approx(
        [0.5, 0.75, 1.0, 1.0, 1.0])


def test_scheduler_rejects_unknown_name_and_clamps_warmup():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="cosine, step, poly, constant"):
        build_scheduler(opt, name="linear", total_steps=10, warmup_steps=0)
    # warm-up longer than training is cut to total - 1 steps: the last step reaches the peak
    assert _lrs("constant", total=3, warmup=10, steps=3, warmup_factor=0.0) == pytest.approx([0.0, 0.5, 1.0])


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight decays, bias does not
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(4))  # a 1-d parameter outside a norm layer: no decay
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_exclude_norms_and_biases():
    net = _Net()
    groups = param_groups(net, 0.01)
    names = {id(p): n for n, p in net.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in groups)
    assert decay == {"conv.weight", "fc.weight"}
    assert no_decay == {"conv.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias", "ln.weight", "ln.bias",
                        "fc.bias", "scale"}
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    for name in ("sgd", "adamw"):
        opt = build_optimizer(net, name=name, lr=0.1, weight_decay=0.01)
        assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    with pytest.raises(ValueError, match="'sgd' or 'adamw'"):
        build_optimizer(net, name="adam", lr=0.1, weight_decay=0.0)


def test_build_model_resolution_and_errors():
    model = build_model({"class_path": TOY, "init_args": {"nan_calls": [3]}}, num_classes=4)
    assert isinstance(model, ToyDetector) and model.head.out_features == 4 and model.nan_calls == {3}
    with pytest.raises(ValueError, match="unknown model builder 'nope'"):
        build_model("nope", num_classes=3)
    with pytest.raises(ValueError, match="needs a 'class_path'"):
        build_model({"init_args": {}}, num_classes=3)
    with pytest.raises(ValueError, match="cannot import model class_path"):
        build_model({"class_path": "_toy.Missing"}, num_classes=3)
    with pytest.raises(ValueError, match="on_nonfinite"):
        DetectionTask({"class_path": TOY}, num_classes=3, on_nonfinite="ignore")


def _trainer(tmp_path, **kw) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kw})


def _fit(trainer: L.Trainer, task: L.LightningModule, n: int = 8) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, train_dataloaders=toy_detection_batches(n, num_classes=task.hparams.num_classes))


def test_lr_schedule_in_training_uses_batches_per_epoch(tmp_path):
    """Warm-up epochs are converted with the real number of batches per epoch, also with ``max_steps``."""
    task = DetectionTask({"class_path": TOY}, num_classes=5, lr=1.0, warmup_epochs=1.0, scheduler="cosine",
                         weight_decay=0.0, momentum=0.0)
    seen: list[float] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    L.seed_everything(0)
    _fit(_trainer(tmp_path, max_epochs=-1, max_steps=8, callbacks=[Record()]), task)  # 4 batches per epoch
    warm = [0.001 * (1 - s / 4) + s / 4 for s in range(4)]
    cos = [0.5 * (1 + math.cos(math.pi * (s - 4) / 4)) for s in range(4, 8)]
    assert seen == pytest.approx(warm + cos)


def test_nonfinite_loss_raises_naming_the_step(tmp_path):
    task = DetectionTask({"class_path": TOY, "init_args": {"nan_calls": [2]}}, num_classes=5, lr=0.01)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at global step 2 \(epoch 0, batch 2\)"
                       r": loss_cls=nan"):
        _fit(_trainer(tmp_path), task)


def test_nonfinite_loss_skip_counts_and_keeps_weights_finite(tmp_path):
    task = DetectionTask({"class_path": TOY, "init_args": {"nan_calls": [1, 3]}}, num_classes=5, lr=0.01,
                         on_nonfinite="skip")
    changed: dict[int, bool] = {}

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before = [t.detach().clone() for t in pl_module.state_dict().values()]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            after = list(pl_module.state_dict().values())
            changed[batch_idx] = not all(torch.equal(a, b) for a, b in zip(self.before, after))

    trainer = _trainer(tmp_path, callbacks=[Watch()])
    _fit(trainer, task, n=10)  # 5 batches, the 2nd and 4th with NaN activations
    assert task.skipped_steps == 2
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 2.0
    # skipped steps leave weights *and* BN statistics untouched; the others train
    assert changed == {0: True, 1: False, 2: True, 3: False, 4: True}
    assert all(torch.isfinite(t).all() for t in task.state_dict().values())


def test_segmentation_nonfinite_loss_raises(tmp_path):
    class NaNSeg(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.conv = nn.Conv2d(3, num_classes, 1)

        def forward(self, x):
            return {"out": self.conv(x) * float("inf")}

    task = SegmentationTask({"class_path": f"{__name__}.NaNSegBuilder"}, num_classes=3)
    task.model = NaNSeg(3)
    loader = torch.utils.data.DataLoader(
        [(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long)) for _ in range(2)], batch_size=2)
    with pytest.raises(NonFiniteLossError, match="global step 0 .* ce=nan"):
        _trainer(tmp_path).fit(task, train_dataloaders=loader)


class NaNSegBuilder(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """A DetectionTask checkpoint of the toy detector trained with num_classes=5."""
    path = tmp_path_factory.mktemp("toy_ckpt") / "toy5.ckpt"
    task = DetectionTask({"class_path": TOY}, num_classes=5, lr=0.05)
    trainer = _trainer(path.parent)
    _fit(trainer, task)
    trainer.save_checkpoint(path)
    return path, {k: v.clone() for k, v in task.model.state_dict().items()}


def test_mismatched_num_classes_checkpoint_fails_clearly(toy_checkpoint, tmp_path):
    path, _ = toy_checkpoint
    msg = r"trained with num_classes=5 but this model has num_classes=3.*--model\.init_args\.init_from"
    with pytest.raises(ValueError, match=msg):
        DetectionTask.load_from_checkpoint(path, num_classes=3)
    # resuming/validating through the Trainer hits the same guard before any state-dict size error
    task = DetectionTask({"class_path": TOY}, num_classes=3)
    with pytest.raises(ValueError, match=msg):
        _trainer(tmp_path).fit(task, train_dataloaders=toy_detection_batches(), ckpt_path=path)
    # the matching num_classes loads
    assert DetectionTask.load_from_checkpoint(path).hparams.num_classes == 5


def test_init_from_fine_tunes_with_a_new_head(toy_checkpoint, tmp_path, caplog):
    path, trained = toy_checkpoint
    with caplog.at_level("INFO"):
        task = DetectionTask({"class_path": TOY}, num_classes=3, init_from=str(path))
    skipped = sorted(k for k in trained if k.startswith("head."))
    assert f"{len(trained) - 2} of {len(trained)} tensors loaded; 2 keep their initialisation" in caplog.text
    assert all(k in caplog.text for k in skipped)
    sd = task.model.state_dict()
    for key, value in trained.items():
        if key.startswith("head."):
            assert sd[key].shape != value.shape  # new head, fresh init
        else:
            assert torch.equal(sd[key], value), key  # backbone (incl. BN buffers) loaded
    assert task.init_report == {"loaded": len(trained) - 2, "skipped": 2}
    # fine-tune and save; the new checkpoint loads without the original file
    trainer = _trainer(tmp_path)
    _fit(trainer, task)
    ft = tmp_path / "ft.ckpt"
    trainer.save_checkpoint(ft)
    saved = torch.load(ft, weights_only=False)["hyper_parameters"]
    assert saved["init_from"] is None and saved["initialized_from"] == str(path)
    moved = tmp_path / "moved.ckpt"
    path.rename(moved)
    try:
        loaded = DetectionTask.load_from_checkpoint(ft)
    finally:
        moved.rename(path)
    assert loaded.hparams.num_classes == 3
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                 task.model.state_dict().values()))


def test_init_from_with_nothing_in_common_fails(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"something.else": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="no tensor of the checkpoint fits"):
        DetectionTask({"class_path": TOY}, num_classes=3, init_from=str(path))


def test_resumable_loader_epochs_are_reproducible_and_resume_mid_epoch():
    from ghost_vision.data.resumable import ResumableDataLoader

    def loader():
        return ResumableDataLoader(list(range(10)), batch_size=3, shuffle=True, seed=5)

    a = loader()
    epochs = []
    for e in range(2):
        a.sampler.set_epoch(e)
        epochs.append([b.tolist() for b in a])
    assert epochs[0] != epochs[1] and sorted(sum(epochs[0], [])) == list(range(10))
    torch.manual_seed(123)  # the global RNG plays no part
    b = loader()
    b.sampler.set_epoch(1)
    it = iter(b)
    first = [next(it).tolist(), next(it).tolist()]
    state = b.state_dict()
    assert state == {"seed": 5, "epoch": 1, "batches": 2}
    c = ResumableDataLoader(list(range(10)), batch_size=3, shuffle=True)  # seed comes from the state
    c.load_state_dict(state)
    c.sampler.set_epoch(1)
    assert first + [x.tolist() for x in c] == epochs[1]
    # a state from another epoch (an epoch-end checkpoint) does not skip anything
    c.load_state_dict({"seed": 5, "epoch": 0, "batches": 4})
    assert [x.tolist() for x in c] == epochs[1]


def test_channels_last_is_the_same_model_in_another_memory_layout(tmp_path):
    """``channels_last`` (default True) changes where the weights and maps sit in memory, not the arithmetic:
    same outputs and losses (float rounding), same checkpoint keys and values; a channels-last checkpoint
    loads into a contiguous task and back."""
    torch.manual_seed(0)
    cl = SegmentationTask("lraspp_ghostnet", num_classes=3, model_kwargs={"width": 0.5})
    plain = SegmentationTask("lraspp_ghostnet", num_classes=3, model_kwargs={"width": 0.5}, channels_last=False)
    plain.model.load_state_dict(cl.model.state_dict())
    first = next(m for m in cl.model.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.is_contiguous(memory_format=torch.channels_last) and not first.weight.is_contiguous()
    assert all(p.is_contiguous() for p in plain.model.parameters())
    maps = []
    first.register_forward_hook(lambda m, i, o: maps.append(o))
    x = torch.rand(2, 3, 64, 64)
    cl.eval(), plain.eval()
    with torch.no_grad():
        a, b = cl(x)["out"], plain(x)["out"]
    assert maps[0].is_contiguous(memory_format=torch.channels_last)  # the maps follow the weights
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    cl.train(), plain.train()
    target = torch.randint(0, 3, (2, 64, 64))
    la, lb = (torch.nn.functional.cross_entropy(t(x)["out"], target) for t in (cl, plain))
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    path = tmp_path / "cl.pt"
    torch.save(cl.model.state_dict(), path)
    loaded = SegmentationTask("lraspp_ghostnet", num_classes=3, model_kwargs={"width": 0.5}, channels_last=False)
    loaded.model.load_state_dict(torch.load(path))
    assert all(torch.equal(u, v) for u, v in zip(loaded.model.state_dict().values(), cl.model.state_dict().values()))
    assert all(p.is_contiguous() for p in loaded.model.parameters())  # copied into the task's own layout
