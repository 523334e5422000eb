"""Cityscapes: the label table against cityscapesscripts, and the dataset on synthetic Cityscapes files."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ghost_vision.data import CITYSCAPES_CLASSES, CityscapesSegmentation, DataError, label_ids_to_train_ids
from ghost_vision.data.cityscapes import CITYSCAPES_LABELS

labels_mod = pytest.importorskip("cityscapesscripts.helpers.labels")


def test_label_table_equals_cityscapesscripts():
    ref = labels_mod.labels
    assert [(lab.name, lab.id, lab.trainId) for lab in ref] == list(CITYSCAPES_LABELS)
    for lab in ref:
        expected = lab.trainId if lab.trainId not in (255, -1) else 255
        assert label_ids_to_train_ids(np.array([lab.id]))[0] == expected, lab.name
    assert label_ids_to_train_ids(np.array([-1, 34, 200, 255, 300, 7])).tolist() == [255, 255, 255, 255, 255, 0]
    names = [lab.name for lab in sorted(ref, key=lambda x: x.trainId) if 0 <= lab.trainId < 255]
    assert CITYSCAPES_CLASSES == tuple(names) and len(names) == 19


def test_synthetic_cityscapes(synthetic_cityscapes_root):
    root = synthetic_cityscapes_root
    ds = CityscapesSegmentation(root, split="train")
    assert ds.num_classes == 19 and ds.classes == CITYSCAPES_CLASSES
    assert len(ds) == 6
    assert ds.ids[:2] == ["aachen/aachen_000000_000019", "aachen/aachen_000002_000019"]
    lut = {lab.id: (lab.trainId if lab.trainId not in (255, -1) else 255) for lab in labels_mod.labels}
    ignored_seen = set()
    for i in range(len(ds)):
        image, mask = ds[i]
        raw = np.array(Image.open(ds.label_path(i)))
        assert image.shape == (3, *raw.shape) and mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), np.vectorize(lut.get)(raw))
        ignored_seen |= set(np.unique(raw[mask.numpy() == 255]).tolist())
    assert ignored_seen  # the synthetic data exercises ids that map to 255
    assert ignored_seen <= {0, 1, 4, 5, 14, 29, 30}
    assert len(CityscapesSegmentation(root, split="val")) == 3


def test_cityscapes_errors(tmp_path, caplog):
    city = tmp_path / "leftImg8bit" / "train" / "x"
    gt = tmp_path / "gtFine" / "train" / "x"
    city.mkdir(parents=True)
    gt.mkdir(parents=True)
    for stem in ("x_000000_000019", "x_000001_000019"):
        Image.new("RGB", (6, 4)).save(city / f"{stem}_leftImg8bit.png")
    Image.fromarray(np.full((4, 6), 26, np.uint8)).save(gt / "x_000001_000019_gtFine_labelIds.png")
    ds = CityscapesSegmentation(tmp_path)
    with pytest.raises(FileNotFoundError, match="x_000000_000019_gtFine_labelIds.png"):
        ds[0]
    assert ds[1][1].unique().tolist() == [13]
    skipping = CityscapesSegmentation(tmp_path, skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="ghost_vision.data"):
        assert skipping[0] is None
        assert skipping[1][1].unique().tolist() == [13]
    assert skipping.num_skipped == 1 and "skipping sample 0" in caplog.records[0].getMessage()
    assert skipping.skipped_files() == [str(gt / "x_000000_000019_gtFine_labelIds.png")]
    # a label of another size, label ids outside the table (a colour or instance PNG by mistake)
    Image.fromarray(np.full((5, 6), 26, np.uint8)).save(gt / "x_000000_000019_gtFine_labelIds.png")
    with pytest.raises(DataError, match=r"x_000000_000019_gtFine_labelIds\.png is \(6, 5\) \(W, H\) but its image "
                       r".*x_000000_000019_leftImg8bit\.png is \(6, 4\)"):
        ds[0]
    ids = np.full((4, 6), 26, np.uint8)
    ids[0, :3] = (34, 200, 34)
    Image.fromarray(ids).save(gt / "x_000000_000019_gtFine_labelIds.png")
    with pytest.raises(DataError, match=r"labelIds\.png holds label ids 34, 200 \(2 in all\) outside the label table "
                       r"\(0\.\.33\)"):
        ds[0]
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/val"):
        CityscapesSegmentation(tmp_path, split="val")
