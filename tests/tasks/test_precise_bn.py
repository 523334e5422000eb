"""PreciseBN: BatchNorm statistics re-estimated as the exact average over batches (oracles: the batch statistics
of train mode, and the first BatchNorm's input recomputed by hand), frozen norms left alone, any task."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v3_small

from ghost_vision.tasks import PreciseBN, SegmentationTask
from ghost_vision.tasks.precise_bn import recompute_bn_stats


def test_statistics_are_those_of_the_train_mode_forward():
    """Estimated on one batch (repeated), every BatchNorm holds the mean and (unbiased) variance of its input in
    the train-mode forward of that batch - which is what it normalised with: torchvision's MobileNetV3
    (BatchNorm momentum 0.01, running averages starting at 0 / 1)."""
    torch.manual_seed(0)
    net = mobilenet_v3_small().features
    x = torch.randn(8, 3, 64, 64)
    oracle = copy.deepcopy(net).train()
    seen = {}

    def record(name, inp):
        seen[name] = inp.mean((0, 2, 3)), inp.transpose(0, 1).flatten(1).var(1, unbiased=True)

    for name, m in oracle.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda m, i, name=name: record(name, i[0]))
    with torch.no_grad():
        oracle(x)
        before_eval = copy.deepcopy(net).eval()(x)
    assert recompute_bn_stats(net, [x] * 5, num_batches=3) == 3
    assert net.training  # mode, momentum and counters as before
    norms = dict((n, m) for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d))
    assert len(seen) == len(norms) > 30
    assert all(m.momentum == 0.01 and m.training and int(m.num_batches_tracked) == 0 for m in norms.values())
    for name, m in norms.items():
        mean, var = seen[name]
        torch.testing.assert_close(m.running_mean, mean, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(m.running_var, var, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():  # the eval-mode output moves towards train mode's
        want, got = oracle(x), net.eval()(x)
    assert (got - want).abs().mean() < 0.5 * (before_eval - want).abs().mean()  # (2 x 2 maps: var n/(n-1))


def test_average_over_batches_and_frozen_norms_untouched():
    from ghost_vision.models.factory import create_ghostnet

    torch.manual_seed(0)
    net = create_ghostnet("ghostnet_050", features_only=True, frozen_stages=1)
    frozen = {n: m.running_mean.clone() for n, m in net.named_modules()
              if isinstance(m, nn.BatchNorm2d) and (n.startswith(("bn1", "blocks.0.")))}
    assert frozen and "bn1" in frozen
    batches = [torch.rand(2, 3, 64, 64) + i for i in range(3)]
    recompute_bn_stats(net, batches, num_batches=3)
    for n, m in net.named_modules():
        if n in frozen:
            torch.testing.assert_close(m.running_mean, frozen[n], rtol=0, atol=0)
    # the first trained BatchNorm (blocks.1's first) is the plain average of its inputs' per-batch means
    inputs = []
    first = next(m for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d) and n.startswith("blocks.1."))
    hook = first.register_forward_pre_hook(lambda m, i: inputs.append(i[0].mean((0, 2, 3))))
    net.eval()
    with torch.no_grad():
        saved = first.running_mean.clone()
        # its input comes from the frozen stem and blocks.0 only, so eval mode feeds it what it saw then
        for b in batches:
            net(b)
    hook.remove()
    torch.testing.assert_close(saved, torch.stack(inputs).mean(0), rtol=1e-5, atol=1e-5)


def test_a_detector_runs_its_eval_forward_without_targets():
    from ghost_vision.models import get_model

    torch.manual_seed(0)
    det = get_model("ssdlite320_ghostnet", num_classes=3, width=0.5)
    bn = next(m for m in det.backbone.modules() if isinstance(m, nn.BatchNorm2d) and m.weight.requires_grad)
    before = bn.running_mean.clone()
    used = recompute_bn_stats(det, [[torch.rand(3, 200, 240), torch.rand(3, 320, 320)]], num_batches=4)
    assert used == 1 and det.training  # train mode restored; in it, the forward would have needed targets
    assert not torch.allclose(bn.running_mean, before)


def test_norms_off_the_eval_path_keep_their_statistics():
    """A training-only branch (NanoDet-Plus's assist head is one) is not run by the eval-mode forward: its
    BatchNorm keeps its statistics instead of being reset."""

    class WithTrainingHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux = nn.BatchNorm2d(3), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.aux(self.body(x)) if self.training else self.body(x)

    net = WithTrainingHead()
    net.aux.running_mean.fill_(0.5)
    recompute_bn_stats(net, [torch.randn(2, 3, 8, 8) + 3], num_batches=1)
    assert torch.equal(net.aux.running_mean, torch.full((3,), 0.5)) and torch.equal(net.aux.running_var, torch.ones(3))
    assert (net.body.running_mean > 2).all()


def test_bad_arguments():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="num_batches"):
        recompute_bn_stats(net, [torch.rand(1, 3, 8, 8)], num_batches=0)
    with pytest.raises(ValueError, match="empty loader"):
        recompute_bn_stats(net, [], num_batches=2)
    with pytest.raises(ValueError, match="num_batches"):
        PreciseBN(num_batches=0)


def test_callback_before_validation_keeps_the_random_state(tmp_path):
    """``Trainer.validate`` on a DataModule set up for validation only: the callback sets the training split up,
    re-estimates on its first batches, and leaves Python's, NumPy's and torch's random states as they were."""
    from ghost_vision.data import SyntheticCityscapesDataModule

    dm = SyntheticCityscapesDataModule(str(tmp_path / "data"), num_train=4, num_val=2, batch_size=2, num_workers=0,
                                       crop_size=64)
    task = SegmentationTask(model="lraspp_ghostnet", model_kwargs={"width": 0.5}, num_classes=19)
    stem = next(m for m in task.model.modules() if isinstance(m, nn.BatchNorm2d))
    before = stem.running_mean.clone()
    cb = PreciseBN(num_batches=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb], default_root_dir=tmp_path)
    trainer.validate(task, datamodule=dm, verbose=False)
    assert cb.last_used == 2 and not torch.allclose(stem.running_mean, before)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    cb.on_validation_start(trainer, task)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.slow
def test_eval_cli_one_and_two_ddp_processes_agree(tmp_path):
    """``ghost-vision eval ... --trainer.callbacks+=ghost_vision.tasks.PreciseBN``: the recipe-level switch works,
    changes what is validated, and 2 DDP processes (statistics averaged over ranks) give the 1-process JSON."""
    import json
    import subprocess
    import sys

    from conftest import REPO, subprocess_env, tiny_args

    config = "deeplabv3_ghost_shapes.yaml"
    data = tmp_path / "data"

    def run(name: str, *args: str, command: str = "eval") -> dict:
        out = tmp_path / f"{name}.json"
        cmd = [sys.executable, "-m", "ghost_vision", command, config.removesuffix(".yaml"),
               *tiny_args(config, tmp_path / name, data_root=data, num_val=5, val_batches=None), *args,
               "--output", str(out)]
        proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return json.loads(out.read_text())

    run("train", command="train")
    ckpt = str(tmp_path / "train" / "ckpt" / "last.ckpt")
    precise = ["--trainer.callbacks+=ghost_vision.tasks.PreciseBN", "--trainer.callbacks.num_batches", "2"]
    as_trained = run("plain", "--ckpt_path", ckpt)
    one = run("one", "--ckpt_path", ckpt, *precise)
    two = run("two", "--ckpt_path", ckpt, *precise, "--trainer.strategy", "ddp", "--trainer.devices", "2")
    assert one == two
    assert one != as_trained
