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
from pycocotools.coco import COCO

from ghost_vision.data import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_COCO_CATEGORY_IDS,
    SyntheticCocoDataModule,
    write_synthetic_cityscapes,
    write_synthetic_coco,
    write_synthetic_voc,
)
from ghost_vision.data.masks import mask_to_polygons
from ghost_vision.data.synthetic import _coco_scene, is_current, read_marker

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


def test_linked_dataset_of_other_settings_is_not_rewritten(tmp_path):
    shared = write_synthetic_coco(tmp_path / "shared", num_train=2, num_val=1)
    link = tmp_path / "link"
    link.symlink_to(shared, target_is_directory=True)
    assert write_synthetic_coco(link, num_train=2, num_val=1) == link  # the same settings: used as it is
    before = sorted(p.name for p in (shared / "val2017").iterdir())
    with pytest.raises(FileExistsError, match=r"link.*num_val 1 here, 2 asked.*root of its own"):
        write_synthetic_coco(link, num_train=2, num_val=2)
    assert link.is_symlink() and read_marker(shared)["num_val"] == 1
    assert sorted(p.name for p in (shared / "val2017").iterdir()) == before
    assert not list(tmp_path.glob(".link.tmp-*"))
    # a link to an empty folder, or to none yet: the dataset goes to the link's target, the link stays
    for name, make in (("empty", True), ("later", False)):
        target = tmp_path / "disk" / name
        if make:
            target.mkdir(parents=True)
        (tmp_path / f"{name}_link").symlink_to(target, target_is_directory=True)
        assert write_synthetic_coco(tmp_path / f"{name}_link", num_train=1, num_val=1) == tmp_path / f"{name}_link"
        assert (tmp_path / f"{name}_link").is_symlink() and read_marker(target)["num_train"] == 1
    assert not list((tmp_path / "disk").glob(".*tmp-*"))


def test_coco_scene_properties(synthetic_coco_root):
    ann_file = synthetic_coco_root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    coco = COCO(str(ann_file))
    assert [c["id"] for c in data["categories"]] == list(SYNTHETIC_COCO_CATEGORY_IDS) == [2, 5, 9, 17]
    assert [c["name"] for c in data["categories"]] == list(SYNTHETIC_CLASSES)
    images = {im["id"]: im for im in data["images"]}
    per_image: dict[int, list] = {i: [] for i in images}
    crowd = 0
    for a in data["annotations"]:
        im = images[a["image_id"]]
        h, w = im["height"], im["width"]
        m = coco.annToMask(a)
        ys, xs = np.nonzero(m)
        x, y, bw, bh = a["bbox"]
        assert [x, y, x + bw, y + bh] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # exact tight box
        assert a["area"] == m.sum()
        if a["iscrowd"]:
            crowd += 1
            assert isinstance(a["segmentation"]["counts"], list)
            continue
        assert isinstance(a["segmentation"], list) and all(len(p) >= 6 for p in a["segmentation"])
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


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_coco_polygons_decode_to_the_rendered_visible_pixels(synthetic_coco_root):
    # the scenes are drawn again from their seeds: each non-crowd polygon list, decoded by pycocotools, must
    # cover the shape's visible pixels (what later shapes leave of it), its bbox be the decoded mask's tight box
    ious, parts = [], []
    for split, code, count in (("train", 0, 12), ("val", 1, 4)):
        coco = COCO(str(synthetic_coco_root / "annotations" / f"instances_{split}2017.json"))
        for i, image_id in enumerate(sorted(coco.imgs)):
            h, w, scene = _coco_scene(0, code, i)
            anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
            assert len(anns) == len(scene.objects) and coco.imgs[image_id]["height"] == h
            for a, shape in zip(anns, scene.objects, strict=True):
                assert isinstance(a["segmentation"], list)
                m = coco.annToMask(a).astype(bool)
                ious.append(_iou(m, shape.mask))
                parts.append(len(a["segmentation"]))
                ys, xs = np.nonzero(m)
                x, y, bw, bh = a["bbox"]
                np.testing.assert_allclose([x, y, x + bw, y + bh], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                                           atol=1.0)
                assert a["area"] == m.sum()
        assert len(coco.imgs) == count
    assert len(ious) >= 30
    assert min(ious) == 1.0, (min(ious), np.mean(ious))  # exactly the visible pixels, as documented
    assert sum(p > 1 for p in parts) >= 1  # objects in several parts occur and decode


def test_mask_to_polygons_parts_and_holes():
    # hand-made masks, decoded by pycocotools: a blob in two parts, a ring (a hole COCO polygons cannot carry
    # directly), single pixels, a diagonal line of pixels touching only at corners
    h, w = 12, 14
    two = np.zeros((h, w), bool)
    two[1:4, 1:5] = two[7:11, 8:13] = True
    ring = np.zeros((h, w), bool)
    ring[2:10, 3:11] = True
    ring[4:7, 5:8] = False
    ring[8, 9] = False  # a second, one-pixel hole
    dots = np.zeros((h, w), bool)
    dots[0, 0] = dots[11, 13] = dots[5, 6] = True
    diagonal = np.eye(h, w, dtype=bool)
    for mask, n_parts in ((two, 2), (ring, None), (dots, 3), (diagonal, 1)):
        polygons = mask_to_polygons(mask)
        assert all(isinstance(v, float) for p in polygons for v in p)
        if n_parts is not None:
            assert len(polygons) == n_parts
        decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)
        np.testing.assert_array_equal(decoded, mask)
    assert len(mask_to_polygons(ring)) >= 3  # cut at both holes
    assert mask_to_polygons(np.zeros((3, 4), bool)) == []
    with pytest.raises(ValueError, match="H x W"):
        mask_to_polygons(np.zeros((2, 3, 4), bool))


def test_coco_cache_of_an_older_format_is_written_again(tmp_path):
    # a cache written by the previous writer (version 1: compressed RLE for every non-crowd mask) must not be
    # reused as it is, neither by the writer nor by the DataModule's setup() check
    root = write_synthetic_coco(tmp_path / "coco", num_train=2, num_val=1)
    ann_file = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    for a in data["annotations"]:
        if not a["iscrowd"]:
            im = next(i for i in data["images"] if i["id"] == a["image_id"])
            rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], im["height"], im["width"]))
            a["segmentation"] = {"counts": rle["counts"].decode("ascii"), "size": rle["size"]}
    ann_file.write_text(json.dumps(data))
    marker = root / ".complete.json"
    old = {**json.loads(marker.read_text()), "version": 1}
    marker.write_text(json.dumps(old))
    dm = SyntheticCocoDataModule(root=str(root), num_train=2, num_val=1, num_workers=0)
    with pytest.raises(FileNotFoundError, match="older version"):
        dm.setup("fit")
    dm.prepare_data()
    assert is_current(json.loads(marker.read_text()))
    assert all(isinstance(a["segmentation"], list) for a in json.loads(ann_file.read_text())["annotations"]
               if not a["iscrowd"])
    dm.setup("fit")
    stamp = marker.stat().st_mtime_ns
    write_synthetic_coco(root, num_train=2, num_val=1)  # the current version is reused as it is
    assert marker.stat().st_mtime_ns == stamp


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
