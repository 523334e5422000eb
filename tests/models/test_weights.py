"""load_weights: timm and official checkpoints, wrappers, safetensors, clear mismatch errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ghost_vision.models import WeightsMismatchError, create_ghostnet, ghostnet_100, load_weights

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model("ghostnet_100")
    for m in model.modules():  # non-default BN statistics so a forgotten buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


def _same(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_saved_timm_checkpoint(tmp_path, timm_sd) -> None:
    path = tmp_path / "ghostnet_100.pth"
    torch.save(timm_sd, path)
    model = ghostnet_100(weights=path)
    _same(model, timm_sd)


def test_safetensors(tmp_path, timm_sd) -> None:
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in timm_sd.items()}, str(path))
    _same(load_weights(create_ghostnet("ghostnet_100"), path), timm_sd)


def test_module_prefix_and_official_thop_counters(timm_sd) -> None:
    wrapped = {f"module.{k}": v for k, v in timm_sd.items()}
    wrapped["module.total_ops"] = torch.zeros(1, dtype=torch.float64)  # as in state_dict_73.98.pth
    wrapped["module.blocks.0.0.total_params"] = torch.zeros(1, dtype=torch.float64)
    _same(load_weights(create_ghostnet("ghostnet_100"), wrapped), timm_sd)


def test_lightning_checkpoint_into_feature_backbone(tmp_path, timm_sd) -> None:
    ckpt = {
        "epoch": 3,
        "state_dict": {**{f"model.backbone.body.{k}": v for k, v in timm_sd.items()},
                       "model.head.weight": torch.zeros(3)},
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    backbone = create_ghostnet("ghostnet_100", features_only=True, out_indices=(1, 2, 3), weights=path)
    _same(backbone, timm_sd)  # the classifier and the unbuilt stages 7..9 were skipped


def test_mismatch_lists_missing_unexpected_and_shapes(timm_sd) -> None:
    with pytest.raises(WeightsMismatchError) as info:
        load_weights(create_ghostnet("ghostnet_130"), timm_sd)
    message = str(info.value)
    assert "429 shape mismatch" in message
    assert "blocks.0.0.ghost1.cheap_operation.0.weight: checkpoint (8, 1, 3, 3) vs model (10, 1, 3, 3)" in message
    partial = dict(timm_sd)
    partial.pop("bn1.running_var")
    partial["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsMismatchError, match=r"1 missing: bn1.running_var[\s\S]*1 unexpected: extra.weight"):
        load_weights(create_ghostnet("ghostnet_100"), partial)
    v2 = timm.create_model("ghostnetv2_100").state_dict()
    with pytest.raises(WeightsMismatchError, match=r"unexpected: blocks\.2\.0\.ghost1\.short_conv"):
        load_weights(create_ghostnet("ghostnet_100"), v2)


def test_missing_file(tmp_path) -> None:
    # weights="timm" and named weights (downloads, offline errors): tests/models/test_pretrained.py
    with pytest.raises(FileNotFoundError, match="weights file not found: .*nope.pth"):
        ghostnet_100(weights=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="neither a registered name nor an existing file"):
        ghostnet_100(weights=str(tmp_path / "nope.pth"))
