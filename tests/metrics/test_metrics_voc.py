"""VOCMeanAP against hand-computed cases and a transcription of the devkit's 1-based computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metrics_testdata import voc_sample

from ghost_vision.metrics import VOCMeanAP, voc_ap, voc_box_iou


def det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels)}  # fmt: skip


def gt(boxes, labels, image_id, difficult=None):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
         "image_id": image_id}  # fmt: skip
    if difficult is not None:
        t["difficult"] = torch.tensor(difficult)
    return t


# Image A: class-1 GT g1 and a *difficult* class-1 GT g2; class-3 GT g4 that nobody detects.
# Image B: class-1 GT g3. Detections, by score:
#   .9 A on g1          -> TP   (tp=1 fp=0)  rec 1/2 prec 1
#   .8 A on g1 again    -> FP, duplicate (tp=1 fp=1) rec 1/2 prec 1/2
#   .7 A on g2          -> difficult: neither (tp=1 fp=1) rec 1/2 prec 1/2
#   .6 B nowhere        -> FP   (tp=1 fp=2)  rec 1/2 prec 1/3
#   .5 B on g3, IoU .9  -> TP   (tp=2 fp=2)  rec 1   prec 1/2
# Class 2 has a detection but no GT: AP nan, excluded from the mean.
PREDS = [det([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 1]),
         det([[50, 50, 60, 60], [0, 0, 10, 9], [0, 0, 5, 5]], [0.6, 0.5, 0.4], [1, 1, 2])]  # fmt: skip
TARGETS = [gt([[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70]], [1, 1, 3], 0, [False, True, False]),
           gt([[0, 0, 10, 10]], [1], 1)]  # fmt: skip
REC = [0.5, 0.5, 0.5, 0.5, 1.0]
PREC = [1.0, 0.5, 0.5, 1 / 3, 0.5]
# 11-point: t = 0, .1, ..., .5 -> max prec at rec >= t is 1; t = .6 ... 1 -> only rec 1 with prec .5
AP_07 = (6 * 1.0 + 5 * 0.5) / 11
# area: envelope 1 on (0, .5], then .5 on (.5, 1]
AP_AREA = 0.5 * 1.0 + 0.5 * 0.5


@pytest.mark.parametrize(("use_07", "ap1"), [(True, AP_07), (False, AP_AREA)])
def test_hand_computed_case(use_07, ap1):
    metric = VOCMeanAP(num_classes=4, use_07_metric=use_07)
    metric.update(PREDS, TARGETS)
    out = metric.compute()
    assert out["method"] == ("voc07_11point" if use_07 else "area")
    assert out["ap_per_class"].shape == (3,)  # num_classes counts the background
    assert out["ap_per_class"][0].item() == pytest.approx(ap1, abs=1e-15)
    assert np.isnan(out["ap_per_class"][1].item())  # no GT of class 2
    assert out["ap_per_class"][2].item() == 0.0  # GT never detected
    assert out["map"].item() == pytest.approx((ap1 + 0.0) / 2, abs=1e-15)


def test_voc_ap_on_the_hand_written_curve():
    assert voc_ap(np.array(REC), np.array(PREC), True) == pytest.approx(AP_07, abs=1e-15)
    assert voc_ap(np.array(REC), np.array(PREC), False) == pytest.approx(AP_AREA, abs=1e-15)
    # the devkit's thresholds are np.arange(0, 1.1, 0.1): the 4th is 0.30000000000000004 > 3/10, so a
    # recall of exactly 0.3 only reaches the first three thresholds
    assert voc_ap(np.array([0.1, 0.2, 3 / 10]), np.array([1.0, 1.0, 1.0]), True) == pytest.approx(3 / 11)
    assert voc_ap(np.array([0.1, 0.2, 3 / 10]), np.array([1.0, 1.0, 1.0]), False) == pytest.approx(0.3)


def test_matching_rules():
    # IoU exactly 0.5 is not a match (devkit: ovmax > 0.5); best GT already taken -> FP, no fallback
    metric = VOCMeanAP(num_classes=2, use_07_metric=False)
    metric.update([det([[0, 0, 10, 20]], [0.9], [1])], [gt([[0, 0, 10, 10]], [1], 0)])
    assert metric.compute()["map"].item() == 0.0
    metric = VOCMeanAP(num_classes=2, use_07_metric=False)
    # g1 = [0,0,10,10], g2 = [1,0,11,10]; d1 hits g1, d2 = [0,0,10,10] again (IoU 1 with g1, .82 with g2)
    metric.update([det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])],
                  [gt([[0, 0, 10, 10], [1, 0, 11, 10]], [1, 1], 0)])  # fmt: skip
    # tp: 1, 1; fp: 0, 1 -> rec .5 .5, prec 1 .5 -> area .5
    assert metric.compute()["map"].item() == 0.5


def test_iou_without_plus_one_equals_devkit_on_converted_boxes():
    # VOC 1-based inclusive (xmin, ymin, xmax, ymax) = (1, 1, 10, 10) and (6, 1, 15, 10): 10x10 pixels each,
    # overlap 5x10 -> devkit IoU 50 / 150. Ours on (x1 = xmin - 1, x2 = xmax): (0, 0, 10, 10), (5, 0, 15, 10)
    iou = voc_box_iou(np.array([0.0, 0.0, 10.0, 10.0]), np.array([[5.0, 0.0, 15.0, 10.0], [20, 20, 30, 30]]))
    assert iou.tolist() == [50 / 150, 0.0]


def devkit_voc_eval(preds, targets, classname, use_07_metric):
    """Transcription of py-faster-rcnn's voc_eval() on 1-based inclusive boxes (with its +1 widths)."""
    to_voc = np.array([1.0, 1.0, 0.0, 0.0])  # x1 = xmin - 1, x2 = xmax
    recs = {t["image_id"]: t for t in targets}
    class_recs, npos = {}, 0
    for img, t in recs.items():
        m = t["labels"].numpy() == classname
        bbox = t["boxes"].double().numpy()[m] + to_voc
        difficult = t["difficult"].numpy()[m].astype(bool)
        npos += int(sum(~difficult))
        class_recs[img] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}
    image_ids, confidence, bb_list = [], [], []
    for p, t in zip(preds, targets, strict=True):
        m = p["labels"].numpy() == classname
        image_ids += [t["image_id"]] * int(m.sum())
        confidence += p["scores"].double().numpy()[m].tolist()
        bb_list += (p["boxes"].double().numpy()[m] + to_voc).tolist()
    confidence, BB = np.array(confidence), np.array(bb_list).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)  # fmt: skip
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > 0.5:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07_metric)


@pytest.mark.parametrize("use_07", [True, False])
def test_equals_devkit_transcription_on_random_data(use_07):
    samples = [voc_sample(i) for i in range(40)]  # integer-valued boxes, as VOC annotations are
    preds, targets = [s[0] for s in samples], [s[1] for s in samples]
    metric = VOCMeanAP(class_names=("a", "b", "c"), use_07_metric=use_07)
    for k in range(0, len(samples), 4):
        metric.update(preds[k : k + 4], targets[k : k + 4])
    out = metric.compute()
    ref = [devkit_voc_eval(preds, targets, c, use_07) for c in (1, 2, 3)]
    assert out["ap_per_class"].tolist() == ref
    assert out["map"].item() == float(np.mean(ref))
    assert all(0.1 < a < 0.95 for a in ref), ref


def test_repeated_image_ids_count_once():
    metric = VOCMeanAP(num_classes=4)
    metric.update(PREDS, TARGETS)
    metric.update([det([[0, 0, 10, 10]], [0.95], [3])], [gt([[60, 60, 70, 70]], [3], 0)])  # image 0 again
    reference = VOCMeanAP(num_classes=4)
    reference.update(PREDS, TARGETS)
    assert torch.equal(metric.compute()["map"], reference.compute()["map"])


def test_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        VOCMeanAP()
    with pytest.raises(ValueError, match="labels must be in 1..2"):
        VOCMeanAP(num_classes=3).update(PREDS, TARGETS)  # 2 classes + background, class 3 in the data
    with pytest.raises(ValueError, match="2 class_names"):
        VOCMeanAP(num_classes=2, class_names=["a", "b"])
    assert VOCMeanAP(num_classes=3, class_names=["a", "b"]).num_foreground == 2
