"""The installed product's surface: the ``ghost-vision`` dispatcher, packaged recipes addressed by name,
package metadata (no upper bounds, extras), errors naming the missing extra, and predict-and-draw."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ghost_vision._optional import MissingExtraError, require
from ghost_vision.cli import config_args
from ghost_vision.commands import COMMANDS, main, run
from ghost_vision.recipes import RECIPES_DIR, list_recipes, recipe_path

REPO = Path(__file__).resolve().parents[1]
EXTRA_HINT = "pip install 'ghost-vision[onnx]'"


def test_one_copy_of_each_recipe_inside_the_package():
    top = REPO / "configs"
    assert top.is_symlink() and top.resolve() == RECIPES_DIR.resolve()
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    assert names and list(list_recipes()) == names
    assert {"ssdlite_ghost_shapes", "deeplabv3_ghost_shapes", "ssdlite_ghost_coco"} <= set(names)


def test_configs_lists_each_recipe_with_its_first_comment_line(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(list(RECIPES_DIR.glob("*.yaml")))
    first = (RECIPES_DIR / "ssdlite_ghost_shapes.yaml").read_text().splitlines()[0]
    assert first.startswith("# ")
    row = next(line for line in out if line.startswith("ssdlite_ghost_shapes "))
    assert row.split(None, 1)[1] == first[2:].strip()


def test_configs_name_prints_the_yaml(capsys):
    assert main(["configs", "deeplabv3_ghost_voc"]) == 0
    assert capsys.readouterr().out == (RECIPES_DIR / "deeplabv3_ghost_voc.yaml").read_text()


def test_recipe_by_name_or_path(tmp_path):
    packaged = RECIPES_DIR / "ssdlite_ghost_shapes.yaml"
    assert recipe_path("ssdlite_ghost_shapes") == packaged == recipe_path("ssdlite_ghost_shapes.yaml")
    own = tmp_path / "ssdlite_ghost_shapes.yaml"  # a file of the same name wins: paths are taken as given
    own.write_text("seed_everything: 1\n")
    assert recipe_path(own) == own
    assert config_args(["ssdlite_ghost_shapes", "--trainer.max_epochs", "2"]) == [
        "--config", str(packaged), "--trainer.max_epochs", "2"]
    assert config_args(["--config", "deeplabv3_ghost_shapes", "--config=ssdlite_ghost_voc"]) == [
        "--config", str(RECIPES_DIR / "deeplabv3_ghost_shapes.yaml"), f"--config={RECIPES_DIR / 'ssdlite_ghost_voc.yaml'}"]
    assert config_args([str(own), "--print_config"]) == ["--config", str(own), "--print_config"]
    with pytest.raises(FileNotFoundError, match=r"'nope.yaml' is neither a YAML file nor a packaged recipe.*"
                                                r"ssdlite_ghost_shapes"):
        config_args(["nope.yaml"])


def test_dispatcher_usage_and_errors(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    for name in ("train", "eval", "infer", "export", "benchmark", "configs"):
        assert re.search(rf"^  {name} +\S", usage, re.M), name
    assert set(COMMANDS) >= {"train", "eval", "infer", "export", "benchmark", "configs"}
    assert main(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="error: config not found: 'nope'"):
        main(["train", "nope"])


def test_python_dash_m_and_the_tools_shim_run_the_same_command():
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    by_module = subprocess.run([sys.executable, "-m", "ghost_vision", "configs"], capture_output=True, text=True,
                               env=env, cwd=REPO / "tests", timeout=120)
    assert by_module.returncode == 0, by_module.stderr[-2000:]
    assert by_module.stdout.count("\n") == len(list_recipes())
    shim = (REPO / "tools" / "train.py").read_text()
    assert "sys.path" not in shim and "from ghost_vision.cli import train as main" in shim


def test_metadata_no_upper_bounds_tested_lower_bounds_and_extras():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower(): d for d in meta["dependencies"]}
    pins = dict(re.findall(r'"(torch|torchvision)==([\d.]+)"', (REPO / "Makefile").read_text()))
    assert deps["torch"] == f"torch>={pins['torch']}" and deps["torchvision"] == f"torchvision>={pins['torchvision']}"
    extras = meta["optional-dependencies"]
    assert {re.split(r"[<>=]", d)[0] for d in extras["onnx"]} == {"onnx", "onnxruntime", "onnxscript"}
    assert "ghost-vision[onnx]" in extras["dev"]
    assert not any(d.startswith("onnx") for d in meta["dependencies"])  # optional: the [onnx] extra
    assert meta["scripts"] == {"ghost-vision": "ghost_vision.commands:main"}


def test_missing_optional_package_names_the_extra(monkeypatch, tmp_path):
    from ghost_vision.commands import export as export_cmd
    from ghost_vision.deploy.export import export_onnx, export_torchscript, ort_session

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when absent
    with pytest.raises(MissingExtraError, match=re.escape(EXTRA_HINT)) as err:
        ort_session(tmp_path / "x.onnx")
    assert "'onnxruntime'" in str(err.value) and isinstance(err.value, ImportError)
    with pytest.raises(SystemExit, match=r"error: ONNX export .* needs the optional package 'onnxruntime'.*"
                                         + re.escape(EXTRA_HINT)):
        run(export_cmd.main, ["ghostnet_050", "--formats", "onnx", "--out", str(tmp_path)])
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtraError, match=r"ONNX export needs the optional package 'onnx'"):
        export_onnx(torch.nn.Conv2d(3, 4, 1), torch.rand(1, 3, 8, 8), tmp_path / "c.onnx")
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'ghost-vision[dev]'")):
        require("surely_not_installed_pkg", extra="dev", purpose="this check")
    # TorchScript export needs no extra
    conv = torch.nn.Conv2d(3, 4, 1).eval()
    report = export_torchscript(conv, torch.rand(1, 3, 8, 8), tmp_path / "c.pt")
    assert report["method"] == "script" and report["max_abs_diff"] < 1e-6


def test_predict_and_draw_segmentation_images_of_different_sizes(one_torch_thread):
    from ghost_vision.tasks import SegmentationTask
    from ghost_vision.tasks.callbacks import predict_and_draw
    from ghost_vision.visualize import draw_segmentation

    torch.manual_seed(0)
    task = SegmentationTask("lraspp_ghostnet", num_classes=3, model_kwargs={"width": 0.5}).eval()
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 64)]
    drawn = predict_and_draw(task, images)
    assert [tuple(d.shape) for d in drawn] == [(3, 64, 96), (3, 80, 64)] and drawn[0].dtype == torch.uint8
    with torch.no_grad():  # oracle: each image on its own through the model, then the drawing utility
        expected = [draw_segmentation(i, task.model(i[None])["out"].argmax(1)[0], num_classes=3) for i in images]
    assert all(torch.equal(d, e) for d, e in zip(drawn, expected))
    same = predict_and_draw(task, [images[0], images[0]])  # one batched forward for equal sizes
    assert torch.equal(same[0], expected[0]) and torch.equal(same[1], expected[0])
    assert predict_and_draw(task, []) == []
