"""SegmentationMetric against hand-computed confusion matrices and cityscapesscripts' IoU functions."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from metrics_testdata import seg_sample

from ghost_vision.metrics import SegmentationMetric, confusion_matrix, scores_from_confusion_matrix

T1 = torch.tensor([[0, 0, 1], [1, 255, 2]])
P1 = torch.tensor([[0, 1, 1], [2, 0, 2]])  # the 0 predicted on the 255 pixel must not count
T2 = torch.tensor([[2, 2, 255], [0, 1, 1]])
P2 = torch.tensor([[2, 0, 1], [0, 1, 1]])
# rows: ground truth, columns: prediction; class 3 is neither in the GT nor predicted
CM = torch.tensor([[2, 1, 0, 0],
                   [0, 3, 1, 0],
                   [1, 0, 2, 0],
                   [0, 0, 0, 0]])  # fmt: skip


def test_hand_computed_confusion_matrix_and_scores():
    assert torch.equal(confusion_matrix(torch.stack([P1, P2]), torch.stack([T1, T2]), 4), CM)
    metric = SegmentationMetric(4)
    metric.update(P1[None], T1[None])
    metric.update(P2[None], T2[None])
    out = metric.compute()
    # IoU = tp / (tp + fp + fn): class 0: 2 / (2 + 1 + 1), class 1: 3 / (3 + 1 + 1), class 2: 2 / (2 + 1 + 1)
    iou = out["iou_per_class"].tolist()
    assert iou[:3] == [0.5, 0.6, 0.5] and math.isnan(iou[3])
    assert out["miou"].item() == (0.5 + 0.6 + 0.5) / 3  # class 3 (nan) left out of the mean
    assert out["pixel_accuracy"].item() == 7 / 10
    assert out["mean_accuracy"].item() == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3, abs=1e-15)


def test_predicted_but_absent_class_counts_as_zero():
    p1 = P1.clone()
    p1[0, 0] = 3  # a class-0 pixel predicted as 3: class 3 has fp = 1 -> IoU 0, included in the mean
    metric = SegmentationMetric(4)
    metric.update(torch.stack([p1, P2]), torch.stack([T1, T2]))
    out = metric.compute()
    # class 0: tp 1, fp 1 (the 2 -> 0 pixel), fn 2 -> 1/4
    assert out["iou_per_class"].tolist() == [0.25, 0.6, 0.5, 0.0]
    assert out["miou"].item() == (0.25 + 0.6 + 0.5 + 0.0) / 4


def test_logits_equal_labels_and_sum_equals_per_image():
    logits, target = zip(*(seg_sample(i) for i in range(5)), strict=True)
    logits, target = torch.stack(logits), torch.stack(target)
    a = SegmentationMetric(4)
    a.update(logits, target)
    b = SegmentationMetric(4)
    b.update(logits.argmax(1), target, image_ids=torch.arange(5))
    assert torch.equal(a.confusion_matrix(), b.confusion_matrix())
    assert int(a.confusion_matrix().sum()) == int((target != 255).sum())
    out = a.compute()
    assert math.isnan(out["iou_per_class"][3].item()) is False  # predicted somewhere though never in the GT
    assert 0.3 < out["miou"].item() < 1.0


def test_repeated_image_ids_count_once():
    logits, target = zip(*(seg_sample(i) for i in range(3)), strict=True)
    metric = SegmentationMetric(4)
    metric.update(torch.stack(logits), torch.stack(target), image_ids=[0, 1, 2])
    metric.update(torch.stack(logits[:2]), torch.stack(target[:2]), image_ids=[2, 0])  # padding repeats
    reference = SegmentationMetric(4)
    reference.update(torch.stack(logits), torch.stack(target))
    assert torch.equal(metric.confusion_matrix(), reference.confusion_matrix())


def test_equals_cityscapesscripts():
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs
    from cityscapesscripts.helpers.labels import labels

    g = torch.Generator().manual_seed(0)
    cm = torch.randint(0, 5000, (19, 19), generator=g) * (torch.rand(19, 19, generator=g) < 0.3)
    cm += torch.diag(torch.randint(10_000, 90_000, (19,), generator=g))
    cm[5, :] = 0  # class 5 absent from the GT but predicted: IoU 0
    cm[11, :] = 0
    cm[:, 11] = 0  # class 11 absent and never predicted: nan, out of the mean
    # the same matrix over Cityscapes label ids; GT rows of ignored labels hold junk that must not matter
    train_to_id = {lab.trainId: lab.id for lab in labels if not lab.ignoreInEval}
    size = max(lab.id for lab in labels) + 1
    big = torch.randint(0, 100, (size, size), generator=g)
    for a in range(19):
        for b in range(19):
            big[train_to_id[a], train_to_id[b]] = cm[a, b]
        big[train_to_id[a], [lab.id for lab in labels if lab.ignoreInEval and lab.id >= 0]] = 0
    args = SimpleNamespace(evalLabels=sorted(lab.id for lab in labels if lab.id >= 0))
    # what the script's main() does: one score per evaluated label id, then the nan-skipping average
    id2label = {lab.id: lab for lab in labels}
    class_scores = {id2label[i].name: cs.getIouScoreForLabel(i, big.numpy(), args) for i in args.evalLabels}
    expected_iou = [class_scores[id2label[train_to_id[t]].name] for t in range(19)]
    out = scores_from_confusion_matrix(cm)
    got = out["iou_per_class"].tolist()
    assert got[5] == 0.0 and math.isnan(got[11]) and math.isnan(expected_iou[11])
    assert got[:11] + got[12:] == expected_iou[:11] + expected_iou[12:]
    assert out["miou"].item() == cs.getScoreAverage(class_scores, args)


def test_bad_input():
    with pytest.raises(ValueError, match="outside 0..3"):
        SegmentationMetric(4).update(P1[None], torch.tensor([[[0, 0, 7], [1, 255, 2]]]))
    with pytest.raises(ValueError, match="channels"):
        SegmentationMetric(3).update(torch.randn(1, 4, 2, 3), T1[None])
    with pytest.raises(ValueError, match="image_ids"):
        SegmentationMetric(4).update(P1[None], T1[None], image_ids=[1, 2])
