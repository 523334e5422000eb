"""GhostNetV3 through the command line: it trains in its multi-branch form, the checkpoint keeps that form,
and ``tools/eval.py`` / ``tools/infer.py --fast`` work on it (the fast path fuses the branches)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, tiny_args
from test_cli import run_tool, train_tiny

from ghost_vision.cli import load_task
from ghost_vision.deploy import optimize
from ghost_vision.models.layers_v3 import GhostBottleneckV3

CONFIG = "ssdlite_ghostv3_shapes.yaml"


@pytest.mark.slow
def test_ssdlite_v3_train_eval_infer_fast(tmp_path_factory, tmp_path):
    run = train_tiny(CONFIG, tmp_path_factory.mktemp("ssdlite_v3"))
    state = torch.load(run["last"], map_location="cpu", weights_only=False)["state_dict"]
    assert any("_rpr_conv.2.bn1.running_var" in k for k in state), "checkpoints keep the training form"

    out = tmp_path / "eval.json"
    metrics = run_tool("eval", str(CONFIGS / CONFIG), *tiny_args(CONFIG, tmp_path / "eval", data_root=run["tmp"] / "data"),
                       "--ckpt_path", str(run["best"][0]), "--output", str(out))
    assert json.loads(out.read_text()) == run["metrics"] == metrics

    images = sorted((run["tmp"] / "data" / "val2017").glob("*"))[:1]
    written = run_tool("infer", "--ckpt_path", str(run["last"]), *map(str, images), "--out", str(tmp_path / "fast"),
                       "--score_thresh", "0.0", "--fast")
    assert [p.name for p in written] == [f"{p.stem}_pred.png" for p in images]

    model = load_task(run["last"]).eval().model
    assert any(isinstance(m, GhostBottleneckV3) for m in model.modules())
    image = torch.rand(3, 240, 300)
    with torch.inference_mode():
        ref, got = model([image])[0], optimize(model)([image])[0]
    assert any(isinstance(m, GhostBottleneckV3) for m in model.modules()), "optimize() works on a copy"
    torch.testing.assert_close(got["scores"][:20], ref["scores"][:20], atol=1e-4, rtol=1e-4)
