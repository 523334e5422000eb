"""VOCDetection / VOCSegmentation on synthetic VOC, hand-made edge cases and the real raccoon photos."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from ghost_vision.data import SYNTHETIC_CLASSES, DataError, VOCDetection, VOCSegmentation
from ghost_vision.data.voc import VOC_CLASSES, voc_colormap


def _xml_boxes(path, keep_difficult):
    out = []
    for obj in ET.parse(path).getroot().iter("object"):
        if obj.findtext("difficult") == "1" and not keep_difficult:
            continue
        b = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        out.append(([xmin - 1, ymin - 1, xmax, ymax], SYNTHETIC_CLASSES.index(obj.findtext("name")) + 1,
                    obj.findtext("difficult") == "1"))
    return out


@pytest.mark.parametrize("keep_difficult", [False, True])
def test_synthetic_voc_detection(synthetic_voc_root, keep_difficult):
    ds = VOCDetection(synthetic_voc_root, year="2007", image_set="trainval", classes=SYNTHETIC_CLASSES,
                      keep_difficult=keep_difficult)
    assert len(ds) == 14 and ds.ids == [f"{i:06d}" for i in range(14)] and ds.num_classes == 5
    total = 0
    for i in range(len(ds)):
        image, t = ds[i]
        expect = _xml_boxes(synthetic_voc_root / "VOC2007" / "Annotations" / f"{ds.ids[i]}.xml", keep_difficult)
        assert image.shape[0] == 3 and image.shape[1:] == tuple(t["orig_size"].tolist())
        assert t["boxes"].tolist() == [e[0] for e in expect]
        assert t["labels"].tolist() == [e[1] for e in expect]
        assert t["difficult"].dtype == torch.bool and t["difficult"].tolist() == [e[2] for e in expect]
        assert int(t["image_id"]) == i
        total += len(expect)
    assert total > 14
    assert VOCDetection(synthetic_voc_root, image_set="val", classes=SYNTHETIC_CLASSES).ids == [
        "000010", "000011", "000012", "000013"]


def test_synthetic_voc_segmentation_masks_agree_with_boxes(synthetic_voc_root):
    ds = VOCSegmentation(synthetic_voc_root, year="2007", image_set="train", classes=SYNTHETIC_CLASSES)
    det = VOCDetection(synthetic_voc_root, image_set="train", classes=SYNTHETIC_CLASSES, keep_difficult=True)
    assert len(ds) == 10 and ds.num_classes == 5
    for i in range(len(ds)):
        image, mask = ds[i]
        assert mask.dtype == torch.int64 and mask.shape == image.shape[1:]
        assert set(np.unique(mask.numpy()).tolist()) <= {0, 1, 2, 3, 4, 255}
        _, t = det[i]
        inside = torch.zeros_like(mask, dtype=torch.bool)
        for x1, y1, x2, y2 in t["boxes"].int().tolist():
            inside[y1:y2, x1:x2] = True
        assert ((mask >= 1) & (mask <= 4) & ~inside).sum() == 0  # every object pixel lies in some box
        for (x1, y1, x2, y2), label in zip(t["boxes"].int().tolist(), t["labels"].tolist(), strict=True):
            assert (mask[y1:y2, x1:x2] == label).any()


def _voc_tree(root, year="2007", ids=("a",)):
    ydir = root / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main", "ImageSets/Segmentation", "SegmentationClass"):
        (ydir / sub).mkdir(parents=True, exist_ok=True)
    (ydir / "ImageSets/Main/trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    (ydir / "ImageSets/Segmentation/trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    return ydir


def _xml(objects, size=(40, 30), filename="whatever.jpg"):
    objs = "".join(
        f"<object><name> {n} </name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (f"<annotation><filename>{filename}</filename><path>/elsewhere/{filename}</path><size><width>{size[0]}"
            f"</width><height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def test_voc_edge_cases(tmp_path):
    ydir = _voc_tree(tmp_path, ids=("a", "b", "c"))
    Image.new("L", (40, 30), 100).save(ydir / "JPEGImages/a.jpg")  # grayscale
    Image.new("RGBA", (40, 30), (1, 2, 3, 255)).save(ydir / "JPEGImages/b.png")  # other extension, RGBA
    Image.new("RGB", (40, 30)).save(ydir / "JPEGImages/c.jpg")
    # size 0 in the XML and a <filename> that differs from the id
    (ydir / "Annotations/a.xml").write_text(_xml([
        ("dog", (1, 1, 40, 30), 0),  # whole image -> (0, 0, 40, 30)
        ("cat", (5, 6, 5, 20), 0),  # one pixel column: 1 px wide, kept
        ("cat", (7, 2, 7.4, 9), 0),  # (6, 1, 7.4, 9): 1.4 px, kept
        ("cat", (50, 2, 60, 9), 0),  # outside the image: clipped to nothing, dropped
        ("cat", (35, 25, 60, 60), 1),  # difficult, crosses the border -> clipped (34, 24, 40, 30)
    ], size=(0, 0), filename="zzz.jpg"))
    (ydir / "Annotations/b.xml").write_text(_xml([("dog", (2, 2, 4, 4), 0), ("unicorn", (1, 1, 5, 5), 0)]))
    (ydir / "Annotations/c.xml").write_text(_xml([("unicorn", (1, 1, 5, 5), 0)]))
    with pytest.raises(DataError, match=r"classes not in `classes` \['cat', 'dog'\]: 'unicorn' \(2 objects, e\.g\. "
                       r"in .*VOC2007/Annotations/b\.xml\).*ignore_unknown_classes=True"):
        VOCDetection(tmp_path, classes=("cat", "dog"))
    with pytest.warns(UserWarning, match=r"dropping 2 objects of classes not in `classes`.*'unicorn'") as rec:
        ds = VOCDetection(tmp_path, classes=("cat", "dog"), keep_difficult=True, ignore_unknown_classes=True)
    assert len(rec) == 1 and ds.num_unknown_objects == 2
    image, t = ds[0]
    assert image.shape == (3, 30, 40) and torch.equal(image[0], image[1]) and abs(float(image[0, 0, 0]) - 100 / 255) < 1e-6
    assert t["boxes"].tolist() == [[0, 0, 40, 30], [4, 5, 5, 20], [6, 1, 7.400000095367432, 9], [34, 24, 40, 30]]
    assert t["labels"].tolist() == [2, 1, 1, 1]
    assert t["difficult"].tolist() == [False, False, False, True]
    with pytest.warns(UserWarning, match="unicorn"):
        _, t = VOCDetection(tmp_path, classes=("cat", "dog"), ignore_unknown_classes=True)[0]
    assert t["difficult"].tolist() == [False, False, False]
    image, t = ds[1]
    assert ds[2][1]["boxes"].shape == (0, 4)
    assert image[:, 0, 0].mul(255).round().tolist() == [1, 2, 3]
    assert t["boxes"].tolist() == [[1, 1, 4, 4]]


def test_voc_errors_name_the_file(tmp_path, caplog):
    ydir = _voc_tree(tmp_path, ids=("bad", "noimg", "good", "corrupt", "noxml"))
    (ydir / "Annotations/bad.xml").write_text("<annotation><object><name>cat</name></annotation>")
    (ydir / "Annotations/noimg.xml").write_text(_xml([]))
    (ydir / "Annotations/good.xml").write_text(_xml([("cat", (1, 1, 3, 3), 0)]))
    (ydir / "Annotations/corrupt.xml").write_text(_xml([]))
    (ydir / "Annotations/noxml.xml").write_text(_xml([]))
    Image.new("RGB", (40, 30)).save(ydir / "JPEGImages/good.jpg")
    Image.new("RGB", (40, 30)).save(ydir / "JPEGImages/noxml.jpg")
    Image.new("RGB", (64, 64)).save(ydir / "JPEGImages/corrupt.jpg")
    data = (ydir / "JPEGImages/corrupt.jpg").read_bytes()
    (ydir / "JPEGImages/corrupt.jpg").write_bytes(data[: len(data) // 2])
    # every XML is validated when the dataset is built
    with pytest.raises(DataError, match=r"malformed VOC XML .*bad\.xml: mismatched tag"):
        VOCDetection(tmp_path, classes=("cat",))
    (ydir / "Annotations/bad.xml").write_text(_xml([("cat", (1, "x", 3, 3), 0)]))
    with pytest.raises(DataError, match=r"bad\.xml: object #0 \('cat'\): <ymin> is not a number: 'x'"):
        VOCDetection(tmp_path, classes=("cat",))
    (ydir / "Annotations/bad.xml").write_text(_xml([("cat", (1, 1, 3, 3), 0)]))
    (ydir / "Annotations/noxml.xml").unlink()
    with pytest.raises(FileNotFoundError, match=r"Annotations/noxml\.xml"):
        VOCDetection(tmp_path, classes=("cat",))
    (ydir / "Annotations/noxml.xml").write_text(_xml([]))
    ds = VOCDetection(tmp_path, classes=("cat",))
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/noimg\.jpg"):
        ds[1]
    with pytest.raises(DataError, match=r"corrupt\.jpg"):
        ds[3]
    # skip_corrupt: None for each unreadable sample (never another one), each named once in the log
    (ydir / "Annotations/bad.xml").write_text("<annotation><object>")
    (ydir / "Annotations/noxml.xml").unlink()
    with caplog.at_level(logging.WARNING, logger="ghost_vision.data"):
        skipping = VOCDetection(tmp_path, classes=("cat",), skip_corrupt=True)
        samples = [skipping[i] for i in range(5)] + [skipping[i] for i in range(5)]
    assert [s is None for s in samples] == [True, True, False, True, True] * 2
    assert int(samples[2][1]["image_id"]) == 2
    assert skipping.num_skipped == 4
    assert skipping.skipped_files() == [str(ydir / "Annotations/bad.xml"), str(ydir / "JPEGImages/noimg.jpg"),
                                        str(ydir / "JPEGImages/corrupt.jpg"), str(ydir / "Annotations/noxml.xml")]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4 and all("skipping sample" in m for m in messages)


def test_years_list_and_missing_paths(tmp_path):
    for year, ids in (("2007", ("x1",)), ("2012", ("y1", "y2"))):
        ydir = _voc_tree(tmp_path, year, ids)
        for i in ids:
            (ydir / f"Annotations/{i}.xml").write_text(_xml([("dog", (1, 1, 3, 3), 0)]))
            Image.new("RGB", (10, 10)).save(ydir / f"JPEGImages/{i}.jpg")
    ds = VOCDetection(tmp_path, year=["2007", "2012"])
    assert ds.ids == ["x1", "y1", "y2"] and ds.classes == VOC_CLASSES and ds.num_classes == 21
    assert ds[2][1]["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]
    with pytest.raises(FileNotFoundError, match="VOC2010"):
        VOCDetection(tmp_path, year="2010")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/test\.txt"):
        VOCDetection(tmp_path, image_set="test")


def test_voc_segmentation_mask_decoding(tmp_path):
    ydir = _voc_tree(tmp_path, ids=("p", "rgb", "bad", "size"))
    for i in ("p", "rgb", "bad", "size"):
        Image.new("RGB", (4, 3)).save(ydir / f"JPEGImages/{i}.jpg")
    idx = np.array([[0, 1, 2, 255], [0, 0, 21, 20], [3, 3, 3, 255]], np.uint8)
    png = Image.frombytes("P", (4, 3), idx.tobytes())
    png.putpalette(voc_colormap().flatten().tolist())
    png.save(ydir / "SegmentationClass/p.png")
    Image.fromarray(voc_colormap()[np.where(idx == 21, 0, idx)]).save(ydir / "SegmentationClass/rgb.png")
    png.save(ydir / "SegmentationClass/bad.png")
    png.resize((5, 3)).save(ydir / "SegmentationClass/size.png")
    ds = VOCSegmentation(tmp_path, year="2007", image_set="trainval", classes=VOC_CLASSES + ("extra",))
    assert ds.num_classes == 22
    assert ds[0][1].tolist() == idx.astype(np.int64).tolist()
    assert ds[1][1].tolist() == np.where(idx == 21, 0, idx).tolist()  # RGB-saved mask decoded via the palette
    strict = VOCSegmentation(tmp_path, year="2007", image_set="trainval")
    with pytest.raises(DataError, match=r"bad\.png has values \[21\] outside 0\.\.20 and 255"):
        strict[2]
    with pytest.raises(DataError, match=r"size\.png is \(5, 3\) but its image is \(4, 3\)"):
        ds[3]


def test_raccoon_real_photos(raccoon_root):
    ds = VOCDetection(raccoon_root, year="2007", image_set="trainval", classes=("raccoon",))
    assert len(ds) == 200 and ds.num_classes == 2
    n_boxes, gray = 0, []
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.dtype == torch.float32 and image.shape[0] == 3
        assert t["labels"].tolist() == [1] * len(t["boxes"])
        h, w = image.shape[1:]
        b = t["boxes"]
        assert bool((b[:, 2] - b[:, 0] >= 1).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all())
        n_boxes += len(b)
        if torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]):
            gray.append(ds.ids[i])
    assert n_boxes == 217
    assert len(gray) == 3
    _, t = ds[ds.ids.index("raccoon-1")]  # XML: xmin 81, ymin 88, xmax 522, ymax 408
    assert t["boxes"].tolist() == [[80, 87, 522, 408]]
    assert len(VOCDetection(raccoon_root, image_set="train", classes=("raccoon",))) == 160
