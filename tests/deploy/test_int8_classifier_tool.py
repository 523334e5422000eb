"""tools/int8_classifier_accuracy.py's bookkeeping on a tiny budget (2 steps, a few crops, one variant): the
crops' labels against the COCO JSON read by pycocotools, the files, and the reported figures recomputed from
the saved predictions. No accuracy or timing assertions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
COCO = pytest.importorskip("pycocotools.coco").COCO

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("int8_classifier_accuracy",
                                                  REPO / "tools" / "int8_classifier_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_bookkeeping(tmp_path: Path) -> None:
    tool = _tool()
    out = tmp_path / "out"
    report = tool.main(["--out", str(out), "--data", str(tmp_path / "shapes"), "--models", "ghostnet_050",
                        "--num-train-images", "6", "--num-val-images", "4", "--size", "32", "--steps", "2",
                        "--batch", "4", "--calib", "4", "--rounds", "2"])
    saved = json.loads((out / "int8_classifiers.json").read_text())
    assert saved["results"][0]["model"] == "ghostnet_050" and saved["num_val"] == len(saved["val_labels"])
    assert "| ghostnet_050 |" in (out / "int8_classifiers.md").read_text()
    assert saved["settings"]["reduce_range"] == (not saved["cpu_features"]["vnni"])

    # every non-crowd annotation of val2017 gives exactly one crop, labelled with its category's name
    coco = COCO(str(tmp_path / "shapes" / "annotations" / "instances_val2017.json"))
    anns = [a for a in coco.dataset["annotations"] if not a["iscrowd"]]
    assert len(anns) == saved["num_val"] > 0
    for label, image_id, box in zip(saved["val_labels"], saved["val_image_ids"], saved["val_boxes"], strict=True):
        x0, y0, x1, y1 = box
        match = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
                 if max(abs(p - q) for p, q in zip(a["bbox"], (x0, y0, x1 - x0, y1 - y0))) < 1e-3]
        assert len(match) == 1
        assert saved["classes"][label] == coco.loadCats(match[0]["category_id"])[0]["name"]
    assert set(saved["val_labels"]) <= set(range(len(saved["classes"]))) and len(saved["classes"]) == 4

    # the reported figures are the saved predictions' (recomputed here)
    labels = saved["val_labels"]
    for r in saved["results"]:
        preds = r["predictions"]

        def acc(p, ref):
            return 100.0 * sum(a == b for a, b in zip(p, ref, strict=True)) / len(ref)

        assert r["fp32_top1"] == pytest.approx(acc(preds["fp32"], labels), abs=1e-9)
        assert r["fp32_ort_top1"] == pytest.approx(acc(preds["fp32_ort"], labels), abs=1e-9)
        assert r["int8_top1"] == pytest.approx(acc(preds["int8"], labels), abs=1e-9)
        assert r["agreement"] == pytest.approx(acc(preds["int8"], preds["fp32"]), abs=1e-9)
        assert r["delta_points"] == pytest.approx(r["int8_top1"] - r["fp32_top1"], abs=1e-9)
        assert r["int8_meta"]["calibration_images"] == 4 and set(r["latency_ms"]) == {"fp32_ort", "int8"}
    assert report["results"][0]["int8_top1"] == saved["results"][0]["int8_top1"]
