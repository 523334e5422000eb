"""SegmentationFolder (images + index masks matched by stem) and its DataModule: loading, every error, mIoU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ghost_vision.data import (
    DataError,
    SegmentationFolder,
    SegmentationFolderDataModule,
    SyntheticSegmentationFolderDataModule,
    write_synthetic_folder,
)
from ghost_vision.data.transforms import build_transforms
from ghost_vision.metrics import SegmentationMetric

RNG = np.random.default_rng(0)


def _image(path: Path, h: int, w: int) -> np.ndarray:
    """Write a random RGB PNG/JPEG and return what a lossless decode gives back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _mask(path: Path, values: np.ndarray, mode: str = "L", palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        Image.fromarray(np.asarray(values, dtype=np.uint8), mode="RGB").save(path)
        return
    if mode == "I;16":
        Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)
        return
    values = np.asarray(values, dtype=np.uint8)
    if mode == "P":  # the stored palette indices are the labels; the palette's colours do not matter
        img = Image.frombytes("P", values.shape[::-1], values.tobytes())
        img.putpalette(palette or [int(v) for v in RNG.integers(0, 256, 768)])
    else:
        img = Image.fromarray(values, mode="L")
    img.save(path)


def _pair(root: Path, stem: str, values, *, img_suffix=".png", seg_suffix=".png", mode="L", size=None):
    values = np.asarray(values)
    h, w = values.shape[:2]
    if size is not None:
        h, w = size
    image = _image(root / "img" / f"{stem}{img_suffix}", h, w)
    _mask(root / "ann" / f"{stem}{seg_suffix}", values, mode)
    return image


def _ds(root: Path, **kw) -> SegmentationFolder:
    kw.setdefault("img_suffix", ".png")
    kw.setdefault("classes", ("bg", "a", "b"))
    return SegmentationFolder(root / "img", root / "ann", **kw)


# ------------------------------------------------------------------------------------------------ loading
def test_stems_matched_recursively_in_sorted_order(tmp_path):
    masks = {"b": [[0, 1], [2, 255]], "a": [[1, 1], [1, 1]], "sub/c": [[2, 0, 1], [0, 0, 0]]}
    images = {stem: _pair(tmp_path, stem, m) for stem, m in masks.items()}
    (tmp_path / "img" / ".DS_Store").write_bytes(b"x")  # hidden files are not samples
    (tmp_path / "ann" / "notes.txt").write_text("not a mask")  # other suffixes neither
    ds = _ds(tmp_path)
    assert ds.ids == ["a", "b", "sub/c"] and len(ds) == 3 and ds.num_classes == 3
    for i, stem in enumerate(ds.ids):
        image, mask = ds[i]
        assert image.dtype == torch.float32 and mask.dtype == torch.int64
        assert torch.equal(image, torch.from_numpy(images[stem]).permute(2, 0, 1).float() / 255)
        assert mask.tolist() == masks[stem]


def test_suffixes_select_the_files(tmp_path):
    _pair(tmp_path, "x", [[0, 1]], img_suffix="_leftImg8bit.png", seg_suffix="_gtFine_labelIds.png")
    _image(tmp_path / "img" / "x_other.png", 1, 2)  # a second image of the stem with another ending: ignored
    ds = _ds(tmp_path, img_suffix="_leftImg8bit.png", seg_map_suffix="_gtFine_labelIds.png")
    assert ds.ids == ["x"] and ds[0][1].tolist() == [[0, 1]]
    assert ds.images[0].name == "x_leftImg8bit.png" and ds.masks[0].name == "x_gtFine_labelIds.png"


def test_split_file_selects_and_orders(tmp_path):
    for stem in ("a", "b", "c"):
        _pair(tmp_path, stem, [[0]])
    split = tmp_path / "val.txt"
    split.write_text("# validation\nc\n\n  a  \n")
    ds = _ds(tmp_path, split_file=split)
    assert ds.ids == ["c", "a"] and [p.stem for p in ds.images] == ["c", "a"]
    split.write_text("c\na\nc\n")
    with pytest.raises(DataError, match=r"val.txt lists 1 stem\(s\) more than once: c"):
        _ds(tmp_path, split_file=split)
    split.write_text("a.png\nzz\n")
    with pytest.raises(DataError, match=r"2 stem\(s\) listed in .*val.txt have no image .*\(list stems without the "
                                        r"suffix\): a.png, zz"):
        _ds(tmp_path, split_file=split)
    split.write_text("\n# nothing\n")
    with pytest.raises(DataError, match="lists no stems"):
        _ds(tmp_path, split_file=split)
    with pytest.raises(FileNotFoundError, match="split file not found: .*nope.txt"):
        _ds(tmp_path, split_file=tmp_path / "nope.txt")


def test_ignore_index_becomes_255(tmp_path):
    # CamVid-style: 11 classes, value 11 is "void"
    _pair(tmp_path, "a", [[0, 10, 11], [11, 255, 3]])
    ds = _ds(tmp_path, classes=[f"c{i}" for i in range(11)], ignore_index=11)
    assert ds[0][1].tolist() == [[0, 10, 255], [255, 255, 3]]
    # without ignore_index the void value is out of range
    with pytest.raises(DataError, match=r"mask .*a.png has values 11 outside 0..10 \(11 classes\), 255"):
        _ds(tmp_path, classes=[f"c{i}" for i in range(11)])[0]
    with pytest.raises(ValueError, match="ignore_index=2 is the mask value of class 'b'"):
        _ds(tmp_path, ignore_index=2)


def test_reduce_zero_label(tmp_path):
    # ADE20K-style: 0 = "other" (ignored), 1..150 -> 0..149, 255 stays ignored
    _pair(tmp_path, "a", [[0, 1, 150], [255, 2, 75]])
    classes = [f"c{i}" for i in range(150)]
    assert _ds(tmp_path, classes=classes, reduce_zero_label=True)[0][1].tolist() == [[255, 0, 149], [255, 1, 74]]
    with pytest.raises(DataError, match=r"values 150 outside 1..149 \(149 classes\), 0 \(reduce_zero_label\), 255"):
        _ds(tmp_path, classes=classes[:149], reduce_zero_label=True)[0]


@pytest.mark.parametrize("mode", ["L", "P", "I;16"])
def test_grayscale_palette_and_16bit_pngs_give_the_stored_values(tmp_path, mode):
    values = np.array([[0, 1, 2], [2, 255, 0]])
    _pair(tmp_path, "a", values, mode=mode)
    assert Image.open(tmp_path / "ann" / "a.png").mode == {"L": "L", "P": "P", "I;16": "I;16"}[mode]
    assert _ds(tmp_path)[0][1].tolist() == values.tolist()


def test_palette_maps_colour_masks(tmp_path):
    palette = [[0, 0, 0], [128, 64, 128], [70, 70, 70], [255, 255, 255]]  # bg, road, building, void (pos. 3)
    idx = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    _pair(tmp_path, "a", np.asarray(palette, dtype=np.uint8)[idx], mode="RGB")
    ds = _ds(tmp_path, classes=("bg", "road", "building"), palette=palette, ignore_index=3)
    assert ds[0][1].tolist() == [[0, 1, 2, 255], [255, 2, 1, 0]]
    # a colour outside the palette is named
    rgb = np.asarray(palette, dtype=np.uint8)[idx]
    rgb[0, 0] = (1, 2, 3)
    _mask(tmp_path / "ann" / "a.png", rgb, "RGB")
    with pytest.raises(DataError, match=r"colour mask .*a.png has 1 colour\(s\) outside the palette, e.g. RGB "
                                        r"\[\(1, 2, 3\)\]"):
        ds[0]
    # a colour mask without a palette
    with pytest.raises(DataError, match=r"mask .*a.png is a colour \(RGB\) image: .* pass palette="):
        _ds(tmp_path, classes=("bg", "road", "building"), ignore_index=3)[0]
    with pytest.raises(ValueError, match="palette has 2 colours but 3 mask values need one"):
        _ds(tmp_path, classes=("bg", "road", "building"), palette=palette[:2])
    with pytest.raises(ValueError, match=r"palette repeats colours \[\(0, 0, 0\)\]"):
        _ds(tmp_path, classes=("bg", "road", "building"), palette=[[0, 0, 0]] * 3)
    with pytest.raises(ValueError, match="triples of ints 0..255"):
        _ds(tmp_path, classes=("bg",), palette=[[0, 0, 300]])


def test_transform_presets_apply_to_image_and_mask(tmp_path):
    _pair(tmp_path, "a", np.repeat(np.arange(3), 40).reshape(6, 20) % 3)
    ds = _ds(tmp_path, transforms=build_transforms("seg_train", crop_size=16, seed=0))
    image, mask = ds[0]
    assert image.shape == (3, 16, 16) and mask.shape == (16, 16)
    assert set(mask.unique().tolist()) <= {0, 1, 2, 255}


# ------------------------------------------------------------------------------------------------- errors
def test_images_without_masks_and_masks_without_images_are_named(tmp_path):
    for i in range(8):
        _pair(tmp_path, f"s{i}", [[0]])
    for i in range(7):
        (tmp_path / "ann" / f"s{i}.png").unlink()
    with pytest.raises(DataError, match=r"7 image\(s\) in .*img have no mask .*ann/STEM.png: s0, s1, s2, s3, s4 "
                                        r"and 2 more"):
        _ds(tmp_path)
    for i in range(7):
        _mask(tmp_path / "ann" / f"s{i}.png", np.zeros((1, 1)))
    _mask(tmp_path / "ann" / "orphan.png", np.zeros((1, 1)))
    with pytest.raises(DataError, match=r"1 mask\(s\) in .*ann have no image .*img/STEM.png: orphan"):
        _ds(tmp_path)


def test_empty_and_missing_folders_are_named(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no image files ending in '.png' in .*img$"):
        _ds(tmp_path)
    _image(tmp_path / "img" / "a.jpg", 2, 2)
    with pytest.raises(FileNotFoundError, match=r"no image files ending in '.png' in .*img \(it holds files ending "
                                                r"in .jpg: set the suffix to match\)"):
        _ds(tmp_path)
    with pytest.raises(FileNotFoundError, match="no mask files ending in '.png' in .*ann"):
        _ds(tmp_path, img_suffix=".jpg")
    with pytest.raises(FileNotFoundError, match="image folder not found: .*nowhere"):
        SegmentationFolder(tmp_path / "nowhere", tmp_path / "ann", classes=("a",))


def test_wrong_mask_size_and_values_are_named_and_skippable(tmp_path):
    _pair(tmp_path, "a", [[0, 1], [1, 0]])
    _pair(tmp_path, "b", [[0, 1], [1, 0]], size=(3, 2))
    _pair(tmp_path, "c", [[0, 7], [9, 7]])
    ds = _ds(tmp_path)
    with pytest.raises(DataError, match=r"mask .*b.png is 2x2 but its image .*b.png is 2x3 \(W x H\)"):
        ds[1]
    with pytest.raises(DataError, match=r"mask .*c.png has values 7, 9 outside 0..2 \(3 classes\), 255"):
        ds[2]
    (tmp_path / "ann" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for palette in (None, [[0, 0, 0], [1, 1, 1], [2, 2, 2]]):
        with pytest.raises(DataError, match=r"cannot read image .*c.png"):
            _ds(tmp_path, palette=palette)[2]
    skipping = _ds(tmp_path, skip_corrupt=True)
    sample = skipping[1]  # b and c are bad: skipped (the next good sample, a, or None for the collate to drop)
    assert sample is None or torch.equal(sample[1], skipping[0][1])
    assert skipping.num_skipped >= 1


def test_class_list_checks():
    with pytest.raises(ValueError, match=r"classes must list one name per mask value, got \(\)"):
        SegmentationFolder(".", ".", classes=())
    with pytest.raises(ValueError, match="256 classes need mask values 0..255, but 255 is the ignored value"):
        SegmentationFolder(".", ".", classes=[str(i) for i in range(256)])


# -------------------------------------------------------------------------------------- DataModule, mIoU
def test_datamodule_on_the_synthetic_folder(tmp_path):
    dm = SyntheticSegmentationFolderDataModule(root=str(tmp_path / "f"), num_train=3, num_val=2, batch_size=2,
                                               num_workers=0, crop_size=64)
    assert dm.num_classes == 5 and dm.classes == ("background", "circle", "triangle", "rectangle", "star")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_dataset.ids == ["train_00000", "train_00001", "train_00002"]
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64)
    assert set(masks.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    image, mask, index = next(iter(dm.val_dataloader()))
    assert index.tolist() == [0] and torch.equal(mask[0], dm.val_dataset[0][1])
    # the same folders through the user-facing DataModule, with a split file relative to root
    (tmp_path / "f" / "val.txt").write_text("val_00001\n")
    own = SegmentationFolderDataModule(str(tmp_path / "f"), classes=dm.classes, val_split_file="val.txt",
                                       num_workers=0, pin_memory=False)
    own.setup("validate")
    assert own.val_dataset.ids == ["val_00001"] and torch.equal(own.val_dataset[0][1], dm.val_dataset[1][1])


def test_datamodule_names_missing_folders_and_the_recipe(tmp_path):
    dm = SegmentationFolderDataModule(str(tmp_path), classes=("a", "b"))
    (tmp_path / "images" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert f"{tmp_path / 'masks' / 'train'}" in msg and "data.train_ann_dir" in msg
    assert "ghost-vision train deeplabv3_ghost_folder" in msg
    with pytest.raises(ValueError, match="one name per mask value"):
        SegmentationFolderDataModule(str(tmp_path), classes="road")


def test_miou_of_perfect_and_constant_predictions_by_hand(tmp_path):
    """Two masks with 8 / 8 / 5 pixels of classes 0 / 1 / 2 and three ignored pixels."""
    m1 = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 0, 0]]
    m2 = [[1, 1, 1, 1], [0, 0, 255, 2]]
    root = tmp_path / "hand"
    _image(root / "images" / "val" / "m1.jpg", 4, 4)
    _image(root / "images" / "val" / "m2.jpg", 2, 4)
    _mask(root / "masks" / "val" / "m1.png", np.asarray(m1))
    _mask(root / "masks" / "val" / "m2.png", np.asarray(m2))
    dm = SegmentationFolderDataModule(str(root), classes=("bg", "a", "b"), val_img_dir="images/val",
                                      val_ann_dir="masks/val", num_workers=0, pin_memory=False)
    dm.setup("validate")
    perfect, constant = SegmentationMetric(dm.num_classes), SegmentationMetric(dm.num_classes)
    for _, masks, indices in dm.val_dataloader():
        # a prediction is needed at ignored pixels too; it must not count
        perfect.update(torch.where(masks == 255, 2, masks), masks, image_ids=indices)
        constant.update(torch.zeros_like(masks), masks, image_ids=indices)
    assert perfect.compute()["miou"].item() == 1.0
    got = constant.compute()
    # predicting class 0 everywhere: IoU_0 = tp / (tp + fp + fn) = 8 / (8 + 13 + 0), IoU_1 = IoU_2 = 0
    assert got["iou_per_class"].tolist() == pytest.approx([8 / 21, 0.0, 0.0])
    assert got["miou"].item() == pytest.approx(8 / 63)
    assert got["pixel_accuracy"].item() == pytest.approx(8 / 21)
    assert got["mean_accuracy"].item() == pytest.approx(1 / 3)


def test_synthetic_folder_writer_is_deterministic(tmp_path):
    a = write_synthetic_folder(tmp_path / "a", num_train=2, num_val=1, seed=3)
    b = write_synthetic_folder(tmp_path / "b", num_train=2, num_val=1, seed=3)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == [".complete.json", "images/train/train_00000.jpg", "images/train/train_00001.jpg",
                     "images/val/val_00000.jpg", "masks/train/train_00000.png", "masks/train/train_00001.png",
                     "masks/val/val_00000.png"]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert Image.open(a / "masks/train/train_00000.png").mode == "L"


def test_make_synthetic_tool_writes_folders(tmp_path):
    import runpy

    tool = Path(__file__).resolve().parents[2] / "tools" / "make_synthetic.py"
    root = runpy.run_path(str(tool), run_name="not_main")["main"](["folder", str(tmp_path / "f"), "--num-train", "2",
                                                                   "--num-val", "1"])
    ds = SegmentationFolder(root / "images" / "train", root / "masks" / "train",
                            classes=("background", "circle", "triangle", "rectangle", "star"))
    assert ds.ids == ["train_00000", "train_00001"]
