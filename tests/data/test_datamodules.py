"""DataModules: missing-data messages, classes before setup, batches with the transform presets."""

from __future__ import annotations

import inspect
import json
import pickle

import pytest
import torch

from ghost_vision.data import (
    CityscapesDataModule,
    CocoDataModule,
    DataError,
    IndexedDataset,
    SegmentationFolderDataModule,
    SyntheticCityscapesDataModule,
    SyntheticCocoDataModule,
    SyntheticSegmentationFolderDataModule,
    SyntheticVOCDetectionDataModule,
    SyntheticVOCSegmentationDataModule,
    VOCDetectionDataModule,
    VOCSegmentationDataModule,
    detection_collate,
)

ALL = [CocoDataModule, VOCDetectionDataModule, VOCSegmentationDataModule, CityscapesDataModule,
       SyntheticCocoDataModule, SyntheticVOCDetectionDataModule, SyntheticVOCSegmentationDataModule,
       SyntheticCityscapesDataModule, SegmentationFolderDataModule, SyntheticSegmentationFolderDataModule]


@pytest.mark.parametrize("cls", ALL)
def test_every_init_argument_is_annotated(cls):
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert params and all(p.annotation is not inspect.Parameter.empty for p in params)


@pytest.mark.parametrize(
    ("cls", "expected", "how", "config"),
    [
        (CocoDataModule, "nowhere/train2017", "cocodataset.org", "ghost-vision train ssdlite_ghost_shapes"),
        (VOCDetectionDataModule, "nowhere/VOC2007/ImageSets/Main/trainval.txt", "host.robots.ox.ac.uk",
         "ghost-vision train ssdlite_ghost_shapes"),
        (VOCSegmentationDataModule, "nowhere/VOC2012/ImageSets/Segmentation/train.txt", "host.robots.ox.ac.uk",
         "ghost-vision train deeplabv3_ghost_shapes"),
        (CityscapesDataModule, "nowhere/leftImg8bit/train", "cityscapes-dataset.com",
         "ghost-vision train deeplabv3_ghost_shapes"),
    ],
)
def test_missing_root_message(tmp_path, cls, expected, how, config):
    dm = cls(root=str(tmp_path / "nowhere"))
    for step in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(FileNotFoundError) as err:
            step()
        msg = str(err.value)
        assert str(tmp_path / expected) in msg and how in msg and config in msg


def test_classes_without_data():
    assert VOCDetectionDataModule().num_classes == 21
    assert VOCDetectionDataModule(classes=("raccoon",)).num_classes == 2
    assert VOCSegmentationDataModule().num_classes == 21
    assert CityscapesDataModule().num_classes == 19 and len(CityscapesDataModule().classes) == 19
    dm = SyntheticCocoDataModule(root="does/not/matter")
    assert dm.num_classes == 5 and dm.classes == ("circle", "triangle", "rectangle", "star")
    assert dm.label_to_cat_id == {1: 2, 2: 5, 3: 9, 4: 17}
    assert SyntheticCityscapesDataModule().num_classes == 19


def test_coco_datamodule_reads_classes_from_files(synthetic_coco_root):
    dm = CocoDataModule(root=str(synthetic_coco_root), train_transform=None, eval_transform=None, num_workers=0)
    assert dm.num_classes == 5 and dm.label_to_cat_id == {1: 2, 2: 5, 3: 9, 4: 17}
    assert dm.val_ann_file == synthetic_coco_root / "annotations" / "instances_val2017.json"
    dm.setup("fit")
    data = json.loads((synthetic_coco_root / "annotations" / "instances_train2017.json").read_text())
    non_empty = {a["image_id"] for a in data["annotations"] if not a["iscrowd"]}
    assert len(non_empty) == 10  # remove_empty=True (the default) drops the 2 images without boxes
    assert dm.train_dataset.ids == sorted(non_empty) and len(dm.val_dataset) == 4


def test_synthetic_coco_datamodule_with_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dm = SyntheticCocoDataModule(num_train=6, num_val=3, batch_size=4, num_workers=0, image_size=128)
    dm.prepare_data()
    assert (tmp_path / "data_cache/shapes_coco/annotations/instances_val2017.json").is_file()
    assert dm.val_ann_file == tmp_path / "data_cache/shapes_coco/annotations/instances_val2017.json"
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, tuple) and len(images) == 4 and len(targets) == 4
    assert all(im.shape == (3, 128, 128) for im in images)
    for t in targets:
        b = t["boxes"]
        assert b.dtype == torch.float32 and bool((b >= 0).all() and (b <= 128).all())
        assert bool(((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all())
    images, targets = next(iter(dm.val_dataloader()))
    # Detection eval keeps the file's size by default: the detector resizes and maps boxes back itself.
    assert len(images) == 3 and all(tuple(im.shape[1:]) == tuple(t["orig_size"].tolist())
                                    for im, t in zip(images, targets))
    assert not all(im.shape == (3, 128, 128) for im in images)
    assert [int(t["image_id"]) for t in targets] == [500003, 500013, 500023]


def test_synthetic_voc_detection_datamodule_keeps_difficult_for_eval(tmp_path):
    dm = SyntheticVOCDetectionDataModule(root=str(tmp_path / "voc"), num_train=4, num_val=2, batch_size=2,
                                         num_workers=0, train_transform="none", eval_transform="det_eval",
                                         image_size=96)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.val_dataset.keep_difficult and not dm.train_dataset.keep_difficult
    images, targets = next(iter(dm.val_dataloader()))
    assert all(im.shape == (3, 96, 96) for im in images) and all("difficult" in t for t in targets)


@pytest.mark.parametrize("cls", [SyntheticCityscapesDataModule, SyntheticVOCSegmentationDataModule])
def test_segmentation_datamodules(tmp_path, cls):
    dm = cls(root=str(tmp_path / "seg"), num_train=3, num_val=2, batch_size=2, num_workers=0, crop_size=64)
    dm.prepare_data()
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64) and masks.dtype == torch.int64
    batches = list(dm.val_dataloader())
    assert [b[2].tolist() for b in batches] == [[0], [1]]  # (images, masks, indices), batch size 1
    image, mask, index = batches[1]
    ref_image, ref_mask = dm.val_dataset[1]
    assert torch.equal(image[0], ref_image) and torch.equal(mask[0], ref_mask)
    sized = cls(root=str(tmp_path / "seg"), num_train=3, num_val=2, val_batch_size=2, eval_size=48, num_workers=0)
    sized.setup("validate")
    images, masks, indices = next(iter(sized.val_dataloader()))
    assert images.shape == (2, 3, 48, 48) and indices.tolist() == [0, 1]


def test_collate_and_indexed_dataset_are_picklable():
    batch = [(torch.zeros(3, 2, 2), {"a": 1}), (torch.ones(3, 4, 4), {"a": 2})]
    images, targets = pickle.loads(pickle.dumps(detection_collate))(batch)
    assert [im.shape[1] for im in images] == [2, 4] and targets == ({"a": 1}, {"a": 2})
    wrapped = pickle.loads(pickle.dumps(IndexedDataset([("x", "y"), ("z", "w")])))
    assert wrapped[1] == ("z", "w", 1) and len(wrapped) == 2


def _cli_defaults(cls) -> dict:
    """Every option of ``cls`` with its default as LightningCLI resolves it (jsonargparse follows the
    ``**kwargs`` each DataModule forwards to its base classes)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    return vars(parser.get_defaults().data)


def _shared_options(cls) -> dict:
    """A distinct, non-default value for every shared option ``cls`` takes."""
    params = _cli_defaults(cls)
    values = {"batch_size": 7, "val_batch_size": 3, "num_workers": 5, "skip_corrupt": True,
              "train_transform": "none", "eval_transform": "seg_eval", "train_transform_kwargs": {"seed": 11},
              "eval_transform_kwargs": {"seed": 12}, "image_size": 123, "crop_size": 77, "scale": (0.3, 0.9),
              "eval_size": 55}
    out = {k: v for k, v in values.items() if k in params}
    out["pin_memory"] = not params["pin_memory"]
    return out


@pytest.mark.parametrize("cls", ALL)
def test_every_shared_option_reaches_its_attribute(cls, tmp_path):
    """Options are forwarded by name: each value lands on the attribute of the same name."""
    options = _shared_options(cls)
    assert {"batch_size", "num_workers", "pin_memory", "skip_corrupt", "train_transform"} <= set(options)
    required = {"classes": ("a", "b")} if cls is SegmentationFolderDataModule else {}
    dm = cls(root=str(tmp_path / "x"), **required, **options)
    for name, value in options.items():
        got = getattr(dm, name)
        assert got == (tuple(value) if name == "scale" else value), (name, got, value)
    # keyword-only after root: a value passed by position cannot silently land on another option
    with pytest.raises(TypeError):
        cls(str(tmp_path / "x"), *([None] * 6), **required)


@pytest.mark.parametrize("cls", ALL)
def test_defaults_seen_by_the_cli_are_the_ones_used(cls, tmp_path):
    """What ``--print_config`` shows as a default is what the DataModule gets when the option is left out
    (the synthetic sets' own ``num_workers=2``/``pin_memory=False``, Cityscapes' ``crop_size=768``)."""
    defaults = _cli_defaults(cls)
    required = {"classes": ("a", "b")} if cls is SegmentationFolderDataModule else {}
    dm = cls(root=str(tmp_path / "x"), **required)
    shared = {"batch_size", "val_batch_size", "num_workers", "pin_memory", "skip_corrupt", "train_transform",
              "eval_transform", "image_size", "crop_size", "scale", "eval_size"}
    checked = {name for name in shared if name in defaults}
    assert {"batch_size", "num_workers", "pin_memory", "train_transform"} <= checked
    for name in checked:
        expected = defaults[name] if defaults[name] is not None or name != "val_batch_size" else defaults["batch_size"]
        got = getattr(dm, name)
        assert got == (tuple(expected) if name == "scale" else expected), (cls.__name__, name, got, expected)
    synthetic = cls.__name__.startswith("Synthetic")
    assert (defaults["num_workers"], defaults["pin_memory"]) == ((2, False) if synthetic else (4, True))
    if cls is CityscapesDataModule:
        assert defaults["crop_size"] == 768


def test_base_classes_take_keywords_only():
    from ghost_vision.data.loading import _BaseDataModule, _DetectionDataModule

    with pytest.raises(TypeError):
        _BaseDataModule(8, None, 0, False, False, None, None, None, None)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        _DetectionDataModule(image_size=64, batchsize=8)


def test_synthetic_check_data_only_checks(tmp_path):
    """``check_data``/``setup`` write nothing; ``prepare_data`` (``write_data``) writes; changed arguments
    are noticed."""
    root = tmp_path / "shapes"
    dm = SyntheticVOCSegmentationDataModule(root=str(root), num_train=2, num_val=1, num_workers=0)
    for step in (dm.check_data, lambda: dm.setup("fit")):
        with pytest.raises(FileNotFoundError, match=r"no synthetic dataset .* call prepare_data\(\)"):
            step()
    assert not root.exists()
    dm.prepare_data()
    dm.check_data()
    dm.setup("fit")
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 1
    other = SyntheticVOCSegmentationDataModule(root=str(root), num_train=3, num_val=1)
    with pytest.raises(FileNotFoundError, match="'num_train': 2"):
        other.check_data()
    assert other.write_data() == root and other.check_data() is None


def test_coco_train_and_val_must_list_the_same_categories(synthetic_coco_root, tmp_path):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco_root, root)
    val = root / "annotations" / "instances_val2017.json"
    data = json.loads(val.read_text())
    data["categories"] = [c for c in data["categories"] if c["id"] != 5]  # "triangle" missing in val
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 5]
    val.write_text(json.dumps(data))
    dm = CocoDataModule(root=str(root), train_transform=None, num_workers=0)
    with pytest.raises(DataError, match=r"instances_train2017.json and .*instances_val2017.json list different "
                                         r"categories \(\{2: 'circle', 5: 'triangle'.* vs \{2: 'circle', 9:"):
        dm.setup("fit")
