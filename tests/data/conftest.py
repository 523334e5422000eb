"""Session fixtures: small synthetic datasets in each real format (shared by the data tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ghost_vision.data.synthetic import write_synthetic_cityscapes, write_synthetic_coco, write_synthetic_voc


@pytest.fixture(scope="session")
def synthetic_coco_root(tmp_path_factory) -> Path:
    return write_synthetic_coco(tmp_path_factory.mktemp("syn") / "coco", num_train=12, num_val=4, seed=0)


@pytest.fixture(scope="session")
def synthetic_voc_root(tmp_path_factory) -> Path:
    return write_synthetic_voc(tmp_path_factory.mktemp("syn") / "voc", num_train=10, num_val=4, seed=0)


@pytest.fixture(scope="session")
def synthetic_cityscapes_root(tmp_path_factory) -> Path:
    return write_synthetic_cityscapes(tmp_path_factory.mktemp("syn") / "cityscapes", num_train=6, num_val=3, seed=0)
