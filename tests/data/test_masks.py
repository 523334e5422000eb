"""Instance masks: hand-made polygons / RLE decoded to known pixels, malformed segmentation rejected by name,
real COCO masks (labelbox fixture) equal to pycocotools' annToMask, and masks kept aligned with boxes through
crops and flips (instances cut out by a crop go whole: box, label and mask)."""

from __future__ import annotations

import json
import math

import albumentations as A
import numpy as np
import pytest
from PIL import Image

from ghost_vision.data import CocoDetection, DataError
from ghost_vision.data.masks import decode_segmentation
from ghost_vision.data.transforms import DetectionTransform, _bbox_params, build_transforms


def test_polygon_rle_and_multipolygon_decode_to_known_pixels():
    # a pixel is inside a polygon when its centre is: the 3 x 2 rectangle (1, 1)-(4, 3)
    rect = np.zeros((4, 6), np.uint8)
    rect[1:3, 1:4] = 1
    np.testing.assert_array_equal(decode_segmentation([[1, 1, 4, 1, 4, 3, 1, 3]], 4, 6), rect)
    # uncompressed RLE runs column-major, starting with zeros: 2 off, 3 on (col 0 rows 2-3, col 1 row 0), rest off
    rle = np.zeros((4, 6), np.uint8)
    rle[2:4, 0] = 1
    rle[0, 1] = 1
    np.testing.assert_array_equal(decode_segmentation({"counts": [2, 3, 19], "size": [4, 6]}, 4, 6), rle)
    # an object in two parts is their union
    two = np.zeros((4, 6), np.uint8)
    two[0:2, 0:2] = 1
    two[2:4, 4:6] = 1
    np.testing.assert_array_equal(decode_segmentation([[0, 0, 2, 0, 2, 2, 0, 2], [4, 2, 6, 2, 6, 4, 4, 4]], 4, 6), two)
    # compressed RLE (a string, as pycocotools writes it) round-trips
    from pycocotools import mask as mask_utils

    enc = mask_utils.encode(np.asfortranarray(two))
    out = decode_segmentation({"counts": enc["counts"].decode("ascii"), "size": [4, 6]}, 4, 6)
    np.testing.assert_array_equal(out, two)
    assert out.dtype == np.uint8


@pytest.mark.parametrize("seg, problem", [
    ([[1, 1, 4, 1, 4, 3, 1]], "polygon 0 has 7 numbers"),
    ([[1, 1, 4, 1]], "polygon 0 has 4 numbers"),
    ([[1, 1, 4, math.nan, 4, 3]], "polygon 0 is not a list of finite numbers"),
    ([], "empty polygon list"),
    ({"counts": [2, 3, 19], "size": [6, 4]}, r"RLE size \[6, 4\] differs"),
    ({"counts": [2, 3, 18], "size": [4, 6]}, "sum to 23"),
    (None, "got NoneType"),
])
def test_malformed_segmentation_raises_naming_file_image_and_annotation(seg, problem):
    with pytest.raises(DataError, match=rf"instances\.json: image id 7, annotation id 42: malformed segmentation: "
                                        rf".*{problem}"):
        decode_segmentation(seg, 4, 6, where="instances.json", image_id=7, ann_id=42)


def test_real_coco_masks_equal_pycocotools(labelbox_masks):
    ann = labelbox_masks / "rle.json"
    expected = json.loads((labelbox_masks / "expected_mask_areas.json").read_text())
    data = json.loads(ann.read_text())
    sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
    for a in data["annotations"]:  # polygons, multi-part polygons, crowd uncompressed RLE
        m = decode_segmentation(a["segmentation"], *sizes[a["image_id"]])
        assert int(m.sum()) == expected[str(a["id"])], a["id"]
    ds = CocoDetection(labelbox_masks / "images", ann, masks=True)
    n_crowd = 0
    for k in range(len(ds)):
        image, t = ds[k]
        anns = [a for a in data["annotations"] if a["image_id"] == int(t["image_id"])]
        plain = [a for a in anns if not a["iscrowd"]]
        n_crowd += len(anns) - len(plain)
        assert t["masks"].dtype.is_floating_point is False and t["masks"].shape == (len(plain), *image.shape[1:])
        # crowd regions are left out of the masks (as torchvision's references), in annotation order otherwise
        assert t["masks"].sum((1, 2)).tolist() == [expected[str(a["id"])] for a in plain]
        assert len(t["crowd_boxes"]) == len(anns) - len(plain)
    assert n_crowd == 10


def _write_coco(tmp_path, segs, h=60, w=80, name="a.jpg"):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(tmp_path / "img" / name)
    anns = []
    for k, seg in enumerate(segs):
        xs, ys = seg[0][0::2], seg[0][1::2]
        anns.append({"id": 100 + k, "image_id": 7, "category_id": 1 + k % 3, "iscrowd": 0, "segmentation": seg,
                     "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "area": 1.0})
    data = {"images": [{"id": 7, "file_name": name, "height": h, "width": w}], "annotations": anns,
            "categories": [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return tmp_path / "img", path


def _extent(mask):
    ys, xs = np.nonzero(np.asarray(mask))
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_crop_that_cuts_instances_out_drops_box_label_and_mask_together(tmp_path):
    img_dir, ann = _write_coco(tmp_path, [
        [[2, 2, 20, 2, 20, 20, 2, 20]],      # square, top-left: cut out by the crop
        [[40, 30, 70, 30, 70, 55, 40, 55]],  # rectangle, kept whole
        [[30, 0, 39, 0, 30, 9]],             # triangle in its box's top-left corner: the crop keeps a corner of
                                             # the box (x 35-39, y 5-9) but none of the triangle's pixels
    ])
    crop = A.Compose([A.Crop(x_min=35, y_min=5, x_max=80, y_max=60), A.HorizontalFlip(p=1.0)],
                     bbox_params=_bbox_params(1.0))
    ds = CocoDetection(img_dir, ann, masks=True, transforms=DetectionTransform("test", crop, seed=0))
    image, t = ds[0]
    assert image.shape[1:] == (55, 45)
    # only the rectangle is left: label 2, box flipped, mask exactly the flipped crop of its pixels
    assert t["labels"].tolist() == [2] and t["masks"].shape == (1, 55, 45)
    full = decode_segmentation([[40, 30, 70, 30, 70, 55, 40, 55]], 60, 80)
    np.testing.assert_array_equal(t["masks"][0].numpy(), full[5:, 35:][:, ::-1])
    assert _extent(t["masks"][0]) == [round(v) for v in t["boxes"][0].tolist()]
    # without the mask rule the triangle's box would survive the crop with an empty mask
    boxes_only = CocoDetection(img_dir, ann, transforms=DetectionTransform("test", crop, seed=0))
    assert boxes_only[0][1]["labels"].tolist() == [2, 3]


def test_masks_follow_boxes_through_random_training_augmentation(tmp_path):
    # five rectangles of different sizes and classes: after zoom-out, IoU crops, flips, each kept mask must
    # still sit exactly in its own box (a misaligned mask would sit in another instance's box)
    rects = [(2, 2, 14, 10), (20, 5, 44, 25), (50, 2, 78, 40), (5, 30, 30, 58), (35, 45, 60, 59)]
    img_dir, ann = _write_coco(tmp_path, [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in rects])
    ds = CocoDetection(img_dir, ann, masks=True,
                       transforms=build_transforms("det_train", size=None, photometric=False, seed=3))
    seen = set()
    for _ in range(40):
        image, t = ds[0]
        assert t["masks"].shape == (len(t["boxes"]), *image.shape[1:]) and len(t["labels"]) == len(t["boxes"])
        for box, mask in zip(t["boxes"].tolist(), t["masks"]):
            assert mask.any()
            np.testing.assert_allclose(_extent(mask), box, atol=1.0)
        seen.add((tuple(image.shape), len(t["boxes"])))
    assert len({n for _, n in seen}) > 1  # some crops really dropped instances


def test_malformed_mask_raises_or_is_skipped_and_counted(tmp_path):
    img_dir, ann = _write_coco(tmp_path, [[[2, 2, 20, 2, 20, 20, 2, 20]], [[40, 30, 70, 30, 70, 55, 40]]])
    with pytest.raises(DataError, match=r"instances\.json: image id 7, annotation id 101: .*7 numbers"):
        CocoDetection(img_dir, ann, masks=True)[0]
    assert len(CocoDetection(img_dir, ann)[0][1]["boxes"]) == 2  # boxes alone never read the segmentation
    ds = CocoDetection(img_dir, ann, masks=True, skip_corrupt=True)
    assert ds[0] is None and ds.num_skipped == 1
