"""CocoDetection on the synthetic COCO data and on hand-made edge cases."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ghost_vision.data import CocoDetection, DataError


def _train(root, **kw):
    return CocoDetection(root / "train2017", root / "annotations" / "instances_train2017.json", **kw)


def test_synthetic_coco_matches_json(synthetic_coco_root):
    ds = _train(synthetic_coco_root)
    data = json.loads((synthetic_coco_root / "annotations" / "instances_train2017.json").read_text())
    assert len(ds) == 12
    assert ds.classes == ("circle", "triangle", "rectangle", "star")
    assert ds.num_classes == 5
    assert ds.label_to_cat_id == {1: 2, 2: 5, 3: 9, 4: 17}
    assert ds.cat_id_to_label == {2: 1, 5: 2, 9: 3, 17: 4}
    assert ds.ids == [10 * i + 7 for i in range(12)]
    n_boxes = n_crowd = 0
    for i in range(len(ds)):
        image, target = ds[i]
        info = data["images"][i]
        assert image.dtype == torch.float32 and image.shape == (3, info["height"], info["width"])
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert int(target["image_id"]) == info["id"]
        assert target["orig_size"].tolist() == [info["height"], info["width"]]
        anns = [a for a in data["annotations"] if a["image_id"] == info["id"]]
        expect = [[x, y, x + w, y + h] for a in anns if not a["iscrowd"] for x, y, w, h in [a["bbox"]]]
        labels = [ds.cat_id_to_label[a["category_id"]] for a in anns if not a["iscrowd"]]
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["boxes"].tolist() == expect
        assert target["labels"].tolist() == labels
        crowd = [[x, y, x + w, y + h] for a in anns if a["iscrowd"] for x, y, w, h in [a["bbox"]]]
        assert target["crowd_boxes"].tolist() == crowd
        n_boxes += len(expect)
        n_crowd += len(crowd)
    assert n_boxes == sum(1 for a in data["annotations"] if not a["iscrowd"])
    assert n_crowd == 1  # image 0 holds the crowd region


@pytest.fixture()
def edge_coco(tmp_path):
    """Three 40x30 images: edge-case boxes, one empty image, one image referenced but absent."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30), (90, 90, 90)).save(img_dir / name)
    boxes = [
        (1, [5, 5, 10, 8], 7, 0),  # normal
        (2, [12, 3, 0, 10], 7, 0),  # zero width -> dropped
        (3, [20, 3, 0.5, 10], 3, 0),  # sub-pixel width -> dropped
        (4, [30, 20, 20, 20], 3, 0),  # crosses the right/bottom border -> clipped to (30, 20, 40, 30)
        (5, [0, 0, 40, 30], 7, 1),  # crowd
        (6, [1, 1, 5, 5], 99, 0),  # unknown category
        (7, [2, 2, 5, 5], 42, 0),  # unknown category
        (8, [-3, -2, 6, 6], 3, 0),  # crosses the left/top border -> (0, 0, 3, 4)
    ]
    data = {
        "images": [
            {"id": 11, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 5, "file_name": "b.png", "width": 40, "height": 30},
            {"id": 20, "file_name": "missing.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": i, "image_id": 11, "bbox": b, "category_id": c, "iscrowd": cr, "area": 1.0}
            for i, b, c, cr in boxes
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return img_dir, ann


def test_edge_cases(edge_coco):
    img_dir, ann = edge_coco
    with pytest.warns(UserWarning, match="dropping 2 annotation.*unknown category id.*42, 99") as rec:
        ds = CocoDetection(img_dir, ann)
    assert len([w for w in rec if "unknown category" in str(w.message)]) == 1
    assert ds.classes == ("three", "seven")  # sorted by category id
    assert ds.label_to_cat_id == {1: 3, 2: 7}
    assert ds.ids == [5, 11, 20]
    _, t = ds[1]
    assert t["boxes"].tolist() == [[5, 5, 15, 13], [30, 20, 40, 30], [0, 0, 3, 4]]
    assert t["labels"].tolist() == [2, 1, 1]
    assert t["crowd_boxes"].tolist() == [[0, 0, 40, 30]]
    assert t["crowd_labels"].tolist() == [2]
    assert int(t["image_id"]) == 11
    _, t = ds[0]  # no annotations
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ds[2]


def test_remove_empty(edge_coco):
    img_dir, ann = edge_coco
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(img_dir, ann, remove_empty=True)
    assert ds.ids == [11]


def test_skip_corrupt_returns_none_counts_and_logs(edge_coco, caplog):
    img_dir, ann = edge_coco
    (img_dir / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strict = CocoDetection(img_dir, ann)
        ds = CocoDetection(img_dir, ann, skip_corrupt=True)
    with pytest.raises(DataError, match="b.png"):
        strict[0]
    with caplog.at_level(logging.WARNING, logger="ghost_vision.data"):
        assert ds[0] is None  # b.png is corrupt: no other sample in its place
        assert int(ds[1][1]["image_id"]) == 11
        assert ds[2] is None  # missing.png
        assert ds[0] is None and ds[2] is None  # known: not read (nor logged) again
    assert ds.num_skipped == 2
    assert ds.skipped_files() == [str(img_dir / "b.png"), str(img_dir / "missing.png")]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "skipping sample 0" in messages[0] and "b.png" in messages[0]
    assert "skipping sample 2" in messages[1] and "missing.png" in messages[1]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"images": [], "categories": [', "malformed JSON.*ann.json.*line 1"),
        ('{"images": []}', "ann.json.*'categories'"),
        ("[1, 2]", "ann.json.*top level"),
        ('{"images": [{"file_name": "x.png"}], "categories": []}', r"ann.json: images without 'id': images\[0\] \(1 in all\)"),
    ],
)
def test_malformed_json(tmp_path, content, match):
    ann = tmp_path / "ann.json"
    ann.write_text(content)
    with pytest.raises(DataError, match=match):
        CocoDetection(tmp_path, ann)


def test_missing_annotation_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        CocoDetection(tmp_path, tmp_path / "nothere.json")
    with pytest.raises(FileNotFoundError, match="noimages"):
        CocoDetection(tmp_path / "noimages", tmp_path / "nothere.json")


def test_transforms_are_called_on_numpy_before_filtering(edge_coco):
    img_dir, ann = edge_coco
    seen = {}

    def halve(*, image, target):
        seen["types"] = (type(image), image.dtype, sorted(target), target["boxes"].dtype, target["labels"].dtype)
        return np.ascontiguousarray(image[::2, ::2]), {**target, "boxes": target["boxes"] / 2}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(img_dir, ann, transforms=halve)
    image, t = ds[1]
    assert seen["types"] == (np.ndarray, np.uint8, ["boxes", "iscrowd", "labels"], np.float32, np.int64)
    assert image.shape == (3, 15, 20)
    # (5,5,15,13)/2 stays; (30,20,40,30)/2 -> (15,10,20,15); (0,0,3,4)/2 = 1.5 x 2 stays
    assert t["boxes"].tolist() == [[2.5, 2.5, 7.5, 6.5], [15, 10, 20, 15], [0, 0, 1.5, 2]]
    assert t["crowd_boxes"].tolist() == [[0, 0, 20, 15]]
    assert t["orig_size"].tolist() == [30, 40]
