"""Shared test fixtures and settings."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
# ../shared/datasets next to the checkout; GHOST_VISION_SHARED_DATASETS points elsewhere (e.g. from a worktree)
SHARED_DATASETS = Path(os.environ.get("GHOST_VISION_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for gloo process groups and a server that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def raccoon_root() -> Path:
    """The VOCdevkit-style folder with the real raccoon photos (skips when absent)."""
    root = SHARED_DATASETS / "raccoon_voc"
    if not (root / "VOC2007" / "Annotations").is_dir():
        pytest.skip(f"real-format raccoon data not found at {root} (see shared/datasets/README.md)")
    return root


@pytest.fixture(scope="session")
def labelbox_masks() -> Path:
    """The 10 real COCO val2017 photos with polygon / multi-polygon / crowd-RLE masks (skips when absent)."""
    root = SHARED_DATASETS / "labelbox_coco_masks"
    if not (root / "rle.json").is_file():
        pytest.skip(f"real COCO mask data not found at {root} (see shared/datasets/README.md)")
    return root


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test: with 2 threads on a busy 2-core machine OpenMP's spinning makes the
    detectors up to 100x slower (SSDLite forward 35 ms with 1 thread, 3 s with 2 under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def truncate_file(path: Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its bytes (a download or copy that died half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture()
def raccoon_coco(raccoon_root, tmp_path) -> dict:
    """12 raccoon photos as a COCO split (``val2017`` + ``annotations/instances_val2017.json``, ids 101..112),
    two of them truncated on disk; ``train2017`` holds the same 12, whole."""
    from ghost_vision.data.voc import parse_voc_xml

    src = raccoon_root / "VOC2007"
    ids = sorted(p.stem for p in (src / "Annotations").glob("*.xml"))[:12]
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for k, name in enumerate(ids):
        shutil.copy(src / "JPEGImages" / f"{name}.jpg", root / "val2017" / f"{name}.jpg")
        w, h = Image.open(root / "val2017" / f"{name}.jpg").size
        images.append({"id": 101 + k, "file_name": f"{name}.jpg", "width": w, "height": h})
        objects, _ = parse_voc_xml(src / "Annotations" / f"{name}.xml")
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            anns.append({"id": len(anns) + 1, "image_id": 101 + k, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "raccoon"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    shutil.copytree(root / "val2017", root / "train2017")
    shutil.copy(root / "annotations" / "instances_val2017.json", root / "annotations" / "instances_train2017.json")
    bad = [ids[3], ids[8]]
    for name in bad:
        truncate_file(root / "val2017" / f"{name}.jpg")
    return {"root": root, "bad": bad, "bad_ids": [104, 109], "ann": root / "annotations" / "instances_val2017.json"}
