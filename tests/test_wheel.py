"""The installed product: build the wheel, install it (not editable) into a fresh virtual environment and, from
an empty directory, run ``ghost-vision configs``, ``train`` on a packaged synthetic recipe (two steps) and
``eval`` on its checkpoint.

How the fresh environment gets its dependencies: reinstalling torch & co. from the package index would take
many minutes per run, so the new venv sees the test environment's site-packages through a ``.pth`` line
(a plain path: the editable ``ghost_vision`` of the source checkout is NOT activated, its ``.pth`` hooks are
not processed). ``ghost_vision`` itself comes only from the wheel (asserted), and the wheel's declared
requirements are checked against the versions installed here, so the metadata is exercised too. What this
does not test is pip resolving the dependencies from an index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY = [  # two training steps on 8 synthetic images; every output path stays the recipe's own (cwd-relative)
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
    "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
    "--data.init_args.num_train", "8", "--data.init_args.num_val", "4", "--data.init_args.num_workers", "0",
    "--data.init_args.batch_size", "4", "--data.init_args.val_batch_size", "1",
    "--model.init_args.model_kwargs", "{width: 0.5}",
]


def _sh(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_wheel_installs_and_runs_from_an_empty_directory(tmp_path: Path) -> None:
    # 1. the wheel, built from a copy of the sources (no build/ or egg-info left in the checkout)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "ghost_vision", src / "ghost_vision", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
         str(src)], cwd=tmp_path)
    (wheel,) = dist.glob("ghost_vision-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # the recipes and the train-benchmark specs with their recipes (configs/benchmarks/, configs/benchmarks/recipes/)
    recipes = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "ghost_vision" / "configs").rglob("*.yaml"))
    assert sorted(n for n in names if n.startswith("ghost_vision/configs/")) == recipes
    assert not [n for n in names if n.startswith(("tests/", "tools/", "configs/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "ghost-vision = ghost_vision.commands:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    # 2. a fresh venv with the wheel installed (not editable); dependencies visible through a .pth line
    venv = tmp_path / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    site = Path(_sh([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _sh([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        cwd=tmp_path)
    package = site / "ghost_vision"
    assert (package / "configs" / "ssdlite_ghost_shapes.yaml").is_file()

    work = tmp_path / "work"  # empty: no configs/, no tools/, no source tree
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONWARNINGS="ignore",
               PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    probe = _sh([str(py), "-c", "import ghost_vision, importlib.metadata as m, json; print(json.dumps("
                 "[ghost_vision.__file__, m.distribution('ghost-vision').requires]))"], cwd=work, env=env)
    where, requires = json.loads(probe.stdout)
    assert Path(where).resolve().is_relative_to(package.resolve()), where
    # the wheel's runtime requirements (no upper bound on torch) are met by the versions tested here
    from importlib.metadata import version

    from packaging.requirements import Requirement

    for req in map(Requirement, requires):
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            assert version(req.name) in req.specifier, (str(req), version(req.name))
    before = _tree(package)

    # 3. the commands, from the empty directory
    listed = _sh(["ghost-vision", "configs"], cwd=work, env=env).stdout
    # `configs` lists the top-level recipes by name (the benchmark specs under configs/benchmarks/ are not recipes)
    top_level = sorted(p.stem for p in (REPO / "ghost_vision" / "configs").glob("*.yaml"))
    assert [line.split()[0] for line in listed.splitlines()] == top_level
    _sh(["ghost-vision", "train", "ssdlite_ghost_shapes", *TINY], cwd=work, env=env)
    run = work / "runs" / "ssdlite_ghost_shapes"
    trained = json.loads((run / "logs" / "version_0" / "metrics.json").read_text())
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (work / "data_cache" / "shapes_coco" / "annotations" / "instances_val2017.json").is_file()
    _sh(["ghost-vision", "eval", "ssdlite_ghost_shapes", *TINY, "--ckpt_path", str(best.relative_to(work)),
         "--output", "eval.json"], cwd=work, env=env)
    assert json.loads((work / "eval.json").read_text()) == trained and "map_50" in trained

    # outputs only under the working directory; nothing written into the installed package
    assert sorted(p.name for p in work.iterdir()) == ["data_cache", "eval.json", "runs"]
    assert _tree(package) == before
