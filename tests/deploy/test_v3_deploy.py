"""GhostNetV3 through the deploy path: optimize() and the exporters work on the fused form and match the
multi-branch training form within 1e-4."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from test_optimize import _randomize_bn as randomize_bn  # same folder: pytest puts it on sys.path
from torch import nn

from ghost_vision.deploy import FastGhostBottleneck, optimize, optimize_for_onnx, unfused_batchnorms
from ghost_vision.models import create_ghostnet
from ghost_vision.models.layers_v3 import GhostBottleneckV3, GhostModuleV3

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One intra-op thread (see conftest): the 2-core test machine is shared."""


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """test_optimize's BN randomizer (FrozenBatchNorm2d included), then eval mode."""
    return randomize_bn(model, seed).eval()


def _close(ref: torch.Tensor, got: torch.Tensor, atol: float = 1e-4) -> None:
    scale = max(1.0, ref.abs().max().item())
    diff = (ref - got).abs().max().item()
    assert diff <= atol * scale, f"max abs diff {diff:.3g} (output magnitude {scale:.3g})"


def _has_v3(model: nn.Module) -> bool:
    return any(isinstance(m, (GhostModuleV3, GhostBottleneckV3)) for m in model.modules())


@pytest.mark.parametrize(
    ("kwargs", "x"),
    [pytest.param(dict(num_classes=10), torch.rand(2, 3, 64, 80), marks=pytest.mark.slow),
     (dict(features_only=True, output_stride=16, frozen_stages=2), torch.rand(1, 3, 65, 97))],
)
def test_optimize_reparameterizes_then_fuses(kwargs: dict, x: torch.Tensor) -> None:
    model = _randomize_bn(create_ghostnet("ghostnetv3_050", **kwargs))
    with torch.inference_mode():
        ref = model(x)
        eager = optimize(model, script=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the fused V3 form scripts as a whole
            frozen = optimize(model)
        assert isinstance(frozen, torch.jit.ScriptModule)
        for out in (eager(x), frozen(x)):
            for a, b in zip(ref.values() if isinstance(ref, dict) else [ref],
                            out.values() if isinstance(out, dict) else [out]):
                _close(a, b)
    assert _has_v3(model), "optimize() must not touch the training-form model (it works on a copy)"
    assert not _has_v3(eager) and unfused_batchnorms(eager) == []
    assert any(isinstance(m, FastGhostBottleneck) for m in eager.modules())  # the v1/v2 fast path applies


@pytest.mark.slow
def test_export_tool_writes_the_fused_form(tmp_path: Path) -> None:
    """tools/export.py on a training-form checkpoint: the ONNX graph is the fused one and matches the
    training form in onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = _randomize_bn(create_ghostnet("ghostnetv3_050", num_classes=4))
    torch.save(model.state_dict(), tmp_path / "train_form.pth")
    spec = importlib.util.spec_from_file_location("export_tool", REPO / "tools" / "export.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    report = tool.main(["ghostnetv3_050", "--num-classes", "4", "--size", "64", "64", "--weights",
                        str(tmp_path / "train_form.pth"), "--out", str(tmp_path), "--formats", "onnx"])
    assert report["onnx"]["max_abs_diff"] < 1e-4
    path = tmp_path / "ghostnetv3_050.onnx"
    convs = sum(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)
    train_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert convs < train_convs / 2, (convs, train_convs)  # branches fused: ~1 conv per position, not 3-5
    x = torch.rand(2, 3, 80, 64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        _close(model(x), torch.from_numpy(session.run(None, {"images": x.numpy()})[0]))


def test_onnx_ready_ssdlite_v3_matches_training_form() -> None:
    det = pytest.importorskip("ghost_vision.models.detection")
    model = _randomize_bn(det.ssdlite320_ghostnet(num_classes=3, backbone="ghostnetv3_050"))
    x = torch.rand(1, 3, 160, 160)
    with torch.inference_mode():
        ref = list(model.backbone(x).values())
        got = list(optimize_for_onnx(model).backbone(x).values())
    assert len(ref) == len(got) == 6
    for a, b in zip(ref, got):
        _close(a, b)


@pytest.mark.slow
def test_benchmark_v3_rows(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "benchmark.py"), "--quick", "--pairs", "--v3", "--skip", "data",
         "--rounds", "2", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    v3 = json.loads((tmp_path / "benchmark.json").read_text())["v3"]
    assert set(v3["costs"]) == {"ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130", "ghostnetv3_160"}
    c = v3["costs"]["ghostnetv3_100"]
    assert c["deploy_params_m"] == pytest.approx(6.15, abs=0.005) and c["train_params_m"] > 8
    assert c["deploy_macs_g"] == pytest.approx(0.167, abs=0.001) and c["train_macs_g"] > 2 * c["deploy_macs_g"]
    assert set(v3["batch1"]["median_ms"]) == {"v3_fast", "v2_fast", "v1_fast", "peer_frozen", "v3_train_form_eager"}
    assert v3["train"]["v3"]["step_s"] > 0 and v3["train"]["time_ratio"] > 0
    assert "| ghostnetv3_160 |" in (tmp_path / "benchmark.md").read_text()


def test_export_functions_fuse_a_training_form_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from ghost_vision.deploy.export import export_onnx, export_torchscript

    model = _randomize_bn(create_ghostnet("ghostnetv3_050", num_classes=3))
    x = torch.rand(1, 3, 64, 64)
    rep = export_onnx(model, x, tmp_path / "v3.onnx", dynamic_size=False)
    assert rep["max_abs_diff"] < 1e-4 and _has_v3(model)
    convs = sum(node.op_type == "Conv" for node in onnx.load(str(tmp_path / "v3.onnx")).graph.node)
    assert convs < sum(isinstance(m, nn.Conv2d) for m in model.modules()) / 2
    rep = export_torchscript(model, x, tmp_path / "v3.pt")
    loaded = torch.jit.load(str(tmp_path / "v3.pt"))
    assert not any("GhostBottleneckV3" in m.original_name for m in loaded.modules())
    with torch.inference_mode():
        _close(model(x), loaded(x))
