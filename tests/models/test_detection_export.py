"""ONNX export of SSDLite-Ghost and its MACs against torchvision's (the guide's FPN example runs in tests/test_docs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ghost_vision.deploy.export import SSDHeadOutputs
from ghost_vision.models.detection import ssdlite320_ghostnet

# Measured with FlopCounterMode (MACs = flops / 2) on backbone + head, eval mode, 1 x 3 x 320 x 320.
SSDLITE_GHOSTNET_MACS = 535_802_048
TORCHVISION_SSDLITE_MACS = 583_171_904  # ssdlite320_mobilenet_v3_large, measured the same way (0.58 G)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _export(module: nn.Module, args: tuple, path: Path, **kwargs) -> None:
    try:  # the TorchScript-based exporter traces SSD's postprocessing (NMS) as well
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, **kwargs)
    except TypeError:  # a torch without the legacy exporter
        torch.onnx.export(module, args, str(path), dynamo=True, **kwargs)


def _calibrated_ssd() -> nn.Module:
    """A fresh SSDLite whose BatchNorm statistics come from one batch, so that its scores are not all tied
    (a freshly initialised network in eval mode predicts 1 / num_classes everywhere)."""
    torch.manual_seed(0)
    model = ssdlite320_ghostnet(num_classes=3, score_thresh=0.05, detections_per_img=100)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        x = model.transform([torch.rand(3, 320, 320), torch.rand(3, 320, 320)])[0].tensors
        model.head(list(model.backbone(x).values()))
    return model.eval()


def test_ssdlite_onnx_full_model_parity(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _calibrated_ssd()
    image = torch.rand(3, 320, 320)
    path = tmp_path / "ssdlite_ghostnet.onnx"
    _export(model, ([image],), path, input_names=["image"], output_names=["boxes", "scores", "labels"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        ref = model([image])[0]
    assert boxes.shape == tuple(ref["boxes"].shape) and len(boxes) > 10
    assert len(np.unique(scores)) == len(scores)  # no ties: the order is well defined
    o, r = np.argsort(-scores, kind="stable"), torch.argsort(ref["scores"], descending=True, stable=True).numpy()
    np.testing.assert_allclose(boxes[o], ref["boxes"].numpy()[r], atol=1e-3, rtol=0)  # pixels
    np.testing.assert_allclose(scores[o], ref["scores"].numpy()[r], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(labels[o], ref["labels"].numpy()[r])


def test_ssdlite_onnx_head_outputs_parity(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _calibrated_ssd()
    net = SSDHeadOutputs(model).eval()
    x = net.preprocess([torch.rand(3, 240, 400), torch.rand(3, 320, 320)])
    assert x.shape == (2, 3, 320, 320)
    path = tmp_path / "ssdlite_ghostnet_head.onnx"
    _export(net, (x,), path, input_names=["images"], output_names=["bbox_regression", "cls_logits"],
            dynamic_axes={"images": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reg, logits = session.run(None, {"images": x[:1].numpy()})  # another batch size than traced
    with torch.no_grad():
        ref_reg, ref_logits = net(x[:1])
    assert reg.shape == (1, 3234, 4) and logits.shape == (1, 3234, 3)
    np.testing.assert_allclose(reg, ref_reg.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=0)


def test_ssdlite_macs_below_torchvision() -> None:
    model = ssdlite320_ghostnet().eval()
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.head(list(model.backbone(x).values()))
    macs = counter.get_total_flops() / 2
    assert macs == pytest.approx(SSDLITE_GHOSTNET_MACS, rel=0.005)
    assert macs < TORCHVISION_SSDLITE_MACS and macs < 0.58e9
