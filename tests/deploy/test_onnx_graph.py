"""``optimize_for_onnx`` (concat-free Ghost modules) and ``freeze_network`` (TorchScript parts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_optimize import _assert_close, _randomize_bn  # tests/deploy is on sys.path (rootdir-less prepend)
from torch import nn

from ghost_vision.deploy import (
    ConcatFreeGhostModule,
    FusedGhostModule,
    FusedGhostModuleV2,
    optimize,
    optimize_for_onnx,
)
from ghost_vision.deploy.export import export_onnx
from ghost_vision.deploy.script import freeze_network
from ghost_vision.models import create_ghostnet
from ghost_vision.models.layers import GhostModule, GhostModuleV2


@pytest.mark.parametrize(
    "cls,in_chs,out_chs,use_act,dilation",
    [(GhostModule, 8, 27, True, 1), (GhostModule, 12, 32, False, 1), (GhostModule, 16, 40, True, 2),
     (GhostModuleV2, 16, 48, True, 1), (GhostModuleV2, 10, 25, True, 2)],
)
def test_concat_free_module_is_exact(cls, in_chs: int, out_chs: int, use_act: bool, dilation: int) -> None:
    torch.manual_seed(0)
    src = _randomize_bn(cls(in_chs, out_chs, use_act=use_act, dilation=dilation)).eval()
    fused = (FusedGhostModuleV2 if cls is GhostModuleV2 else FusedGhostModule)(src)
    cf = ConcatFreeGhostModule(fused).eval()
    assert cf.primary.out_channels == out_chs and cf.cheap.groups == out_chs  # no concat, no slice
    x = torch.randn(2, in_chs, 19, 23)
    with torch.no_grad():
        _assert_close(src(x), cf(x), atol=1e-5)


def _concat_nodes(path: Path) -> int:
    onnx = pytest.importorskip("onnx")
    return sum(node.op_type == "Concat" for node in onnx.load(str(path)).graph.node)


def test_optimize_for_onnx_removes_unaligned_concats(tmp_path: Path) -> None:
    """align=0: no Concat at all; default: only those onnxruntime keeps in its blocked layout (16-multiples)."""
    pytest.importorskip("onnxruntime")
    model = _randomize_bn(create_ghostnet("ghostnet_100", features_only=True)).eval()
    modules = [m for m in model.modules() if isinstance(m, GhostModule)]
    assert len(modules) == 32
    aligned = sum(m.primary_conv[0].out_channels % 16 == 0 and m.out_chs % 2 == 0 for m in modules)
    assert 0 < aligned < 32
    x = torch.rand(1, 3, 96, 128)
    for align, expected in ((0, 0), (16, aligned), (1, 32)):
        rep = export_onnx(optimize_for_onnx(model, align=align), x, tmp_path / f"a{align}.onnx")
        assert rep["max_abs_diff"] < 1e-4
        assert _concat_nodes(tmp_path / f"a{align}.onnx") == expected, align
    with torch.no_grad():
        _assert_close(model(x), optimize_for_onnx(model, align=0)(x), atol=1e-5)


def test_optimize_for_onnx_keeps_the_plain_model() -> None:
    model = create_ghostnet("ghostnet_050").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimize_for_onnx(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="eval"):
        optimize_for_onnx(create_ghostnet("ghostnet_050"))


class _NotScriptable(nn.Module):
    """A leaf with parameters whose forward TorchScript refuses (varargs)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 1, 1))

    def forward(self, x, *rest):
        return torch.nn.functional.conv2d(x, self.weight)


def test_unscriptable_parts_stay_eager_with_a_warning() -> None:
    model = nn.Sequential(create_ghostnet("ghostnet_050", features_only=True, out_indices=(0,)))
    model = nn.ModuleDict({"ghost": model, "odd": _NotScriptable()}).eval()
    frozen, kept = freeze_network(model)
    assert isinstance(frozen["ghost"], torch.jit.ScriptModule)
    assert not isinstance(frozen["odd"], torch.jit.ScriptModule)
    assert len(kept) == 1 and kept[0].startswith("odd (")

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.odd = create_ghostnet("ghostnet_050", num_classes=3), _NotScriptable()

        def forward(self, x):
            return self.body(x), self.odd(x)

    holder = Holder().eval()
    with pytest.warns(UserWarning, match=r"stay eager: odd \(NotSupportedError"):
        fast = optimize(holder)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        _assert_close(holder(x), fast(x))
    assert isinstance(fast.body, torch.jit.ScriptModule)


def _expansion_widths(model: nn.Module) -> list[int]:
    from ghost_vision.deploy.onnx_graph import OnnxGhostBottleneck

    return [b.ghost1.cheap.out_channels for b in model.modules() if isinstance(b, OnnxGhostBottleneck)]


def test_expansions_padded_to_16_channels_exactly() -> None:
    """onnxruntime's int8 depthwise kernel works in blocks of 16 channels: every expansion a block keeps to
    itself is padded to a multiple of 16 with zero filters (outputs unchanged); the SSDLite extractor's tapped
    expansion (a feature map the head reads) keeps its width, and ``channel_multiple=1`` pads nothing."""
    from ghost_vision.models.detection import ssdlite320_ghostnet

    torch.manual_seed(0)
    model = _randomize_bn(create_ghostnet("ghostnet_100", num_classes=7)).eval()
    plain = _expansion_widths(optimize_for_onnx(model, channel_multiple=1))
    padded = _expansion_widths(optimize_for_onnx(model))
    assert [w for w in plain if w % 16] == [72, 72, 120, 200, 184, 184]  # GhostNet 1.0's unaligned expansions
    assert [-(-w // 16) * 16 for w in plain] == padded
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        _assert_close(model(x), optimize_for_onnx(model)(x), atol=1e-5)

    det = ssdlite320_ghostnet(num_classes=5, width=1.3).eval()
    det.backbone = _randomize_bn(det.backbone).eval()
    onnx_ready = optimize_for_onnx(det)
    tap = onnx_ready.backbone.expansion_taps()[0]
    assert tap.ghost1.cheap.out_channels == 872  # 1.3x: 4 * 218, read by the head, not padded
    assert all(w % 16 == 0 for w in _expansion_widths(onnx_ready) if w != 872)
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        _assert_close(det.backbone(x), onnx_ready.backbone(x), atol=1e-4)
        _assert_close(det.head(list(det.backbone(x).values())), onnx_ready.head(list(onnx_ready.backbone(x).values())),
                      atol=1e-4)
