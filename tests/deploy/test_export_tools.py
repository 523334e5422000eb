"""ONNX/TorchScript export (checked in onnxruntime) and the CLI tools' smoke runs. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ghost_vision.deploy import optimize, optimize_for_onnx
from ghost_vision.deploy.export import export_onnx, export_torchscript, exportable
from ghost_vision.models import create_ghostnet

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("fast", [False, True])
def test_onnx_classifier_dynamic(tmp_path: Path, fast: bool) -> None:
    model = create_ghostnet("ghostnet_050", num_classes=7).eval()
    if fast:
        model = optimize_for_onnx(model)
    rep = export_onnx(model, torch.rand(1, 3, 96, 96), tmp_path / "g.onnx")
    assert rep["dynamic_batch"] and rep["dynamic_size"]
    assert rep["max_abs_diff"] < 1e-4
    assert [2, 3, 96, 96] in rep["checked_shapes"] and [1, 3, 128, 128] in rep["checked_shapes"]


def test_onnx_features_v2(tmp_path: Path) -> None:
    model = create_ghostnet("ghostnetv2_100", features_only=True).eval()
    rep = export_onnx(optimize_for_onnx(model), torch.rand(1, 3, 128, 128), tmp_path / "f.onnx")
    assert len(rep["outputs"]) == 4 and rep["max_abs_diff"] < 1e-4


def test_fast_path_traces_without_batch_baked_in() -> None:
    """fold_se is a batch-1 eager trick; a trace must stay valid for other batch sizes."""
    model = create_ghostnet("ghostnet_050", num_classes=5).eval()
    fast = optimize(model, script=False)
    with torch.no_grad():
        traced = torch.jit.trace(fast, torch.rand(1, 3, 64, 64), check_trace=False)
        x = torch.rand(3, 3, 64, 64)
        torch.testing.assert_close(traced(x), model(x), atol=1e-4, rtol=1e-4)


def test_ssd_exports_head_outputs(tmp_path: Path) -> None:
    det = pytest.importorskip("ghost_vision.models.detection")
    model = det.ssdlite320_ghostnet(num_classes=3).eval()
    net, dynamic_size = exportable(model)
    assert not dynamic_size
    rep = export_onnx(model, torch.rand(1, 3, 320, 320), tmp_path / "ssd.onnx")
    assert rep["outputs"] == ["output_0", "output_1"] and rep["max_abs_diff"] < 1e-4


def test_torchscript(tmp_path: Path) -> None:
    model = create_ghostnet("ghostnet_050", num_classes=5).eval()
    rep = export_torchscript(model, torch.rand(1, 3, 64, 64), tmp_path / "g.pt")
    assert rep["method"] in ("script", "trace") and rep["max_abs_diff"] < 1e-4
    loaded = torch.jit.load(str(tmp_path / "g.pt"))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=1e-4)


def test_export_cli(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "export.py"), "ghostnet_050", "--size", "64", "64",
         "--num-classes", "4", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ghostnet_050.json").read_text())
    assert (tmp_path / "ghostnet_050.onnx").is_file() and report["onnx"]["max_abs_diff"] < 1e-4


@pytest.mark.slow  # minutes on a 2-core CPU: a smoke run of the tool, in make test-slow
def test_benchmark_quick(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "benchmark.py"), "--quick", "--pairs", "backbone",
         "--skip", "batch8", "data", "--rounds", "2", "--profile", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "benchmark.json").read_text())
    pair = results["pairs"]["backbone"]
    assert pair["mac_ratio"] > 0 and set(pair["batch1"]["median_ms"]) >= {
        "ghost_eager", "ghost_fast", "ghost_fast_eager", "peer_channels_last", "peer_frozen"}
    assert "ratio" in pair["onnxruntime"], pair["onnxruntime"]
    ort_profile = pair["onnxruntime"]["profile_ms"]["ghost"]
    assert ort_profile["Conv (depthwise)"] > 0 and ort_profile["Conv (other)"] > 0
    assert {row["op"] for row in pair["profile"]["ghost_fast"]}  # torch.profiler rows
    assert "| backbone" in (tmp_path / "benchmark.md").read_text()


@pytest.mark.slow  # minutes on a 2-core CPU: a smoke run of the tool, in make test-slow
def test_gpu_check_runs_on_cpu(tmp_path: Path) -> None:
    """tools/gpu_check.py's code path (AMP steps, interleaved timing, JSON) as a CPU smoke run."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--device", "cpu", "--quick",
         "--pairs", "ssdlite320", "lraspp", "--out", str(tmp_path / "gpu.json")],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "gpu.json").read_text())
    assert info["device"] == "cpu" and [r["pair"] for r in info["results"]] == ["ssdlite320", "lraspp"]
    for r in info["results"]:
        assert "error" not in r, r
        assert r["train_ratio"] > 0 and r["latency_b1_ms_ratio"] > 0 and r["batch_ms_ratio"] > 0
    assert "inference at batch 1" in proc.stdout  # progress lines
