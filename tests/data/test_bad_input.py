"""Bad input never becomes a silent wrong sample.

* Every malformed COCO record / VOC XML raises ``DataError`` naming the file and the records (first few and
  how many); legal but degenerate boxes are counted in one warning.
* A seeded fuzz test: hundreds of random mutations of a valid COCO JSON and VOC XML either load into samples
  whose boxes are finite and inside the image, or raise ``DataError`` naming the file.
* ``skip_corrupt=True`` on real photos truncated on disk: the unreadable ones come back as ``None``, the
  collate drops them, DataLoader workers share one skip record, and COCO evaluation scores exactly the
  readable images (pycocotools on the ground truth restricted to them).
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ghost_vision.data import CocoDetection, DataError, VOCDetection
from ghost_vision.data.coco import load_coco_json
from ghost_vision.data.loading import detection_collate

# ----------------------------------------------------------------------------------------------- COCO


def _coco_base() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "c.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": i + 1, "image_id": 1 + i % 3, "category_id": 7 if i % 2 else 3,
             "bbox": [2.0 + i, 3.0, 10.0, 8.5], "area": 85.0, "iscrowd": 0}
            for i in range(8)
        ],
        "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
    }


@pytest.fixture(scope="module")
def coco_images(tmp_path_factory) -> Path:
    img_dir = tmp_path_factory.mktemp("coco_images")
    for k, name in enumerate(("a.png", "b.png", "c.png")):
        Image.new("RGB", (40, 30), (50 * k, 90, 90)).save(img_dir / name)
    return img_dir


def _set(path: str, value):
    """A mutation: ``"annotations.2.bbox.0"`` = value (``DEL`` removes the key/item)."""

    def mutate(d):
        *head, last = path.split(".")
        node = d
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        key = int(last) if isinstance(node, list) else last
        if value is DEL:
            del node[key]
        else:
            node[key] = value

    return mutate


DEL = object()


def _many(mutation, n):
    def mutate(d):
        for i in range(n):
            mutation(i)(d)
    return mutate


COCO_CASES = {
    # kind: (mutation, expected message after "COCO annotation file <path>: ")
    "bbox NaN": (_set("annotations.2.bbox.1", float("nan")), r"annotations whose 'bbox' holds NaN or infinity: id 3 \(1 in all\)"),
    "bbox infinite": (_set("annotations.0.bbox.2", float("inf")), r"'bbox' holds NaN or infinity: id 1 \(1 in all\)"),
    "bbox 3 numbers": (_set("annotations.4.bbox", [1, 2, 3]), r"'bbox' is not a list of 4 numbers \[x, y, width, height\]: id 5"),
    "bbox 5 numbers": (_set("annotations.4.bbox", [1, 2, 3, 4, 5]), r"'bbox' is not a list of 4 numbers.*: id 5"),
    "bbox string": (_set("annotations.1.bbox.0", "12"), r"'bbox' is not a list of 4 numbers.*: id 2"),
    "bbox bool": (_set("annotations.1.bbox.3", True), r"'bbox' is not a list of 4 numbers.*: id 2"),
    "bbox null": (_set("annotations.1.bbox", None), r"'bbox' is not a list of 4 numbers.*: id 2"),
    "bbox missing": (_set("annotations.6.bbox", DEL), r"annotations without 'bbox': id 7 \(1 in all\)"),
    "negative width": (_set("annotations.3.bbox.2", -4.0),
                       r"annotations whose 'bbox' has a negative width or height: id 4 \(1 in all\)\. COCO boxes "
                       r"are \[x, y, width, height\]; was the file written as \[x1, y1, x2, y2\]\?"),
    "negative height": (_set("annotations.3.bbox.3", -0.5), r"negative width or height: id 4"),
    "orphan image_id": (_set("annotations.5.image_id", 99), r"annotations whose 'image_id' is not in 'images': id 6 \(1 in all\)"),
    "7 orphans": (_many(lambda i: _set(f"annotations.{i}.image_id", 50 + i), 7),
                  r"'image_id' is not in 'images': id 1, id 2, id 3, id 4, id 5, \.\.\. \(7 in all\)"),
    "image_id string": (_set("annotations.5.image_id", "1"), r"annotations whose 'image_id' is not an integer: id 6"),
    "image_id missing": (_set("annotations.5.image_id", DEL), r"annotations without 'image_id': id 6"),
    "category_id missing": (_set("annotations.0.category_id", DEL), r"annotations without 'category_id': id 1"),
    "category_id list": (_set("annotations.0.category_id", [3]), r"annotations whose 'category_id' is not an integer: id 1"),
    "duplicate image id": (_set("images.2.id", 1), r"duplicate image ids: 1 \(1 in all\)\. each image id must occur once "
                           r"\(2 entries share them\)"),
    "duplicate annotation id": (_set("annotations.7.id", 2), r"duplicate annotation ids: 2 \(1 in all\)"),
    "annotation id 0": (_set("annotations.7.id", 0), r"annotations whose 'id' is not positive: id 0.*'unmatched'"),
    "annotation id missing": (_set("annotations.7.id", DEL), r"annotations without 'id': annotations\[7\] \(1 in all\)"),
    "annotation id float": (_set("annotations.7.id", 8.0), r"annotations whose 'id' is not an integer: annotations\[7\]"),
    "annotation not an object": (_set("annotations.3", [1, 2]), r"annotation entries that are not objects: annotations\[3\]"),
    "iscrowd 2": (_set("annotations.1.iscrowd", 2), r"annotations whose 'iscrowd' is not 0 or 1: id 2"),
    "iscrowd true": (_set("annotations.1.iscrowd", True), r"'iscrowd' is not 0 or 1: id 2"),
    "iscrowd string": (_set("annotations.1.iscrowd", "0"), r"'iscrowd' is not 0 or 1: id 2"),
    "area NaN": (_set("annotations.1.area", float("nan")), r"annotations whose 'area' is not finite: id 2"),
    "area beyond float64": (_set("annotations.1.area", 2**1100), r"annotations whose 'area' is not finite: id 2 \(1 in all\)"),
    "bbox beyond float64": (_set("annotations.1.bbox.0", -(2**1100)), r"'bbox' holds NaN or infinity: id 2 \(1 in all\)"),
    "area negative": (_set("annotations.1.area", -1), r"annotations whose 'area' is negative: id 2"),
    "image without file_name": (_set("images.1.file_name", DEL), r"images without 'file_name': id 2 \(1 in all\)"),
    "image empty file_name": (_set("images.1.file_name", ""), r"images whose 'file_name' is not a non-empty string: id 2"),
    "image without width": (_set("images.0.width", DEL), r"images without 'width': id 1"),
    "image without height": (_set("images.0.height", DEL), r"images without 'height': id 1"),
    "image width 0": (_set("images.0.width", 0), r"images whose 'width' is not positive: id 1"),
    "image height string": (_set("images.0.height", "30"), r"images whose 'height' is not a number: id 1"),
    "image id string": (_set("images.0.id", "a"), r"images whose 'id' is not an integer: images\[0\]"),
    "image id huge": (_set("images.0.id", 2**70), r"images whose 'id' does not fit in 64 bits"),
    "image not an object": (_set("images.0", "a.png"), r"image entries that are not objects: images\[0\]"),
    "duplicate category id": (_set("categories.1.id", 3), r"duplicate category ids: 3"),
    "annotations not a list": (_set("annotations", {"1": {}}), r"'annotations' is not a list"),
}


@pytest.mark.parametrize("kind", sorted(COCO_CASES))
def test_coco_malformed_record_names_file_and_ids(kind, coco_images, tmp_path):
    mutate, message = COCO_CASES[kind]
    data = _coco_base()
    mutate(data)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"^COCO annotation file " + str(ann).replace(".", r"\.") + ": .*" + message):
        CocoDetection(coco_images, ann)


def test_coco_evaluation_needs_area_and_iscrowd(tmp_path):
    data = _coco_base()
    del data["annotations"][3]["area"]
    del data["annotations"][5]["iscrowd"]
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(data))
    assert len(load_coco_json(ann).anns) == 8  # training does without them
    with pytest.raises(DataError, match=r"annotations without 'iscrowd': id 6 \(1 in all\)"):
        load_coco_json(ann, evaluation=True)


def test_coco_degenerate_boxes_counted_in_one_warning(coco_images, tmp_path):
    data = _coco_base()
    data["annotations"][0]["bbox"] = [5, 5, 0.5, 10]  # under 1 px wide
    data["annotations"][1]["bbox"] = [5, 5, 10, 0]  # zero height
    data["annotations"][2]["bbox"] = [45, 5, 10, 10]  # right of the 40 px image: nothing left once clipped
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"ann\.json: 3 of 8 boxes are under 1 px wide or high once clipped") as rec:
        ds = CocoDetection(coco_images, ann)
    assert len(rec) == 1
    kept = sum(len(ds[i][1]["boxes"]) for i in range(len(ds)))
    assert kept == 5  # dropped from training targets, as before


def test_coco_metric_validates_its_annotation_file(tmp_path):
    from ghost_vision.metrics import CocoMeanAP

    data = _coco_base()
    data["images"].append(dict(data["images"][0]))  # image id 1 twice: would be scored twice
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"val\.json: duplicate image ids: 1"):
        CocoMeanAP(ann)


# ------------------------------------------------------------------------------------------------ VOC


def _voc_xml(objects=(("cat", (2, 3, 20, 25)),), size=(40, 30)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{objs}</annotation>"


VOC_CASES = {
    "malformed XML": ("<annotation><object></annotation>", r"malformed VOC XML {xml}: mismatched tag"),
    "truncated XML": (_voc_xml()[:60], r"malformed VOC XML {xml}: (unclosed token|no element found)"),
    "missing bndbox": ("<annotation><object><name>cat</name></object></annotation>",
                       r"{xml}: object #0 \('cat'\) has no <bndbox>"),
    "missing name": ("<annotation><object><bndbox><xmin>1</xmin></bndbox></object></annotation>",
                     r"{xml}: object #0 has no <name> \(or an empty one\)"),
    "empty name": (_voc_xml([(" ", (1, 1, 5, 5))]), r"{xml}: object #0 has no <name>"),
    "missing coordinate": (_voc_xml().replace("<ymax>25</ymax>", ""), r"{xml}: object #0 \('cat'\): <ymax> missing"),
    "non-numeric coordinate": (_voc_xml([("cat", (1, "12px", 5, 5))]), r"{xml}: object #0 \('cat'\): <ymin> is not a number: '12px'"),
    "NaN coordinate": (_voc_xml([("cat", (1, 1, "nan", 5))]), r"{xml}: object #0 \('cat'\): <xmax> is not finite: 'nan'"),
    "overflowing coordinate": (_voc_xml([("cat", (1, 1, 5, "1e400"))]), r"<ymax> is not finite: '1e400'"),
    "xmax < xmin": (_voc_xml([("cat", (1, 1, 5, 5)), ("cat", (9, 1, 4, 5))]),
                    r"{xml}: object #1 \('cat'\) has xmax < xmin or ymax < ymin \(xmin=9, ymin=1, xmax=4, ymax=5\)"),
    "ymax < ymin": (_voc_xml([("cat", (1, 8, 5, 5))]), r"object #0 \('cat'\) has xmax < xmin or ymax < ymin"),
    "non-numeric size": (_voc_xml(size=("forty", 30)), r"{xml}: <size>: <width> is not a number: 'forty'"),
    "infinite size": (_voc_xml(size=(40, "inf")), r"{xml}: <size>: <height> is not finite"),
    "unknown class": (_voc_xml([("cat", (1, 1, 5, 5)), ("unicorn", (1, 1, 5, 5))]),
                      r"classes not in `classes` \['cat', 'dog'\]: 'unicorn' \(1 objects, e\.g\. in {xml}\)"),
}


def _voc_root(root: Path, xmls: dict[str, str], image_size=(40, 30)) -> Path:
    ydir = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (ydir / sub).mkdir(parents=True, exist_ok=True)
    (ydir / "ImageSets/Main/trainval.txt").write_text("".join(f"{i}\n" for i in xmls))
    for i, text in xmls.items():
        (ydir / "Annotations" / f"{i}.xml").write_text(text)
        if not (ydir / "JPEGImages" / f"{i}.jpg").is_file():
            Image.new("RGB", image_size, (80, 90, 100)).save(ydir / "JPEGImages" / f"{i}.jpg")
    return ydir


@pytest.mark.parametrize("kind", sorted(VOC_CASES))
def test_voc_malformed_xml_names_file_and_object(kind, tmp_path):
    text, message = VOC_CASES[kind]
    ydir = _voc_root(tmp_path, {"ok": _voc_xml(), "bad": text})
    xml = str(ydir / "Annotations" / "bad.xml").replace(".", r"\.")
    with pytest.raises(DataError, match=message.format(xml=xml)):
        VOCDetection(tmp_path, classes=("cat", "dog"))


def test_voc_unknown_classes_opt_in_counts_and_warns(tmp_path):
    _voc_root(tmp_path, {"a": _voc_xml([("cat", (1, 1, 5, 5)), ("unicorn", (1, 1, 5, 5))]),
                         "b": _voc_xml([("unicorn", (2, 2, 9, 9)), ("yeti", (2, 2, 9, 9)), ("unicorn", (1, 1, 3, 3))])})
    with pytest.raises(DataError, match=r"'unicorn' \(3 objects, e\.g\. in .*a\.xml\), 'yeti' \(1 objects, e\.g\. in "
                       r".*b\.xml\) \(2 in all\)"):
        VOCDetection(tmp_path, classes=("cat",))
    with pytest.warns(UserWarning, match=r"dropping 4 objects of classes not in `classes` \(ignore_unknown_classes=True\)"):
        ds = VOCDetection(tmp_path, classes=("cat",), ignore_unknown_classes=True)
    assert ds.num_unknown_objects == 4
    assert ds[0][1]["labels"].tolist() == [1] and ds[1][1]["labels"].tolist() == []


def test_voc_datamodule_forwards_ignore_unknown_classes(tmp_path):
    from ghost_vision.data import VOCDetectionDataModule

    _voc_root(tmp_path, {"a": _voc_xml([("cat", (1, 1, 5, 5)), ("unicorn", (1, 1, 5, 5))])})
    kw = {"train_years": ("2007",), "train_image_set": "trainval", "val_years": ("2007",), "val_image_set": "trainval",
          "classes": ("cat",), "num_workers": 0}
    with pytest.raises(DataError, match="unicorn"):
        VOCDetectionDataModule(str(tmp_path), **kw).setup("fit")
    dm = VOCDetectionDataModule(str(tmp_path), ignore_unknown_classes=True, **kw)
    with pytest.warns(UserWarning, match="unicorn"):
        dm.setup("fit")
    assert dm.train_dataset.num_unknown_objects == dm.val_dataset.num_unknown_objects == 1


# ----------------------------------------------------------------------------------------------- fuzz

FUZZ_VALUES = [float("nan"), float("inf"), -float("inf"), -1, 0, 1, 0.5, 3.7, -3.7, 1e30, -1e30, 2**70, "", "x",
               "12", None, True, False, [], {}, [1, 2, 3], [1, 2, 3, 4], [0, 0, 1e9, 1e9], {"a": 1}]
FUZZ_TEXT = ["nan", "inf", "-inf", "1e400", "", "abc", "-5", "0", "1", "39.5", "100000", "3", "12px", "cat", "dog",
             "unicorn", " 7 "]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _mutate_json(data, rng: random.Random):
    data = copy.deepcopy(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        paths = [p for p in _paths(data) if p]
        path = rng.choice(paths)
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        op = rng.random()
        if op < 0.15:
            del parent[key]
        elif op < 0.25 and isinstance(parent, list):
            parent.insert(rng.randrange(len(parent) + 1), copy.deepcopy(parent[key]))  # duplicate an entry
        elif op < 0.35 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = parent[key] + rng.choice((-100, -1, 1, 100)) * rng.random()  # a plausible number
        else:
            parent[key] = copy.deepcopy(rng.choice(FUZZ_VALUES))
    return data


def _mutate_xml(text: str, rng: random.Random) -> str:
    if rng.random() < 0.1:
        return text[: rng.randrange(len(text))]  # truncated file
    root = ET.fromstring(text)
    for _ in range(rng.choice((1, 1, 2))):
        elems = list(root.iter())
        el = rng.choice(elems)
        op = rng.random()
        if op < 0.2 and el is not root:
            parent = next(p for p in root.iter() if el in list(p))
            parent.remove(el)
        elif op < 0.3 and el is not root:
            parent = next(p for p in root.iter() if el in list(p))
            parent.append(copy.deepcopy(el))
        elif op < 0.4:
            el.tag = rng.choice(["object", "name", "bndbox", "xmin", "size", "junk"])
        else:
            el.text = rng.choice(FUZZ_TEXT)
    return ET.tostring(root, encoding="unicode")


def _check_samples(ds, path_str: str) -> str:
    """Load every sample; return the outcome (``loaded`` / ``DataError`` / ``missing file``)."""
    try:
        for i in range(len(ds)):
            image, t = ds[i]
            h, w = image.shape[1:]
            for key in ("boxes", "crowd_boxes"):
                b = t.get(key, torch.zeros(0, 4))
                assert torch.isfinite(b).all(), (path_str, b)
                assert bool(((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)).all()), (path_str, b)
                assert bool(((b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)).all()) or key == "crowd_boxes"
    except FileNotFoundError as e:  # a mutated file_name: the missing image is named, as without the fuzz
        assert "image file not found" in str(e)
        return "missing file"
    return "loaded"


def test_fuzz_coco_and_voc_mutations(coco_images, tmp_path):
    """400 seeded mutations of a valid COCO JSON and 300 of valid VOC XML: each loads into sane samples or
    raises DataError naming the file (or, for a mutated file name, FileNotFoundError naming the image)."""
    rng = random.Random(1234)
    outcomes: dict[str, dict[str, int]] = {"coco": {}, "voc": {}}
    base = _coco_base()
    base["annotations"].append({"id": 50, "image_id": 2, "category_id": 3, "bbox": [0, 0, 40, 30], "area": 1200.0,
                                "iscrowd": 1})
    ann = tmp_path / "fuzz.json"
    for _ in range(400):
        data = _mutate_json(base, rng)
        ann.write_text(json.dumps(data)[: None if rng.random() > 0.05 else rng.randrange(50, 400)])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = CocoDetection(coco_images, ann, remove_empty=rng.random() < 0.3)
            outcome = _check_samples(ds, str(ann))
        except DataError as e:
            assert str(ann) in str(e), str(e)
            outcome = "DataError"
        outcomes["coco"][outcome] = outcomes["coco"].get(outcome, 0) + 1

    voc_text = _voc_xml([("cat", (2, 3, 20, 25)), ("dog", (10, 1, 40, 30)), ("cat", (30, 20, 39, 29))])
    ydir = _voc_root(tmp_path / "voc", {"x": voc_text})
    xml = ydir / "Annotations" / "x.xml"
    for _ in range(300):
        xml.write_text(_mutate_xml(voc_text, rng))
        try:
            ds = VOCDetection(tmp_path / "voc", classes=("cat", "dog"))
            outcome = _check_samples(ds, str(xml))
        except DataError as e:
            assert str(xml) in str(e), str(e)
            outcome = "DataError"
        outcomes["voc"][outcome] = outcomes["voc"].get(outcome, 0) + 1
    print("fuzz outcomes:", outcomes)
    # both outcomes occur often: the fuzz explores valid and invalid files
    for kind in ("coco", "voc"):
        assert outcomes[kind].get("loaded", 0) >= 30 and outcomes[kind].get("DataError", 0) >= 100, outcomes


# ------------------------------------------------------------------ skip_corrupt on truncated real photos


def test_skip_corrupt_loader_with_workers_drops_and_names_truncated_photos(raccoon_coco):
    from ghost_vision.data import CocoDataModule

    root = raccoon_coco["root"]
    strict = CocoDataModule(str(root), batch_size=4, val_batch_size=4, num_workers=0, pin_memory=False)
    strict.setup("validate")
    with pytest.raises(DataError, match=rf"cannot read image .*val2017/{raccoon_coco['bad'][0]}\.jpg"):
        list(strict.val_dataloader())
    dm = CocoDataModule(str(root), batch_size=4, val_batch_size=4, num_workers=2, pin_memory=False, skip_corrupt=True)
    dm.setup("validate")
    seen = [int(t["image_id"]) for batch in dm.val_dataloader() for t in batch[1]]
    assert sorted(seen) == [i for i in range(101, 113) if i not in raccoon_coco["bad_ids"]]  # each once, none twice
    # the workers' skips are visible in the main process, with the files' names
    assert dm.val_dataset.num_skipped == 2
    assert dm.val_dataset.skipped_files() == [str(root / "val2017" / f"{n}.jpg") for n in raccoon_coco["bad"]]
    assert detection_collate([None, None]) is None


def test_skip_corrupt_evaluation_scores_exactly_the_readable_images(raccoon_coco):
    """CocoMeanAP over a skipping loader equals pycocotools' COCOeval on the ground truth restricted to the
    readable images (and differs from scoring all images: the test would catch a lost or repeated image)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ghost_vision.data import CocoDataModule
    from ghost_vision.metrics import CocoMeanAP

    dm = CocoDataModule(str(raccoon_coco["root"]), val_batch_size=3, num_workers=0, pin_memory=False, skip_corrupt=True)
    dm.setup("validate")
    metric = CocoMeanAP(dm.val_ann_file, label_to_cat_id=dm.label_to_cat_id)
    g = torch.Generator().manual_seed(0)
    results = []
    for _images, targets in dm.val_dataloader():
        preds = []
        for t in targets:  # jittered ground truth plus a false positive, with scores
            b = t["boxes"] + torch.randn(t["boxes"].shape, generator=g) * 6
            b = torch.cat([b, torch.tensor([[0.0, 0.0, 30.0, 30.0]])])
            s = torch.rand(len(b), generator=g)
            preds.append({"boxes": b, "scores": s, "labels": torch.ones(len(b), dtype=torch.int64)})
            for box, score in zip(b.double().tolist(), s.double().tolist()):
                results.append({"image_id": int(t["image_id"]), "category_id": 1,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
        metric.update(preds, targets)
    ours = {k: float(v) for k, v in metric.compute().items()}

    def cocoeval(img_ids):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(raccoon_coco["ann"]))
            ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
            ev.params.imgIds = img_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return ev.stats

    readable = [i for i in range(101, 113) if i not in raccoon_coco["bad_ids"]]
    ref = cocoeval(readable)
    assert [ours[k] for k in ("map", "map_50", "map_75", "mar_1", "mar_10", "mar_100")] == [
        float(ref[i]) for i in (0, 1, 2, 6, 7, 8)]
    assert not math.isclose(float(cocoeval(list(range(101, 113)))[8]), ours["mar_100"])


def test_skip_corrupt_voc_truncated_raccoon_photos(raccoon_root, tmp_path):
    src = raccoon_root / "VOC2007"
    ids = sorted(p.stem for p in (src / "Annotations").glob("*.xml"))[:6]
    ydir = _voc_root(tmp_path, {i: (src / "Annotations" / f"{i}.xml").read_text() for i in ids})
    for i in ids:
        shutil.copy(src / "JPEGImages" / f"{i}.jpg", ydir / "JPEGImages" / f"{i}.jpg")
    for i, keep in ((ids[1], 0.3), (ids[4], 0.9)):
        data = (ydir / "JPEGImages" / f"{i}.jpg").read_bytes()
        (ydir / "JPEGImages" / f"{i}.jpg").write_bytes(data[: int(len(data) * keep)])
    ds = VOCDetection(tmp_path, classes=("raccoon",), skip_corrupt=True)
    samples = [ds[i] for i in range(len(ds))]
    assert [s is None for s in samples] == [False, True, False, False, True, False]
    assert ds.skipped_files() == [str(ydir / "JPEGImages" / f"{i}.jpg") for i in (ids[1], ids[4])]
    images, targets = detection_collate(samples)
    assert [int(t["image_id"]) for t in targets] == [0, 2, 3, 5]
    assert all(np.isfinite(t["boxes"].numpy()).all() for t in targets)


def test_skip_corrupt_segmentation_loaders_drop_unreadable_samples(synthetic_cityscapes_root, tmp_path):
    from ghost_vision.data import CityscapesDataModule
    from ghost_vision.data.loading import segmentation_collate

    root = tmp_path / "cityscapes"
    shutil.copytree(synthetic_cityscapes_root, root)
    labels = sorted((root / "gtFine" / "val").glob("*/*_labelIds.png"))
    labels[1].write_bytes(labels[1].read_bytes()[:100])  # truncated label PNG
    dm = CityscapesDataModule(str(root), val_batch_size=1, batch_size=2, num_workers=0, pin_memory=False,
                              skip_corrupt=True, eval_transform=None, train_transform=None)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert batches[1] is None  # the only sample of that batch was skipped
    assert [int(b[2]) for b in batches if b is not None] == [0, 2]  # (image, mask, index), each index once
    assert dm.val_dataset.skipped_files() == [str(labels[1])]
    image, mask = torch.zeros(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64)
    images, masks = segmentation_collate([None, (image, mask), None, (image + 1, mask)])
    assert images.shape == (2, 3, 4, 5) and float(images[1].max()) == 1.0
    assert segmentation_collate([None]) is None
