"""Two gloo processes fed their DistributedSampler shares (with padding) give the 1-process numbers."""

from __future__ import annotations

import json

import torch
import torch.multiprocessing as mp
from metrics_testdata import IMAGES, ddp_worker, evaluate_indices, write_coco_gt


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype, k
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)
        else:
            assert a[k] == b[k], k


def test_two_gloo_processes_equal_one_process(tmp_path, free_port):
    ann_file = str(write_coco_gt(tmp_path / "instances.json"))
    n = len(IMAGES)  # 7 images on 2 ranks: DistributedSampler pads with one repeated sample
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    single = evaluate_indices(list(range(n)), ann_file, results_file=str(single_dir / "results.json"))

    # fork where available: the children inherit the imported modules instead of paying ~6 s of CPU each
    # to import torch and torchmetrics again (they set 1 intra-op thread first, as DataLoader workers do)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    args = (2, free_port, str(tmp_path), ann_file, n)
    mp.start_processes(ddp_worker, args=args, nprocs=2, join=True, start_method=method)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    seen = ranks[0]["indices"] + ranks[1]["indices"]
    assert len(seen) == n + 1 and sorted(set(seen)) == list(range(n))  # padding really repeats an image
    assert seen != sorted(seen)  # and the order differs from the 1-process run
    for r in ranks:
        for name in ("coco", "coco_segm", "voc07", "voc_area", "seg"):
            assert_same(r["out"][name], single[name])
    # the check has teeth: the metric that cannot de-duplicate (no image ids) counts the padding twice
    assert not torch.equal(
        ranks[0]["out"]["seg_without_ids"]["pixel_accuracy"], single["seg"]["pixel_accuracy"]
    )
    assert_same(ranks[0]["out"]["seg_without_ids"], ranks[1]["out"]["seg_without_ids"])
    # rank 0 wrote the results file, with the same content as the 1-process run
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == json.loads((single_dir / "results.json").read_text())
    # mask AP: the RLE byte states gather across ranks (uneven lengths) to the 1-process numbers and results
    for name in ("results_m.json", "results_m_segm.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((single_dir / name).read_text())
    assert 0.0 < single["coco_segm"]["segm_map"].item() < 1.0
    assert single["coco_segm"]["segm_map"] != single["coco_segm"]["map"]
    assert all(torch.equal(single["coco_segm"][k], single["coco"][k]) for k in single["coco"])
    assert 0.0 < single["coco"]["map"].item() < 1.0 and 0.0 < single["voc07"]["map"].item() < 1.0
