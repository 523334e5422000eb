"""The README's main job, end to end, as written (only the output folders moved to a temporary place)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_main_job_trains_evaluates_and_draws(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable, "tools/train.py", "configs/ssdlite_ghost_shapes.yaml",
        "--data.init_args.root", str(tmp_path / "shapes_coco"),
        "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out),
        "--checkpoint.dirpath", str(out / "checkpoints"),
        "--trainer.enable_progress_bar", "false",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the synthetic COCO data was written in the real format
    assert (tmp_path / "shapes_coco" / "annotations" / "instances_val2017.json").is_file()
    log_dir = out / "logs" / "version_0"
    metrics = json.loads((log_dir / "metrics.json").read_text())
    assert {"map", "map_50", "map_75", "mar_100"} <= set(metrics)
    # An untrained SSDLite scores about 0.0003 mAP here; the default schedule must clearly learn.
    assert metrics["map_50"] > 0.05, metrics
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (log_dir / "curves.png").stat().st_size > 10_000
    assert (log_dir / "predictions" / "validate.png").stat().st_size > 10_000
    assert "map" in proc.stdout and "metrics written to" in proc.stdout + proc.stderr
