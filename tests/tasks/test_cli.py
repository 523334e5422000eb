"""The command line on tiny synthetic data: ``tools/train.py`` (fit, then validate the best checkpoint),
``tools/eval.py``, ``tools/infer.py``, the test stage, and ``--print_config`` for every recipe.

Runs happen in-process (``runpy`` with a patched ``sys.argv``, exactly what ``python tools/x.py`` does)
to keep them at seconds; ``test_ddp_resume.py`` covers real subprocesses.
"""

from __future__ import annotations

import json
import runpy
import sys
import warnings
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch
from conftest import CONFIGS, REPO, tiny_args
from torchvision.io import decode_png, read_file

from ghost_vision.cli import GhostCLI, _make_cli, load_task
from ghost_vision.tasks import DetectionTask, SegmentationTask

COCO_KEYS = {"map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"}
SEG_KEYS = {"miou", "pixel_accuracy", "mean_accuracy", "loss"}


def run_tool(tool: str, *argv: str, monkeypatch: pytest.MonkeyPatch | None = None):
    """``python tools/<tool>.py argv...`` in this process; returns the tool's ``main()`` result if any."""
    mp = monkeypatch or pytest.MonkeyPatch()
    try:
        mp.setattr(sys, "argv", [str(REPO / "tools" / f"{tool}.py"), *argv])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ns = runpy.run_path(str(REPO / "tools" / f"{tool}.py"), run_name="not_main")
            return ns["main"]()
    finally:
        if monkeypatch is None:
            mp.undo()


def train_tiny(config: str, tmp: Path, **kw) -> dict:
    """Run tools/train.py on a recipe with tiny overrides; return paths and the metrics."""
    out = tmp / "final.json"
    run_tool("train", str(CONFIGS / config), *tiny_args(config, tmp, **kw), "--output", str(out))
    log_dir = tmp / "logs" / "version_0"
    ckpts = sorted((tmp / "ckpt").glob("best-*.ckpt"))
    return {"tmp": tmp, "log_dir": log_dir, "metrics": json.loads(out.read_text()), "best": ckpts,
            "last": tmp / "ckpt" / "last.ckpt", "config": config}


def _check_run(run: dict, keys: set[str]) -> None:
    assert keys <= set(run["metrics"]), sorted(run["metrics"])
    assert all(isinstance(v, float) for v in run["metrics"].values())
    assert run["last"].is_file() and len(run["best"]) == 1
    ckpt = torch.load(run["best"][0], map_location="cpu", weights_only=False)
    assert ckpt["num_classes"] == ckpt["hyper_parameters"]["num_classes"]
    # pictures: training curves and predictions drawn at the end of fit and of the final validate
    curves = json.loads((run["log_dir"] / "curves.json").read_text())
    assert curves and {"train/loss"} <= set(curves[-1]), curves
    assert any(k.startswith("val/") for k in curves[-1]), curves
    for png in ("curves.png", "predictions/fit_end.png", "predictions/validate.png"):
        assert (run["log_dir"] / png).stat().st_size > 1000, png
    # the config LightningCLI saved re-creates the run
    assert (run["log_dir"] / "config.yaml").is_file()


def _check_eval_and_test(run: dict, task_cls: type, prefix_keys: set[str], tmp_path: Path) -> None:
    """tools/eval.py on the best checkpoint gives the same flat JSON as the run's final validate; the
    test stage (Trainer.test through the task's test_step) agrees as well."""
    out = tmp_path / "eval.json"
    metrics = run_tool("eval", str(CONFIGS / run["config"]), *tiny_args(run["config"], tmp_path / "eval",
                       data_root=run["tmp"] / "data"), "--ckpt_path", str(run["best"][0]), "--output", str(out))
    assert json.loads(out.read_text()) == run["metrics"] == metrics

    task = load_task(run["best"][0])
    assert type(task) is task_cls
    cli_data = {"ssdlite_ghost_shapes.yaml": "SyntheticCocoDataModule",
                "fasterrcnn_ghost_fpn_shapes.yaml": "SyntheticCocoDataModule",
                "maskrcnn_ghost_fpn_shapes.yaml": "SyntheticCocoDataModule",
                "deeplabv3_ghost_shapes.yaml": "SyntheticCityscapesDataModule"}[run["config"]]
    import ghost_vision.data as gd

    dm_kwargs = {"root": str(run["tmp"] / "data"), "num_train": 8, "num_val": 4, "num_workers": 0}
    if task_cls is DetectionTask:
        dm_kwargs["val_batch_size"] = 1
    if run["config"].startswith("maskrcnn"):
        dm_kwargs["masks"] = True
    dm = getattr(gd, cli_data)(**dm_kwargs)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_test_batches=2, default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = trainer.test(task, datamodule=dm, verbose=False)
    test = {k.removeprefix("test/"): v for k, v in results[0].items()}
    assert prefix_keys <= set(test)
    assert test == pytest.approx(run["metrics"], abs=1e-6, nan_ok=True)


@pytest.fixture(scope="module")
def ssdlite_run(tmp_path_factory):
    return train_tiny("ssdlite_ghost_shapes.yaml", tmp_path_factory.mktemp("ssdlite"))


def test_ssdlite_fit_validate_writes_metrics_checkpoints_pictures(ssdlite_run):
    _check_run(ssdlite_run, COCO_KEYS)
    assert (ssdlite_run["log_dir"] / "metrics.json").is_file() is False  # --output replaces the default file


def test_ssdlite_eval_and_test_stage_match_validate(ssdlite_run, tmp_path):
    _check_eval_and_test(ssdlite_run, DetectionTask, COCO_KEYS, tmp_path)


def test_infer_writes_pictures(ssdlite_run, tmp_path):
    images = sorted((ssdlite_run["tmp"] / "data" / "val2017").glob("*"))[:2]
    written = run_tool("infer", "--ckpt_path", str(ssdlite_run["last"]), *map(str, images),
                       "--out", str(tmp_path / "pred"), "--score_thresh", "0.0")
    assert [p.name for p in written] == [f"{p.stem}_pred.png" for p in images]
    for png, src in zip(written, images):
        drawn = decode_png(read_file(str(png)))
        from PIL import Image

        assert drawn.shape[0] == 3 and tuple(drawn.shape[1:]) == Image.open(src).size[::-1]
    fast = run_tool("infer", "--ckpt_path", str(ssdlite_run["last"]), *map(str, images),
                    "--out", str(tmp_path / "fast"), "--score_thresh", "0.0", "--fast")
    assert [decode_png(read_file(str(p))).shape for p in fast] == [decode_png(read_file(str(p))).shape for p in written]
    # the optimized path predicts what the trained model predicts (top scores; NMS ties may reorder the tail)
    from ghost_vision.deploy import optimize

    model = load_task(ssdlite_run["last"]).eval().model
    image = torch.rand(3, 240, 300)
    with torch.inference_mode():
        ref, got = model([image])[0], optimize(model)([image])[0]
    assert len(ref["scores"]) >= 5, "the tiny run should still propose boxes above SSD's 0.01 score floor"
    torch.testing.assert_close(got["scores"][:20], ref["scores"][:20], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["boxes"][:5], ref["boxes"][:5], atol=1e-2, rtol=1e-4)


def test_eval_needs_an_existing_checkpoint(ssdlite_run, tmp_path):
    args = tiny_args("ssdlite_ghost_shapes.yaml", tmp_path, data_root=ssdlite_run["tmp"] / "data")
    with pytest.raises(SystemExit, match="needs --ckpt_path"):
        run_tool("eval", str(CONFIGS / "ssdlite_ghost_shapes.yaml"), *args)
    with pytest.raises(SystemExit, match="checkpoint not found"):
        run_tool("eval", str(CONFIGS / "ssdlite_ghost_shapes.yaml"), *args, "--ckpt_path", str(tmp_path / "x.ckpt"))


def test_init_from_real_checkpoint_loads_backbone_skips_head(ssdlite_run):
    """Fine-tuning the SSDLite checkpoint (5 classes) on 3 classes: backbone loaded, class head fresh."""
    trained = torch.load(ssdlite_run["last"], map_location="cpu", weights_only=False)["state_dict"]
    task = DetectionTask("ssdlite320_ghostnet", num_classes=3, model_kwargs={"width": 0.5},
                         init_from=str(ssdlite_run["last"]))
    own = task.state_dict()
    backbone = [k for k in trained if k.startswith("model.backbone.")]
    cls_head = [k for k in trained if "classification_head" in k and trained[k].shape != own[k].shape]
    assert backbone and cls_head
    assert all(torch.equal(own[k], trained[k]) for k in backbone)
    assert task.init_report["skipped"] == len(cls_head)
    with pytest.raises(ValueError, match="trained with num_classes=5 but this model has num_classes=3"):
        DetectionTask.load_from_checkpoint(ssdlite_run["last"], num_classes=3)


def test_segmentation_fit_validate_eval_test(tmp_path_factory, tmp_path):
    run = train_tiny("deeplabv3_ghost_shapes.yaml", tmp_path_factory.mktemp("deeplab"))
    _check_run(run, SEG_KEYS)
    _check_eval_and_test(run, SegmentationTask, SEG_KEYS, tmp_path)


def test_fasterrcnn_fit_validate_eval_test(tmp_path_factory, tmp_path):
    run = train_tiny("fasterrcnn_ghost_fpn_shapes.yaml", tmp_path_factory.mktemp("frcnn"))
    _check_run(run, COCO_KEYS)
    _check_eval_and_test(run, DetectionTask, COCO_KEYS, tmp_path)


@pytest.mark.slow
def test_maskrcnn_fit_validate_eval_test_infer(tmp_path_factory, tmp_path):
    """The Mask R-CNN recipe end to end: box and mask AP (segm_*) from fit's validate, eval and test; infer
    draws the masks."""
    run = train_tiny("maskrcnn_ghost_fpn_shapes.yaml", tmp_path_factory.mktemp("maskrcnn"))
    _check_run(run, COCO_KEYS | {f"segm_{k}" for k in COCO_KEYS})
    _check_eval_and_test(run, DetectionTask, COCO_KEYS | {f"segm_{k}" for k in COCO_KEYS}, tmp_path)
    image = next((run["tmp"] / "data" / "val2017").glob("*.jpg"))
    written = run_tool("infer", "--ckpt_path", str(run["best"][0]), str(image), "--out", str(tmp_path / "pred"),
                       "--score_thresh", "0")
    assert written[0].stat().st_size > 1000


@pytest.mark.slow
def test_nanodet_recipe_fits_validates_and_infers(tmp_path):
    """NanoDet-Plus goes through the detection task, the COCO metric and infer (plain and fast) unchanged."""
    run = train_tiny("nanodet_ghost_shapes.yaml", tmp_path / "run", epochs=2)
    _check_run(run, COCO_KEYS)
    ckpt = torch.load(run["last"], map_location="cpu", weights_only=False)
    assert any(k.startswith("model.aux_head.") for k in ckpt["state_dict"])  # trained with the assist head
    images = sorted((run["tmp"] / "data" / "val2017").glob("*"))[:2]
    for extra in ([], ["--fast"]):
        written = run_tool("infer", "--ckpt_path", str(run["last"]), *map(str, images), "--out",
                           str(tmp_path / f"pred{len(extra)}"), "--score_thresh", "0.0", *extra)
        assert [p.name for p in written] == [f"{p.stem}_pred.png" for p in images]


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_print_config(config, capsys):
    with pytest.raises(SystemExit) as exc:
        run_tool("train", str(CONFIGS / config), "--print_config")
    assert exc.value.code in (0, None)
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("ghost_vision.tasks.")
    assert printed["data"]["class_path"].startswith("ghost_vision.data.")
    assert printed["checkpoint"]["save_last"] is True and printed["checkpoint"]["monitor"].startswith("val/")
    assert "optimizer" not in printed  # the tasks own the optimizer set-up


def test_ema_callback_validates_and_checkpoints_the_averaged_weights(tmp_path):
    """Lightning's EMAWeightAveraging as a recipe option: the checkpoint's ``state_dict`` holds the averaged
    weights (the raw ones in ``current_model_state``), and they are what validation and tools/eval.py see."""
    config = "ssdlite_ghost_shapes.yaml"
    # decay 0.999: the average stays near the weights after step 1; a large LR without warm-up moves the raw
    # weights far from those in 3 steps, so the two evaluate differently
    ema = "[{class_path: lightning.pytorch.callbacks.EMAWeightAveraging, init_args: {decay: 0.999}}]"
    out = tmp_path / "final.json"
    run_tool("train", str(CONFIGS / config), *tiny_args(config, tmp_path, train_batches=3),
             "--trainer.callbacks", ema, "--model.init_args.lr", "0.02", "--model.init_args.warmup_epochs", "0",
             "--output", str(out))
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw if raw[k].is_floating_point())
    # evaluating the checkpoint without the callback (the averaged state_dict) reproduces the run's metrics
    best = sorted((tmp_path / "ckpt").glob("best-*.ckpt"))[0]
    metrics = run_tool("eval", str(CONFIGS / config), *tiny_args(config, tmp_path / "eval", data_root=tmp_path / "data"),
                       "--trainer.callbacks", "null", "--ckpt_path", str(best))
    assert metrics == json.loads(out.read_text())
    # ... and the raw weights score differently (so the comparison above can fail)
    raw_ckpt = {**torch.load(best, map_location="cpu", weights_only=False)}
    raw_ckpt["state_dict"] = raw_ckpt.pop("current_model_state")
    torch.save(raw_ckpt, tmp_path / "raw.ckpt")
    raw_metrics = run_tool("eval", str(CONFIGS / config), *tiny_args(config, tmp_path / "eval_raw",
                           data_root=tmp_path / "data"), "--trainer.callbacks", "null", "--ckpt_path",
                           str(tmp_path / "raw.ckpt"))
    assert raw_metrics != metrics, metrics


REAL_DATA_CONFIGS = ["deeplabv3_ghost_cityscapes.yaml", "deeplabv3_ghost_voc.yaml", "fasterrcnn_ghost_fpn_coco.yaml",
                     "maskrcnn_ghost_fpn_coco.yaml", "nanodet_ghost_coco.yaml", "ssdlite_ghost_coco.yaml",
                     "ssdlite_ghost_voc.yaml"]


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_real_data_recipes_name_imagenet_weights(config, capsys, monkeypatch):
    """Real-data recipes start from named ImageNet weights (from scratch with ``... weights_backbone null``);
    the synthetic-shapes recipes train from scratch. ``--print_config`` resolves without downloading."""
    import yaml

    from ghost_vision.models import list_weights

    def printed(*extra: str) -> dict:
        with pytest.raises(SystemExit) as exc:
            run_tool("train", str(CONFIGS / config), *extra, "--print_config")
        assert exc.value.code in (0, None)
        return yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["model_kwargs"] or {}

    kwargs = printed()
    if config in REAL_DATA_CONFIGS:
        assert kwargs["weights_backbone"] == "ghostnet_100.in1k" and "ghostnet_100.in1k" in list_weights()
        # the from-scratch override reaches the builder as a real None
        monkeypatch.setattr(sys, "argv", ["train.py"])
        with mock.patch.object(GhostCLI, "instantiate_classes", lambda self: None):
            cli = _make_cli(["--config", str(CONFIGS / config), "--model.init_args.model_kwargs.weights_backbone",
                             "null"])
        scratch = cli.config["model"]["init_args"]["model_kwargs"]
        assert scratch["weights_backbone"] is None and {k: v for k, v in scratch.items() if k != "weights_backbone"} \
            == {k: v for k, v in kwargs.items() if k != "weights_backbone"}
    else:
        # the synthetic recipes (shapes, and the folder recipe's synthetic default) train from scratch
        data = yaml.safe_load((CONFIGS / config).read_text())["data"]["class_path"]
        assert data.startswith("ghost_vision.data.Synthetic") and kwargs.get("weights_backbone") is None


def test_config_errors_get_clear_messages(capsys):
    with pytest.raises(SystemExit):
        run_tool("train", str(CONFIGS / "ssdlite_ghost_shapes.yaml"), "--model.init_args.lr", "fast")
    err = capsys.readouterr().err
    assert "lr" in err and "fast" in err


@pytest.mark.slow
def test_eval_int8_prints_fp32_and_int8(ssdlite_run, tmp_path, capsys):
    """``eval --int8``: the fp32 metrics are the run's, the int8 ones (``int8/...``) every COCO key, side by side."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "eval_int8.json"
    metrics = run_tool("eval", str(CONFIGS / ssdlite_run["config"]), *tiny_args(
        ssdlite_run["config"], tmp_path / "eval", data_root=ssdlite_run["tmp"] / "data"),
        "--ckpt_path", str(ssdlite_run["best"][0]), "--output", str(out), "--int8")
    saved = json.loads(out.read_text())
    assert {k: saved[k] for k in ssdlite_run["metrics"]} == ssdlite_run["metrics"]
    assert {f"int8/{k}" for k in COCO_KEYS} <= set(saved) and saved["int8_settings"]["activation_type"] == "QUInt8"
    assert metrics == {k: v for k, v in saved.items() if k != "int8_settings"}
    printed = capsys.readouterr().out
    assert "int8-fp32" in printed and "map_50" in printed
