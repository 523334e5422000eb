"""The synthetic writers: determinism, idempotence, and the properties the issue asks of the scenes."""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ghost_vision.data import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_COCO_CATEGORY_IDS,
    write_synthetic_cityscapes,
    write_synthetic_coco,
    write_synthetic_voc,
)

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("writer", [write_synthetic_coco, write_synthetic_voc, write_synthetic_cityscapes])
def test_same_bytes_twice_and_seed_matters(tmp_path, writer):
    a = _tree(writer(tmp_path / "a", num_train=3, num_val=1, seed=5))
    b = _tree(writer(tmp_path / "b", num_train=3, num_val=1, seed=5))
    c = _tree(writer(tmp_path / "c", num_train=3, num_val=1, seed=6))
    assert a == b
    assert len(a) >= 5 and a.keys() == c.keys()
    assert any(a[k] != c[k] for k in a if not k.endswith(".json") or "instances" in k)


def test_idempotent_and_regenerated_on_new_arguments(tmp_path):
    root = write_synthetic_voc(tmp_path / "voc", num_train=2, num_val=1)
    marker = root / ".complete.json"
    jpg = root / "VOC2007" / "JPEGImages" / "000000.jpg"
    stamp = (marker.stat().st_mtime_ns, jpg.stat().st_mtime_ns)
    write_synthetic_voc(tmp_path / "voc", num_train=2, num_val=1)
    assert (marker.stat().st_mtime_ns, jpg.stat().st_mtime_ns) == stamp
    write_synthetic_voc(tmp_path / "voc", num_train=3, num_val=1)
    assert json.loads(marker.read_text())["num_train"] == 3
    assert (root / "VOC2007/ImageSets/Main/train.txt").read_text() == "000000\n000001\n000002\n"
    assert not list(tmp_path.glob(".voc.tmp-*"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match="foreign"):
        write_synthetic_coco(foreign, num_train=1, num_val=1)
    assert (foreign / "mine.txt").read_text() == "x"


def test_coco_scene_properties(synthetic_coco_root):
    data = json.loads((synthetic_coco_root / "annotations" / "instances_train2017.json").read_text())
    assert [c["id"] for c in data["categories"]] == list(SYNTHETIC_COCO_CATEGORY_IDS) == [2, 5, 9, 17]
    assert [c["name"] for c in data["categories"]] == list(SYNTHETIC_CLASSES)
    images = {im["id"]: im for im in data["images"]}
    per_image: dict[int, list] = {i: [] for i in images}
    crowd = 0
    for a in data["annotations"]:
        im = images[a["image_id"]]
        h, w = im["height"], im["width"]
        seg = mask_utils.frPyObjects(a["segmentation"], h, w) if a["iscrowd"] else a["segmentation"]
        m = mask_utils.decode(seg)
        ys, xs = np.nonzero(m)
        x, y, bw, bh = a["bbox"]
        assert [x, y, x + bw, y + bh] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # exact tight box
        assert a["area"] == m.sum()
        if a["iscrowd"]:
            crowd += 1
            assert isinstance(a["segmentation"]["counts"], list)
            continue
        per_image[a["image_id"]].append([x, y, x + bw, y + bh])
        assert max(bw, bh) <= 0.6 * max(h, w) + 1
    assert crowd == 1
    counts = [len(b) for b in per_image.values()]
    assert max(counts) <= 6 and max(counts) >= 4 and sum(counts) >= 2 * len(counts)
    overlapping = sum(
        1 for boxes in per_image.values() for i, p in enumerate(boxes) for q in boxes[i + 1:]
        if min(p[2], q[2]) > max(p[0], q[0]) and min(p[3], q[3]) > max(p[1], q[1])
    )
    assert overlapping >= 1
    assert len({a["category_id"] for a in data["annotations"]}) >= 3
    for im in data["images"]:
        assert im["width"] != im["height"] and 240 <= min(im["width"], im["height"]) <= 300
        with Image.open(synthetic_coco_root / "train2017" / im["file_name"]) as img:
            assert img.size == (im["width"], im["height"]) and img.format == "JPEG"


def test_scenes_are_textured_and_varied(synthetic_voc_root):
    stds, sizes = [], []
    for path in sorted((synthetic_voc_root / "VOC2007" / "JPEGImages").glob("*.jpg")):
        arr = np.asarray(Image.open(path), dtype=np.float32)
        stds.append(float(arr[:8, :8].std()))  # a corner patch is noisy, never flat
        sizes.append(arr.shape[:2])
    assert min(stds) > 2.0
    assert len(set(sizes)) == len(sizes)


def test_cli_writes_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["make_synthetic.py", "cityscapes", str(tmp_path / "cs"), "--num-train", "2",
                                      "--num-val", "1", "--seed", "3"])
    runpy.run_path(str(REPO / "tools" / "make_synthetic.py"), run_name="__main__")
    assert "synthetic cityscapes dataset ready" in capsys.readouterr().out
    files = sorted(os.path.relpath(p, tmp_path / "cs") for p in (tmp_path / "cs").rglob("*.png"))
    assert len(files) == 6 and files[0].startswith("gtFine/train/")
    assert json.loads((tmp_path / "cs" / ".complete.json").read_text())["seed"] == 3
