"""int8 quantization (onnxruntime static QDQ): outputs against the fp32 model, the archive, errors.

Tolerances (stated in docs/int8.md): the int8 network core's outputs are within 5% relative L2 error
(``|int8 - fp32| / |fp32|`` over the whole output) of the fp32 model's on fixed inputs; with quantization
switched off (``int8=False``) the wrapper's outputs equal the eval model's within 1e-4 (the pre/post-processing
is the model's own). No timing assertions.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")

from ghost_vision.deploy.calibration import CalibrationError, calibration_images  # noqa: E402
from ghost_vision.deploy.export import exportable, flatten_outputs  # noqa: E402
from ghost_vision.deploy.quantize import (  # noqa: E402
    QuantizationError,
    cpu_features,
    int8_settings,
    qdq_count,
    quantize,
)
from ghost_vision.deploy.quantized_model import QuantizedModelError, load_quantized  # noqa: E402
from ghost_vision.models import create_ghostnet, get_model  # noqa: E402


def _rel_l2(ref: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    num = sum(float(((r - g) ** 2).sum()) for r, g in zip(ref, got))
    den = sum(float((r**2).sum()) for r in ref)
    return (num / den) ** 0.5


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Give the BatchNorms non-trivial statistics (as after training) so that int8 ranges are realistic."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return _trained_like(create_ghostnet("ghostnet_050", num_classes=10))


@pytest.fixture(scope="module")
def qclassifier(classifier: torch.nn.Module):
    return quantize(classifier, torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1)), num_images=8)


def test_cpu_features_parses_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512bw avx512_vnni\n")
    assert cpu_features(info) == dict(avx2=True, avx512bw=True, avx512_vnni=True, avx_vnni=False, vnni=True)
    info.write_text("flags\t\t: fpu sse avx2\n")
    f = cpu_features(info)
    assert not f["vnni"] and f["avx2"]
    assert int8_settings(f)["reduce_range"] and not int8_settings({"vnni": True})["reduce_range"]
    assert int8_settings(f)["activation_type"] == "QUInt8" and int8_settings(f)["weight_type"] == "QInt8"
    assert cpu_features(tmp_path / "missing")["vnni"] is False


def test_classifier_int8_close_to_fp32(classifier, qclassifier) -> None:
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = classifier(x)
    got = qclassifier(x)
    assert got.shape == ref.shape == (3, 10) and got.dtype == torch.float32
    assert _rel_l2([ref], [got]) < 0.05
    assert qclassifier.meta["settings"]["reduce_range"] == (not cpu_features()["vnni"])


def test_int8_graph_is_fused(qclassifier) -> None:
    """After onnxruntime's QDQ fusions every convolution is a QLinearConv and the float<->int8 conversions left
    are the input, the output and the classifier's pooling (exported as ReduceMean, fp32 on one small map): the
    7 SE gates' hard-sigmoids are folded into their expand convs as a Clip, which the quantizer fuses into the
    QLinearConv, and their products are QLinearMul."""
    ops = qdq_count(qclassifier)
    nodes = _onnx_nodes(qclassifier.onnx_bytes)
    convs = sum(1 for n in nodes if n.op_type == "Conv")
    assert ops.get("QLinearConv", 0) + ops.get("Gemm", 0) >= convs - 1 > 0
    assert ops.get("Conv", 0) == 0
    assert sum(n.op_type == "Clip" for n in nodes) == 0  # fused away by the quantizer
    assert ops.get("HardSigmoid", 0) == ops.get("Clip", 0) == 0 and ops.get("QLinearMul", 0) == 7
    pool = ops.get("ReduceMean", 0)
    assert pool <= 1
    assert ops.get("QuantizeLinear", 0) <= 1 + pool
    assert ops.get("DequantizeLinear", 0) <= 1 + pool


def _onnx_nodes(data: bytes):
    import onnx

    return onnx.load_from_string(data).graph.node


def test_save_load_round_trip(qclassifier, tmp_path: Path) -> None:
    path = tmp_path / "cls_int8.zip"
    qclassifier.save(path)
    loaded = load_quantized(path)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded(x), qclassifier(x))
    meta = json.loads(zipfile.ZipFile(path).read("meta.json"))
    assert meta["kind"] == "classifier" and meta["settings"]["activation_type"] == "QUInt8"


def test_load_errors(qclassifier, tmp_path: Path) -> None:
    path = tmp_path / "m.zip"
    qclassifier.save(path)
    data = path.read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(QuantizedModelError, match="truncated"):
        load_quantized(tmp_path / "cut.zip")
    meta = json.loads(zipfile.ZipFile(path).read("meta.json"))
    meta["onnxruntime"] = "0.1.0"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "old.zip", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, json.dumps(meta) if name == "meta.json" else src.read(name))
    with pytest.raises(QuantizedModelError, match="onnxruntime 0.1.0"):
        load_quantized(tmp_path / "old.zip")
    assert load_quantized(tmp_path / "old.zip", check_version=False).kind == "classifier"
    with pytest.raises(QuantizedModelError, match="no such"):
        load_quantized(tmp_path / "absent.zip")


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (torch.rand(0, 3, 64, 64), "empty"),
        (torch.rand(2, 1, 64, 64), "1 channels"),
        (torch.rand(2, 4, 64, 64), "4 channels"),
        (torch.rand(2, 3, 16, 64), "at least 32 px"),
        (torch.rand(3, 64, 64), "give a batch"),
        (torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), "float images"),
    ],
)
def test_calibration_errors(source, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        calibration_images(source)


def test_calibration_folder(tmp_path: Path) -> None:
    from PIL import Image

    with pytest.raises(CalibrationError, match="does not exist"):
        calibration_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no image files"):
        calibration_images(tmp_path / "empty")
    Image.new("L", (40, 48), 128).save(tmp_path / "grey.png")
    Image.new("RGBA", (64, 50), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    images = calibration_images(tmp_path, num_images=5)
    assert [tuple(i.shape) for i in images] == [(3, 48, 40), (3, 50, 64)]  # converted to RGB, sorted order
    assert float(images[1][0].max()) == 1.0 and float(images[0].mean()) == pytest.approx(128 / 255)


def test_quantize_argument_errors(classifier) -> None:
    with pytest.raises(QuantizationError, match="method"):
        quantize(classifier, torch.rand(1, 3, 64, 64), method="kl")
    with pytest.raises(QuantizationError, match="matches no node"):
        quantize(classifier, torch.rand(1, 3, 64, 64), num_images=1, exclude=["/no/such/*"])


def test_unexportable_model_is_named() -> None:
    class Bad(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eig(x[0, 0])[0].real  # complex tensors do not export to ONNX

    with pytest.raises(QuantizationError, match="Bad cannot be exported"):
        quantize(Bad().eval(), torch.rand(1, 3, 32, 32), num_images=1)


@pytest.fixture(scope="module")
def ssdlite() -> torch.nn.Module:
    torch.manual_seed(0)
    return _trained_like(get_model("ssdlite320_ghostnet", num_classes=3, width=0.5))


SSD_IMAGES = [torch.rand(3, 150, 170, generator=torch.Generator().manual_seed(4)), torch.rand(3, 320, 320)]
SSD_CALIB = torch.rand(4, 3, 180, 200, generator=torch.Generator().manual_seed(3))


def test_ssdlite_wrapper_is_the_eval_model(ssdlite, tmp_path: Path) -> None:
    """The wrapper's fp32 pre/post-processing, rebuilt from the archive's parameters (torchvision's transform and
    postprocess_detections, the saved default boxes), reproduces the eval model exactly when its core does; the
    fp32 ONNX core matches the torch network within 1e-4."""
    fp32 = quantize(ssdlite, SSD_CALIB, num_images=1, int8=False)
    fp32.save(tmp_path / "fp32.zip")
    loaded = load_quantized(tmp_path / "fp32.zip")
    net, _ = exportable(ssdlite)
    with torch.inference_mode():
        x = net.preprocess(SSD_IMAGES)
        core = flatten_outputs(net(x))
        assert max(float((a - b).abs().max()) for a, b in zip(core, loaded.core(x))) < 1e-4
        ref = ssdlite(SSD_IMAGES)
        loaded.core = lambda t: flatten_outputs(net(t))  # the same core numbers: the rest must agree exactly
        got = loaded(SSD_IMAGES)
    for r, g in zip(ref, got):
        assert set(r) == set(g) and len(r["boxes"]) > 0
        for k in r:
            assert r[k].dtype == g[k].dtype and torch.allclose(r[k], g[k], atol=1e-5), k


@pytest.mark.slow
def test_ssdlite_int8(ssdlite) -> None:
    """SSDLite-Ghost int8: the core's outputs are within 5% of fp32's, the detections have the eval format."""
    with torch.inference_mode():
        net, _ = exportable(ssdlite)
        x = net.preprocess(SSD_IMAGES)
        ref_core = flatten_outputs(net(x))
    q = quantize(ssdlite, SSD_CALIB, num_images=4)
    assert _rel_l2(ref_core, q.core(x)) < 0.05
    out = q(SSD_IMAGES)
    assert [sorted(d) for d in out] == [["boxes", "labels", "scores"]] * 2 and out[0]["boxes"].shape[1] == 4


def _core_error(model: torch.nn.Module, q, x) -> float:
    net, _ = exportable(model)
    with torch.inference_mode():
        ref = flatten_outputs(net(x))
    return _rel_l2(ref, q.core(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deeplabv3_ghostnet", "lraspp_ghostnet"])
def test_segmenters_int8(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _trained_like(get_model(name, num_classes=3, width=0.5))
    q = quantize(model, torch.rand(4, 3, 96, 96), num_images=4)
    x = torch.rand(1, 3, 96, 128)
    with torch.inference_mode():
        ref = model(x)
    got = q(x)
    assert list(got) == list(ref) and got["out"].shape == ref["out"].shape == (1, 3, 96, 128)
    assert _rel_l2([ref["out"]], [got["out"]]) < 0.1
    # the final upsampling stays fp32: its Resize is not preceded by a DequantizeLinear of its own output
    ops = qdq_count(q)
    assert ops.get("Resize", 0) >= 1
    q.save(tmp_path / "s.zip")
    assert torch.equal(load_quantized(tmp_path / "s.zip")(x)["out"], got["out"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["retinanet_ghostnet_fpn", "fcos_ghostnet_fpn", "fasterrcnn_ghostnet_fpn", "maskrcnn_ghostnet_fpn"]
)
def test_fpn_detectors_int8(name: str, tmp_path: Path) -> None:
    """Backbone + head(s) int8; the torch shell around them reproduces the eval model around an fp32 core
    (Mask R-CNN like Faster R-CNN: its RoI box and mask heads stay in the fp32 shell, masks included)."""
    torch.manual_seed(0)
    model = _trained_like(get_model(name, num_classes=3, width=0.5, min_size=128, max_size=160))
    images = [torch.rand(3, 128, 160), torch.rand(3, 120, 150)]
    fp32 = quantize(model, torch.rand(2, 3, 128, 160), num_images=2, int8=False)
    fp32.save(tmp_path / "d.zip")
    assert b"ghost_vision" not in zipfile.ZipFile(tmp_path / "d.zip").read("shell.pt")  # torchvision classes only
    loaded = load_quantized(tmp_path / "d.zip")
    net, _ = exportable(model)
    with torch.inference_mode():
        ref = model(images)
        loaded.core = lambda t: flatten_outputs(net(t))
        got = loaded(images)
    for r, g in zip(ref, got):
        assert set(r) == set(g)
        for k in r:
            assert torch.allclose(r[k].float(), g[k].float(), atol=1e-4), k
    q = quantize(model, torch.rand(2, 3, 128, 160), num_images=2)
    x = net.preprocess(images) if hasattr(net, "preprocess") else model.transform(images)[0].tensors
    assert _core_error(model, q, x) < 0.1
    keys = ["boxes", "labels", "masks", "scores"] if name.startswith("mask") else ["boxes", "labels", "scores"]
    assert [sorted(d) for d in ref] == [sorted(d) for d in q(images)] == [keys] * 2


@pytest.mark.slow
def test_ghostnetv3_int8_is_the_fused_form() -> None:
    torch.manual_seed(0)
    model = _trained_like(create_ghostnet("ghostnetv3_050", num_classes=10))
    keys = list(model.state_dict())
    q = quantize(model, torch.rand(4, 3, 64, 64), num_images=4)
    assert list(model.state_dict()) == keys  # the branches were fused on a copy: the caller's model is untouched
    ops = qdq_count(q)
    assert ops.get("Conv", 0) == 0 and ops["QLinearConv"] > 0
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
    assert _rel_l2([ref], [q(x)]) < 0.05


@pytest.mark.slow
def test_sensitivity_ranks_groups(classifier) -> None:
    from ghost_vision.deploy.quantize import sensitivity

    rows = sensitivity(classifier, torch.rand(4, 3, 64, 64), num_images=4, depth=3)
    assert len(rows) >= 3 and all(r["error"] >= 0 for r in rows)
    assert [r["error"] for r in rows] == sorted((r["error"] for r in rows), reverse=True)
    q = quantize(classifier, torch.rand(4, 3, 64, 64), num_images=4, exclude=[rows[0]["exclude"]])
    assert q.meta["exclude"] == [rows[0]["exclude"]]


def _export_ghostnet_050(tmp_path: Path, flag: str) -> dict:
    """``ghost-vision export ghostnet_050 FLAG`` at 64 px, calibrated on a folder of three small images."""
    from PIL import Image

    from ghost_vision.commands.export import main

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        Image.new("RGB", (96, 80), (40 * i, 90, 200)).save(calib / f"{i}.png")
    return main(["ghostnet_050", "--num-classes", "5", "--size", "64", "64", "--formats", "onnx", "--out",
                 str(tmp_path / "out"), flag, "--calib", str(calib), "--calib-images", "3"])


@pytest.mark.slow
def test_cli_export_int8(tmp_path: Path) -> None:
    from ghost_vision.commands.export import main

    report = _export_ghostnet_050(tmp_path, "--int8")
    q = load_quantized(report["int8"]["path"])
    assert q(torch.rand(1, 3, 64, 64)).shape == (1, 5)
    assert report["int8"]["fused_graph"]["Conv"] == 0
    with pytest.raises(SystemExit):
        main(["ghostnet_050", "--int8", "--out", str(tmp_path / "o2")])  # no --calib
    with pytest.raises(SystemExit):
        main(["ghostnet_050", "--sensitivity", "--out", str(tmp_path / "o2")])


@pytest.mark.slow
def test_cli_export_sensitivity(tmp_path: Path, capsys) -> None:
    """``export --sensitivity``: the JSON holds the node groups worst first, each with its ``--exclude``
    pattern, and the printed list names the worst one."""
    report = _export_ghostnet_050(tmp_path, "--sensitivity")
    rows = json.loads(Path(report["int8_sensitivity"]["path"]).read_text())
    assert len(rows) == report["int8_sensitivity"]["groups"] >= 5
    assert [r["error"] for r in rows] == sorted((r["error"] for r in rows), reverse=True) and rows[-1]["error"] >= 0
    assert report["int8_sensitivity"]["worst"] == rows[0]["exclude"]
    assert f"--exclude '{rows[0]['exclude']}'" in capsys.readouterr().out


def test_missing_onnxruntime_names_the_extra(monkeypatch, classifier, tmp_path: Path) -> None:
    import sys

    from ghost_vision._optional import MissingExtraError

    for name in ("onnxruntime", "onnxruntime.quantization"):
        monkeypatch.setitem(sys.modules, name, None)  # what `import onnxruntime` sees when absent
    with pytest.raises(MissingExtraError, match=r"pip install 'ghost-vision\[onnx\]'"):
        quantize(classifier, torch.rand(1, 3, 64, 64), num_images=1)
    with pytest.raises(MissingExtraError, match="onnxruntime"):
        load_quantized(tmp_path / "any.zip")
