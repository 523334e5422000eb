"""Augmentation presets: boxes and masks must stay aligned with the pixels they describe."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from ghost_vision.data.transforms import (
    IMAGENET_MEAN_UINT8,
    PRESETS,
    MinIoURandomCrop,
    build_transforms,
)

# Saturated colours, far apart in RGB and in hue (0°, 120°, 240°, 60°, 300°, 180°), far from the
# background and from the mean fill colour. Object i has label i + 1 and colour PALETTE[i].
PALETTE = np.array(
    [(230, 20, 20), (20, 220, 20), (20, 20, 230), (230, 230, 20), (230, 20, 230), (20, 230, 230)], np.uint8
)
BG = 40
FILL = np.array(IMAGENET_MEAN_UINT8, np.uint8)


def hue_of(rgb) -> float:
    return float(cv2.cvtColor(np.asarray(rgb, np.uint8).reshape(1, 1, 3), cv2.COLOR_RGB2HSV_FULL)[0, 0, 0])


def hue_dist(a: float, b: float) -> float:
    d = abs(a - b) % 256
    return min(d, 256 - d)


PALETTE_HUES = [hue_of(c) for c in PALETTE]


def make_scene(rng: np.random.Generator, noisy: bool, rect_only: bool = False, h: int = 240, w: int = 320):
    """Non-overlapping filled rectangles / ellipses of distinct colours; boxes from the drawn pixels."""
    if noisy:
        image = rng.integers(BG - 8, BG + 9, (h, w, 3)).astype(np.uint8)
    else:
        image = np.full((h, w, 3), BG, np.uint8)
    occupied = np.zeros((h, w), bool)
    boxes, labels = [], []
    for i in rng.permutation(len(PALETTE))[: rng.integers(1, 6)]:
        for _ in range(30):
            bw, bh = (int(v) for v in rng.integers(24, 90, 2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            if occupied[max(0, y0 - 4) : y0 + bh + 4, max(0, x0 - 4) : x0 + bw + 4].any():
                continue
            layer = np.zeros((h, w), np.uint8)
            if rect_only or rng.random() < 0.5:
                layer[y0 : y0 + bh, x0 : x0 + bw] = 1
            else:
                centre = (x0 + bw // 2, y0 + bh // 2)
                cv2.ellipse(layer, centre, (bw // 2, bh // 2), 0, 0, 360, 1, thickness=-1)
            ys, xs = np.nonzero(layer)
            image[layer.astype(bool)] = PALETTE[i]
            occupied |= layer.astype(bool)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(i + 1)
            break
    target = {
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "labels": np.array(labels, np.int64),
        "difficult": np.array([lab % 2 == 0 for lab in labels], bool),
        "names": [f"obj{lab}" for lab in labels],
        "image_id": 42,
    }
    return image, target


def near(image: np.ndarray, colour, tol: int) -> np.ndarray:
    """Pixels whose every channel is within ``tol`` of ``colour`` (fast, via cv2.inRange)."""
    c = np.asarray(colour, int)
    return cv2.inRange(image, np.clip(c - tol, 0, 255), np.clip(c + tol, 0, 255)).astype(bool)


def pixel_extent(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def check_target_consistency(image: np.ndarray, target: dict, size: tuple[int, int]) -> None:
    h, w = size
    assert image.shape == (h, w, 3) and image.dtype == np.uint8
    boxes, labels = target["boxes"], target["labels"]
    assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
    assert labels.dtype == np.int64
    assert target["image_id"] == 42
    np.testing.assert_array_equal(target["difficult"], labels % 2 == 0)
    assert target["names"] == [f"obj{lab}" for lab in labels]
    if len(boxes):
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] - boxes[:, 0] >= 1 - 1e-4).all() and (boxes[:, 3] - boxes[:, 1] >= 1 - 1e-4).all()


# ------------------------------------------------------------------------------------------ detection
@pytest.mark.parametrize("noisy", [False, True])
def test_det_train_boxes_frame_their_objects(noisy: bool) -> None:
    """100 seeded trials per background: each kept box equals the visible extent of its object's colour."""
    size = (256, 320)
    t = build_transforms("det_train", size=size, photometric=False, seed=int(noisy))
    rng = np.random.default_rng(10 + int(noisy))
    checked = dropped = cropped = zoomed = 0
    for _ in range(100):
        image, target = make_scene(rng, noisy)
        out, tgt = t(image=image, target=target)
        check_target_consistency(out, tgt, size)
        dropped += len(target["labels"]) - len(tgt["labels"])
        zoomed += bool(near(out, FILL, 0).sum() > 50)
        assert set(tgt["labels"].tolist()) <= set(target["labels"].tolist())
        for box, label in zip(tgt["boxes"], tgt["labels"]):
            extent = pixel_extent(near(out, PALETTE[label - 1], 59))
            bw, bh = box[2] - box[0], box[3] - box[1]
            if bw < 4 or bh < 4:  # a sliver: no pixel keeps the pure colour after interpolation
                continue
            assert extent is not None, f"box {box} (label {label}) frames no pixel of its object"
            np.testing.assert_allclose(extent, box, atol=2.0, err_msg=f"label {label}")
            cropped += bool(((box[:2] <= 0.5) | (box[2:] >= np.array(size[::-1]) - 0.5)).any())
            checked += 1
    # The trials really exercised the pipeline: many boxes checked, some dropped by the crop, some cut
    # at the crop border, some zoomed out.
    assert checked > 150 and dropped > 10 and cropped > 10 and zoomed > 20


def test_det_train_photometric_keeps_geometry_and_labels() -> None:
    """With photometric distortion on, objects are found by the colour at each box centre."""
    t = build_transforms("det_train", size=300, seed=3)
    rng = np.random.default_rng(3)
    checked = recoloured = 0
    for _ in range(60):
        image, target = make_scene(rng, noisy=False, rect_only=True)
        out, tgt = t(image=image, target=target)
        check_target_consistency(out, tgt, (300, 300))
        for box, label in zip(tgt["boxes"], tgt["labels"]):
            if box[2] - box[0] < 6 or box[3] - box[1] < 6:
                continue
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            centre = out[cy, cx].astype(int)
            recoloured += bool(np.abs(centre - PALETTE[label - 1]).max() > 5)
            # Hue survives the photometric distortion (shift <= 18°): the label matches the colour.
            hues = [hue_dist(hue_of(centre), ph) for ph in PALETTE_HUES]
            assert int(np.argmin(hues)) == label - 1
            extent = pixel_extent(near(out, centre, 29))
            np.testing.assert_allclose(extent, box, atol=2.0)
            checked += 1
    assert checked > 60 and recoloured > 20


def test_det_train_empty_target_and_sizes() -> None:
    image = np.random.default_rng(0).integers(0, 256, (123, 201, 3)).astype(np.uint8)
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "image_id": 7}
    for size, expect in [(320, (320, 320)), ((200, 300), (200, 300)), ([64, 96], (64, 96))]:
        t = build_transforms("det_train", size=size, seed=1)
        for _ in range(10):
            out, tgt = t(image=image, target=empty)
            assert out.shape == (*expect, 3) and out.dtype == np.uint8
            assert tgt["boxes"].shape == (0, 4) and tgt["boxes"].dtype == np.float32
            assert tgt["labels"].shape == (0,) and tgt["image_id"] == 7
    out, tgt = build_transforms("det_train", seed=1)(image=image, target=None)
    assert out.shape == (320, 320, 3) and tgt is None


def test_hand_computed_flip_and_resize() -> None:
    image = np.zeros((50, 100, 3), np.uint8)
    image[5:25, 10:30] = (255, 0, 0)
    target = {"boxes": np.array([[10, 5, 30, 25]], np.float32), "labels": np.array([3]), "image_id": 1}
    only_flip = dict(photometric=False, zoom_out_p=0.0, min_ious=[None], size=(50, 100), seed=0)
    out, tgt = build_transforms("det_train", flip_p=1.0, **only_flip)(image=image, target=target)
    np.testing.assert_allclose(tgt["boxes"], [[70, 5, 90, 25]])
    np.testing.assert_array_equal(out, image[:, ::-1])
    out, tgt = build_transforms("det_train", flip_p=0.0, **only_flip)(image=image, target=target)
    np.testing.assert_allclose(tgt["boxes"], [[10, 5, 30, 25]])
    np.testing.assert_array_equal(out, image)

    out, tgt = build_transforms("det_eval", size=(100, 400))(image=image, target=target)
    assert out.shape == (100, 400, 3)
    np.testing.assert_allclose(tgt["boxes"], [[40, 10, 120, 50]])
    assert pixel_extent(out[..., 0] > 128).tolist() == [40, 10, 120, 50]
    assert tgt["labels"].tolist() == [3] and tgt["image_id"] == 1

    out, tgt = build_transforms("det_eval", size=None)(image=image, target=target)
    assert out is image and tgt["boxes"] is target["boxes"]


def test_per_box_fields_follow_boxes() -> None:
    """Degenerate / outside boxes are dropped with every per-box field; other entries pass through."""
    torch = pytest.importorskip("torch")
    image = np.zeros((100, 100, 3), np.uint8)
    target = {
        "boxes": np.array(
            [[10, 10, 10, 30], [20, 20, 60, 70], [120, 5, 150, 40], [5, 50, 40, 90]], np.float32
        ),
        "labels": np.array([1, 2, 3, 4], np.int64),
        "iscrowd": torch.tensor([0, 0, 1, 1]),
        "names": ["a", "b", "c", "d"],
        "orig_size": np.array([100, 100, 3, 3]),  # in NON_BOX_KEYS: not per-box even with length N
        "image_id": 9,
    }
    out, tgt = build_transforms("det_eval", size=50)(image=image, target=target)
    np.testing.assert_allclose(tgt["boxes"], [[10, 10, 30, 35], [2.5, 25, 20, 45]])
    assert tgt["labels"].tolist() == [2, 4] and tgt["names"] == ["b", "d"]
    assert tgt["iscrowd"].tolist() == [0, 1] and isinstance(tgt["iscrowd"], torch.Tensor)
    assert tgt["orig_size"] is target["orig_size"] and tgt["image_id"] == 9


def test_ssd_crop_keeps_boxes_by_centre_and_clips() -> None:
    crop = MinIoURandomCrop()
    # Normalised boxes on a 100×100 image with an extra label column, as albumentations passes them.
    boxes = np.array([[0.0, 0.0, 0.2, 0.2, 0], [0.1, 0.4, 0.3, 0.6, 1], [0.5, 0.5, 1.0, 1.0, 2]])
    out = crop.apply_to_bboxes(boxes, crop_coords=(15, 0, 65, 100), shape=(100, 100))
    # Box 0's centre (10, 10) is outside, box 1's (20, 50) and box 2's (75, 75)... only box 1 is inside.
    assert out[:, 4].tolist() == [1]
    np.testing.assert_allclose(out[0, :4], [0.0, 0.4, 0.3, 0.6], atol=1e-6)  # x clipped at 15 -> 0..15/50


def test_ssd_crop_iou_constraint() -> None:
    """With the single mode min IoU 0.7, some kept box covers >= 70 % of every output image."""
    image = np.full((240, 320, 3), BG, np.uint8)
    image[40:160, 50:200] = PALETTE[0]
    image[170:220, 250:300] = PALETTE[1]
    target = {
        "boxes": np.array([[50, 40, 200, 160], [250, 170, 300, 220]], np.float32),
        "labels": np.array([1, 2]),
    }
    t = build_transforms("det_train", min_ious=[0.7], zoom_out_p=0.0, photometric=False, size=200, seed=4)
    fractions = []
    for _ in range(40):
        _, tgt = t(image=image, target=target)
        areas = (tgt["boxes"][:, 2] - tgt["boxes"][:, 0]) * (tgt["boxes"][:, 3] - tgt["boxes"][:, 1])
        fractions.append(areas.max() / 200**2)
    assert min(fractions) >= 0.7 - 1e-3


def test_random_decisions_are_independent() -> None:
    """Flip and zoom-out are drawn independently (albumentations' Compose(seed=) would lock them)."""
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, :40] = (255, 0, 0)
    image[:, 40:] = (0, 0, 255)
    t = build_transforms("det_train", size=(60, 80), photometric=False, min_ious=[None], seed=11)
    combos = set()
    for _ in range(60):
        out, _ = t(image=image, target={"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0)})
        red = np.argwhere(out[..., 0] > 200)[:, 1].mean()
        blue = np.argwhere(out[..., 2] > 200)[:, 1].mean()
        zoomed = bool(near(out, FILL, 1).any())
        combos.add((red > blue, zoomed))
    assert combos == {(False, False), (False, True), (True, False), (True, True)}
    # One generator pair for the whole pipeline, not one identically seeded copy per transform.
    assert len({id(tr.py_random) for tr in t.compose.transforms}) == 1
    assert len({id(tr.random_generator) for tr in t.compose.transforms}) == 1


def _run(t, n=5):
    image, target = make_scene(np.random.default_rng(0), noisy=True)
    return [t(image=image, target=target) for _ in range(n)]


def _same(a, b) -> bool:
    return all(
        np.array_equal(ia, ib) and np.array_equal(ta["boxes"], tb["boxes"])
        for (ia, ta), (ib, tb) in zip(a, b)
    )


def test_seeding_is_reproducible() -> None:
    assert _same(_run(build_transforms("det_train", seed=5)), _run(build_transforms("det_train", seed=5)))
    assert not _same(_run(build_transforms("det_train", seed=5)), _run(build_transforms("det_train", seed=6)))
    random.seed(123)
    first = _run(build_transforms("det_train"))
    random.seed(123)
    assert _same(first, _run(build_transforms("det_train")))


class _Repeat:
    def __init__(self, transform):
        self.transform = transform
        self.image = np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype(np.uint8)
        self.mask = (np.arange(64)[:, None] // 8 + np.zeros(64, int)[None]).astype(np.int64)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        return self.transform(image=self.image, mask=self.mask)[0]


def test_dataloader_workers_get_distinct_reproducible_streams() -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    t = build_transforms("seg_train", crop_size=48, seed=0)

    def epoch():
        torch.manual_seed(0)
        loader = DataLoader(_Repeat(t), batch_size=1, num_workers=2, multiprocessing_context="fork")
        return [b[0].numpy() for b in loader]  # sample k comes from worker k % 2

    a, b = epoch(), epoch()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # reproducible given the torch seed
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[2], a[3])  # workers differ


# --------------------------------------------------------------------------------------- segmentation
SEG_IDS = (0, 3, 7, 12, 200)  # not contiguous: a linearly interpolated mask would invent other ids


def make_seg_scene(rng: np.random.Generator, h: int = 150, w: int = 200, dtype=np.int64, ids=SEG_IDS):
    """Background and four rectangles / discs; returns (image, mask, colour lookup table by class id)."""
    mask = np.full((h, w), ids[0], np.int64)
    for k, cls in enumerate(ids[1:]):
        layer = np.zeros((h, w), np.uint8)
        x, y = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
        if k % 2:
            layer[y : y + int(rng.integers(20, 80)), x : x + int(rng.integers(20, 80))] = 1
        else:
            cv2.circle(layer, (x + 15, y + 15), int(rng.integers(10, 40)), 1, thickness=-1)
        mask[layer.astype(bool)] = cls
    lut = np.zeros((max(ids) + 1, 3), np.uint8)
    lut[list(ids)] = np.concatenate([[[BG, BG, BG]], PALETTE[:4]])
    return lut[mask], mask.astype(dtype), lut


@pytest.mark.parametrize(
    ("dtype", "ids"), [(np.int64, SEG_IDS), (np.uint8, SEG_IDS), (np.int32, (0, 1, 2, 3, 1000))]
)
def test_seg_train_mask_aligned_and_padded_with_255(dtype, ids) -> None:
    crop = (180, 240)  # larger than some scaled images -> padding; smaller than others -> cropping
    t = build_transforms("seg_train", crop_size=crop, photometric=False, seed=2)
    rng = np.random.default_rng(2)
    padded = cropped = 0
    for _ in range(30):
        image, mask, lut = make_seg_scene(rng, dtype=dtype, ids=ids)
        out, m = t(image=image, mask=mask)
        assert out.shape == (*crop, 3) and out.dtype == np.uint8 and m.shape == crop and m.dtype == dtype
        assert set(np.unique(m).tolist()) <= {*ids, 255}
        pad = m == 255
        # Padding: the mask is 255 exactly where the image holds the fill colour, and it is a frame
        # around one rectangle of real content.
        np.testing.assert_array_equal(pad, (out == FILL).all(axis=2))
        content = pixel_extent(~pad)
        assert (
            content is not None
            and not pad[int(content[1]) : int(content[3]), int(content[0]) : int(content[2])].any()
        )
        padded += bool(pad.any())
        cropped += bool(not pad.any())
        # Alignment: away from class boundaries, the colour is the class colour.
        m_int = np.where(pad, 0, m).astype(np.int64)
        m_f = m_int.astype(np.float32)
        edges = cv2.dilate(m_f, np.ones((5, 5), np.uint8)) != cv2.erode(m_f, np.ones((5, 5), np.uint8))
        # (Also away from the frame: classes just outside the crop blend into its border pixels.)
        inner = cv2.erode((~pad).astype(np.uint8), np.ones((5, 5), np.uint8), borderValue=0).astype(bool)
        interior = inner & ~edges
        diff = np.abs(out.astype(int) - lut[m_int].astype(int)).max(axis=2)
        assert interior.sum() > 0.2 * (~pad).sum()
        assert (diff[interior] <= 2).all(), (
            f"{(diff[interior] > 2).sum()} interior pixels disagree with the mask"
        )
    assert padded >= 5 and cropped >= 5


def test_seg_train_photometric_padding_and_sizes() -> None:
    image, mask, _ = make_seg_scene(np.random.default_rng(4))
    t = build_transforms(
        "seg_train", seed=4, scale=[0.5, 2.0]
    )  # default crop 512 > every scaled image height
    for _ in range(10):
        out, m = t(image=image, mask=mask)
        assert out.shape == (512, 512, 3) and m.shape == (512, 512) and m.dtype == np.int64
        pad = m == 255
        assert pad.any() and (out[pad] == FILL).all()
    out, m = build_transforms("seg_train", crop_size=64, seed=0)(image=image, mask=None)
    assert out.shape == (64, 64, 3) and m is None


def test_seg_eval() -> None:
    image, mask, _ = make_seg_scene(np.random.default_rng(6))
    out, m = build_transforms("seg_eval")(image=image, mask=mask)
    assert out is image and m is mask
    out, m = build_transforms("seg_eval", size=(75, 100))(image=image, mask=mask)
    assert out.shape == (75, 100, 3) and m.shape == (75, 100) and m.dtype == np.int64
    np.testing.assert_array_equal(m, mask[::2, ::2])  # nearest neighbour: no invented class ids


# ------------------------------------------------------------------------------------------- presets
def test_preset_names_and_errors() -> None:
    assert set(PRESETS) == {"det_train", "det_eval", "seg_train", "seg_eval", "none"}
    image = np.zeros((8, 8, 3), np.uint8)
    target = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    for preset in (None, "none"):
        t = build_transforms(preset)
        assert t(image=image, target=target) == (image, target)
        assert t(image=image, mask=image[..., 0])[1] is not None
    with pytest.raises(ValueError, match="det_train, det_eval, seg_train, seg_eval, none"):
        build_transforms("ssd_train")
    with pytest.raises(ValueError, match=r"crop_size.*det_train.*accepted: size"):
        build_transforms("det_train", crop_size=512)
    with pytest.raises(ValueError, match="size must be positive"):
        build_transforms("det_eval", size=0)
    with pytest.raises(ValueError, match="scale"):
        build_transforms("seg_train", scale=(2.0, 0.5))
    with pytest.raises(ValueError, match="min_ious"):
        build_transforms("det_train", min_ious=[1.5])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        build_transforms("det_eval")(image=image.astype(np.float32), target=target)
