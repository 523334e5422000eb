"""Shared test fixtures and settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
# ../shared/datasets next to the checkout; GHOST_VISION_SHARED_DATASETS points elsewhere (e.g. from a worktree)
SHARED_DATASETS = Path(os.environ.get("GHOST_VISION_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def raccoon_root() -> Path:
    """The VOCdevkit-style folder with the real raccoon photos (skips when absent)."""
    root = SHARED_DATASETS / "raccoon_voc"
    if not (root / "VOC2007" / "Annotations").is_dir():
        pytest.skip(f"real-format raccoon data not found at {root} (see shared/datasets/README.md)")
    return root


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test: with 2 threads on a busy 2-core machine OpenMP's spinning makes the
    detectors up to 100x slower (SSDLite forward 35 ms with 1 thread, 3 s with 2 under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
