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
    IndexedDataset,
    SyntheticCityscapesDataModule,
    SyntheticCocoDataModule,
    SyntheticVOCDetectionDataModule,
    SyntheticVOCSegmentationDataModule,
    VOCDetectionDataModule,
    VOCSegmentationDataModule,
    detection_collate,
)

ALL = [CocoDataModule, VOCDetectionDataModule, VOCSegmentationDataModule, CityscapesDataModule,
       SyntheticCocoDataModule, SyntheticVOCDetectionDataModule, SyntheticVOCSegmentationDataModule,
       SyntheticCityscapesDataModule]


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
