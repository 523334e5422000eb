"""Where the shared metric pieces live: ``first_occurrence_mask`` and ``PerImageMean`` in
``ghost_vision.metrics.per_image`` (torch + torchmetrics only), so segmentation needs no pycocotools."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ghost_vision.metrics import PerImageMean, first_occurrence_mask


def test_segmentation_metrics_do_not_import_pycocotools():
    code = (
        "import sys, ghost_vision.metrics.segmentation, ghost_vision.metrics.voc, ghost_vision.tasks.segmentation\n"
        "from ghost_vision.metrics import SegmentationMetric, PerImageMean\n"
        "assert 'pycocotools' not in sys.modules, sorted(m for m in sys.modules if 'coco' in m)\n"
        "from ghost_vision.metrics import CocoMeanAP  # loaded on first use\n"
        "assert 'pycocotools' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_old_import_paths_give_the_same_objects():
    from ghost_vision.metrics import coco
    from ghost_vision.tasks import segmentation

    assert coco.first_occurrence_mask is first_occurrence_mask
    assert segmentation.PerImageMean is PerImageMean


def test_per_image_mean_counts_each_id_once_against_numpy():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, size=50)  # repeats, as DistributedSampler padding makes them
    values = rng.normal(size=50)
    metric = PerImageMean()
    for chunk in np.array_split(np.arange(50), 7):
        metric.update(torch.from_numpy(values[chunk]), torch.from_numpy(ids[chunk]))
    _, first = np.unique(ids, return_index=True)  # numpy oracle: the first value of each id
    expected = np.mean(values[np.sort(first)])
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-12, abs=0)
    assert first_occurrence_mask(torch.from_numpy(ids)).nonzero().flatten().tolist() == sorted(first.tolist())
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(PerImageMean().compute())
