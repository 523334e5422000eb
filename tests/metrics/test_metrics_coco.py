"""CocoMeanAP against pycocotools run directly on the same detections (exact equality)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from metrics_testdata import IMAGES, SORTED_CAT_IDS, coco_detections, write_coco_gt
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ghost_vision.metrics import COCO_STAT_NAMES, CocoMeanAP, coco_mean_ap

ALL_IDS = [i for i, _, _ in IMAGES]


@pytest.fixture(scope="module")
def ann_file(tmp_path_factory):
    return write_coco_gt(tmp_path_factory.mktemp("coco") / "instances.json")


def reference_stats(ann_file, dets: dict[int, dict], img_ids, results_file=None):
    """pycocotools used the usual way: results list (or JSON file) → loadRes → COCOeval."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        results = []
        for img_id, d in dets.items():
            for (x1, y1, x2, y2), s, lab in zip(
                d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True
            ):
                results.append({"image_id": img_id, "category_id": SORTED_CAT_IDS[lab - 1],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})  # fmt: skip
        dt = gt.loadRes(str(results_file) if results_file else results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats.tolist()


def run_metric(ann_file, img_ids, batch_size=3, **kwargs):
    metric = CocoMeanAP(ann_file, **kwargs)
    for k in range(0, len(img_ids), batch_size):
        ids = img_ids[k : k + batch_size]
        # image_id given as int and as 0-d tensor
        targets = [{"image_id": i if n % 2 else torch.tensor(i)} for n, i in enumerate(ids)]
        metric.update([coco_detections(i) for i in ids], targets)
    return metric


def test_equals_pycocotools_to_the_last_digit(ann_file):
    out = run_metric(ann_file, ALL_IDS).compute()
    ref = reference_stats(ann_file, {i: coco_detections(i) for i in ALL_IDS}, ALL_IDS)
    assert list(out) == list(COCO_STAT_NAMES)
    assert [out[k].item() for k in COCO_STAT_NAMES] == ref
    assert all(out[k].dtype == torch.float64 and out[k].ndim == 0 for k in out)
    # the data exercises every area range and gives non-trivial numbers
    assert all(0.0 < v < 1.0 for v in ref), ref


def test_only_images_seen_count_and_order_does_not_matter(ann_file):
    seen = [42, 12, 30, 11]  # includes an image without detections (30) and one without GT (42)
    out = run_metric(ann_file, seen, batch_size=2).compute()
    ref = reference_stats(ann_file, {i: coco_detections(i) for i in seen}, seen)
    assert [out[k].item() for k in COCO_STAT_NAMES] == ref
    full = reference_stats(ann_file, {i: coco_detections(i) for i in seen}, ALL_IDS)
    assert ref != full  # evaluating over all images (GT of unseen images as misses) would differ
    # image 30 (GT, no detections) counts: leaving it out changes the numbers
    assert ref != reference_stats(ann_file, {i: coco_detections(i) for i in seen}, [42, 12, 11])
    shuffled = run_metric(ann_file, [11, 30, 12, 42], batch_size=4).compute()
    assert all(torch.equal(shuffled[k], out[k]) for k in out)


def test_repeated_image_ids_count_once_keeping_the_first(ann_file):
    metric = run_metric(ann_file, ALL_IDS)
    other = coco_detections(12)  # a *different* set of detections for image 11, appended later
    metric.update([other, coco_detections(11)], [{"image_id": 11}, {"image_id": 11}])
    ref = reference_stats(ann_file, {i: coco_detections(i) for i in ALL_IDS}, ALL_IDS)
    assert [metric.compute()[k].item() for k in COCO_STAT_NAMES] == ref


def test_float64_inputs_are_not_rounded(ann_file):
    dets = {}
    for i in ALL_IDS:
        d = coco_detections(i)
        # values that float32 cannot hold: rounding anywhere would change the IoUs / score order
        d = {**d, "boxes": d["boxes"].double() + 1e-9 * torch.arange(d["boxes"].numel()).reshape(-1, 4),
             "scores": d["scores"].double() + 1e-12 * torch.arange(len(d["scores"]))}  # fmt: skip
        dets[i] = d
    metric = CocoMeanAP(ann_file)
    metric.update([dets[i] for i in ALL_IDS], [{"image_id": i} for i in ALL_IDS])
    results = metric.results()
    assert all(type(v) is float for r in results for v in [*r["bbox"], r["score"]])
    b = dets[ALL_IDS[0]]["boxes"][0].tolist()
    assert results[0]["bbox"] == [b[0], b[1], b[2] - b[0], b[3] - b[1]]
    assert [metric.compute()[k].item() for k in COCO_STAT_NAMES] == reference_stats(ann_file, dets, ALL_IDS)


def test_results_json_round_trip(ann_file, tmp_path):
    path = tmp_path / "sub" / "results.json"
    metric = run_metric(ann_file, ALL_IDS, results_file=path)
    out = metric.compute()
    written = json.loads(path.read_text())
    assert written == metric.results()
    assert len(written) == sum(len(coco_detections(i)["scores"]) for i in ALL_IDS)
    assert set(written[0]) == {"image_id", "category_id", "bbox", "score"}
    assert sorted({r["category_id"] for r in written}) == SORTED_CAT_IDS
    assert [r["image_id"] for r in written] == sorted(r["image_id"] for r in written)
    # pycocotools reading the file gives the very same numbers
    ref = reference_stats(ann_file, {}, ALL_IDS, results_file=path)
    assert [out[k].item() for k in COCO_STAT_NAMES] == ref
    other = metric.write_results(tmp_path / "again.json")
    assert json.loads(other.read_text()) == written


def test_no_detections_at_all(ann_file):
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    metric = CocoMeanAP(ann_file)
    metric.update([empty, empty], [{"image_id": 21}, {"image_id": 42}])
    out = metric.compute()
    # image 21 has small and large GT, no medium: like COCOeval for an empty result set, 0 where there is
    # ground truth and -1 where there is none
    assert out["map"].item() == 0.0 and out["mar_100"].item() == 0.0
    assert out["map_small"].item() == 0.0 and out["map_large"].item() == 0.0
    assert out["map_medium"].item() == -1.0 and out["mar_medium"].item() == -1.0


def test_label_maps_and_bad_input(ann_file):
    dets = [coco_detections(i) for i in ALL_IDS]
    targets = [{"image_id": i} for i in ALL_IDS]
    default = coco_mean_ap(ann_file, dets, targets)
    as_list = coco_mean_ap(ann_file, dets, targets, label_to_cat_id=[None, 3, 7, 12])
    as_dict = coco_mean_ap(ann_file, dets, targets, label_to_cat_id={1: 3, 2: 7, 3: 12})
    assert all(torch.equal(default[k], as_list[k]) and torch.equal(default[k], as_dict[k]) for k in default)
    swapped = coco_mean_ap(ann_file, dets, targets, label_to_cat_id={1: 7, 2: 3, 3: 12})
    assert swapped["map"] < default["map"]
    with pytest.raises(ValueError, match="no COCO category id"):
        coco_mean_ap(ann_file, dets, targets, label_to_cat_id={1: 3, 2: 7})
    with pytest.raises(ValueError, match="absent from the annotation file"):
        CocoMeanAP(ann_file, label_to_cat_id={1: 4})
    with pytest.raises(ValueError, match="not in the annotation file"):
        coco_mean_ap(ann_file, dets[:1], [{"image_id": 999}])
    with pytest.raises(FileNotFoundError):
        CocoMeanAP(ann_file.parent / "missing.json")


def test_verbose_prints_the_summary(ann_file, capsys):
    coco_mean_ap(ann_file, [coco_detections(11)], [{"image_id": 11}])
    assert capsys.readouterr().out == ""
    coco_mean_ap(ann_file, [coco_detections(11)], [{"image_id": 11}], verbose=True)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in capsys.readouterr().out


def test_background_label_predictions_are_dropped_before_scoring(ann_file):
    """RetinaNet/FCOS can predict label 0 (the background slot, no COCO category): the detection task drops those
    boxes before the metric, whose result equals pycocotools on the other detections; the metric alone refuses
    label 0, naming the image."""
    from ghost_vision.tasks import DetectionTask

    dets = {i: coco_detections(i) for i in ALL_IDS}
    with_bg = {}
    for i, d in dets.items():
        n = len(d["labels"])
        with_bg[i] = {"boxes": torch.cat([d["boxes"], torch.tensor([[1.0, 1, 30, 30]] * 2)]),
                      "scores": torch.cat([d["scores"], torch.tensor([0.99, 0.5])]),
                      "labels": torch.cat([d["labels"], torch.zeros(2, dtype=d["labels"].dtype)])}
        assert len(with_bg[i]["labels"]) == n + 2
    metric = CocoMeanAP(ann_file)
    ids = list(dets)
    metric.update(DetectionTask.drop_background([with_bg[i] for i in ids]), [{"image_id": i} for i in ids])
    out = metric.compute()
    assert [out[k].item() for k in COCO_STAT_NAMES] == reference_stats(ann_file, dets, ALL_IDS)
    raw = CocoMeanAP(ann_file)
    raw.update([with_bg[ids[0]]], [{"image_id": ids[0]}])
    with pytest.raises(ValueError, match=f"image {ids[0]}: predicted label 0 has no COCO category id"):
        raw.compute()
