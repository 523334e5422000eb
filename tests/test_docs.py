"""The documentation cannot drift from the code: every docstring example runs as a doctest, every Python block
of the README and the guides runs, the commands and recipes their shell blocks name exist, and the version is
the same everywhere. (The site build itself, ``make docs`` = ``mkdocs build --strict``, checks links,
anchors, documented objects and cross-references; CI runs it.)

A guide's Python blocks run in order in one namespace (a block may use an earlier block's names), in a
temporary working directory. A block preceded by ``<!-- no-test: reason -->`` is skipped (downloads, GPUs,
long runs); keep those rare.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import os
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import ghost_vision
from ghost_vision.commands import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(p for p in DOCS.glob("*.md"))]
BLOCK = re.compile(r"(?P<skip><!-- no-test[^>]*-->[ \t]*\n)?^```(?P<lang>[\w-]*)[ \t]*\n(?P<code>.*?)^```[ \t]*$",
                   re.M | re.S)
MODULES = sorted(m.name for m in pkgutil.walk_packages(ghost_vision.__path__, "ghost_vision.")
                 if not m.name.endswith("__main__"))

# Pages whose examples run a whole (tiny) Lightning fit or script a detector: end-to-end, so in the slow suite
# (CI runs it); their code is still executed on every CI run.
SLOW_PAGES = {"training.md", "deployment.md"}


def _blocks(page: Path, lang: str) -> list[tuple[int, str, bool]]:
    """(line, code, skipped) of the page's fenced blocks in ``lang``."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start("code")) + 1, m.group("code"), bool(m.group("skip")))
            for m in BLOCK.finditer(text) if m.group("lang") == lang]


# --------------------------------------------------------------------------------------------- doctests
@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module: str, one_torch_thread) -> None:
    torch.manual_seed(0)
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             report=True)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {module} failed (output above)"


PUBLIC_MODULES = ["ghost_vision.models", "ghost_vision.models.detection", "ghost_vision.models.segmentation",
                  "ghost_vision.models.registry", "ghost_vision.models.pretrained", "ghost_vision.models.weights",
                  "ghost_vision.data", "ghost_vision.metrics", "ghost_vision.tasks", "ghost_vision.deploy",
                  "ghost_vision.deploy.export", "ghost_vision.commands", "ghost_vision.cli", "ghost_vision.recipes",
                  "ghost_vision.visualize"]
# Public names whose own docstring has no example, and why; everything else exported must show one.
NO_EXAMPLE = {
    "load_named_weights": "downloads (its callers' examples show the names)",
    **dict.fromkeys(["DeepLabLiteHead", "DeepLabPlusDecoder", "LiteASPP", "SeparableConvBnReLU"],
                    "parts built by deeplabv3_ghostnet, whose example runs them"),
    **dict.fromkeys(["ConcatFreeGhostModule", "FastGhostBottleneck", "FastSqueezeExcite", "FusedGhostModule",
                     "FusedGhostModuleV2"], "made by fuse_model / optimize_for_onnx, whose examples run them"),
    **dict.fromkeys(["DetectorNetwork", "TupleOutputs"], "made by exportable, whose example runs it"),
    "ort_session": "run in export_onnx's example",
    "BaseTask": "abstract; DetectionTask and SegmentationTask show it",
    **dict.fromkeys(["DrawPredictions", "TrainingCurves", "GhostCLI", "evaluate", "run", "plot_curves"],
                    "Lightning/CLI glue, run by the training guide's example and tests/tasks"),
}


def test_every_public_class_and_function_has_an_example() -> None:
    missing = set()
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if not callable(obj) or (isinstance(obj, type) and issubclass(obj, BaseException)):
                continue  # constants, and exceptions (shown where they are raised)
            if ">>>" not in (obj.__doc__ or "") and attr not in NO_EXAMPLE:
                missing.add(f"{name}.{attr}")
    assert not missing, f"public names without an Example: doctest: {sorted(missing)}"


# ----------------------------------------------------------------------------------------- guide code
def _page_param(page: Path):
    marks = [pytest.mark.slow] if page.name in SLOW_PAGES else []
    return pytest.param(page, id=str(page.relative_to(REPO)), marks=marks)


def _check_detection(ns: dict) -> None:  # the FPN example: a torchvision detector trained and run on our backbone
    assert set(ns["losses"]) >= {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(ns["predictions"][0]) == {"boxes", "labels", "scores"}


CHECKS = {"detection.md": _check_detection}


@pytest.mark.parametrize("page", [_page_param(p) for p in PAGES])
def test_guide_python_blocks_run(page: Path, tmp_path: Path, monkeypatch, one_torch_thread) -> None:
    blocks = _blocks(page, "python")
    monkeypatch.chdir(tmp_path)  # whatever an example writes stays out of the checkout
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"__docs_{page.stem}__"}
    for line, code, skipped in blocks:
        if not skipped:
            exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)  # noqa: S102 - the page's code
    if page.name in CHECKS:
        CHECKS[page.name](namespace)


def test_skipped_blocks_are_rare() -> None:
    skipped = [(p.name, line) for p in PAGES for line, _, skip in _blocks(p, "python") if skip]
    run = sum(not skip for p in PAGES for _, _, skip in _blocks(p, "python"))
    assert len(skipped) <= max(2, run // 5), f"too many <!-- no-test --> blocks: {skipped}"


# ---------------------------------------------------------------------------------------- shell blocks
TOOL = re.compile(r"\btools/(\w+)\.py\b")
CONFIG = re.compile(r"\bconfigs/([a-z0-9_]+)\.yaml\b")  # lower case: `configs/X.yaml` is a placeholder
COMMAND = re.compile(r"(?:^|[\s;&|(])ghost-vision[ \t]+([a-z][\w-]*)", re.M)  # upper case: a placeholder
MAKE = re.compile(r"^\s*make\s+([\w-]+)", re.M)


def _shell_text() -> str:
    return "\n".join(code for p in PAGES for _, code, _ in _blocks(p, "bash"))


def test_shell_blocks_name_existing_tools_recipes_and_commands() -> None:
    text = _shell_text()
    prose = "\n".join(BLOCK.sub("", p.read_text(encoding="utf-8")) for p in PAGES)
    tools = set(TOOL.findall(text))
    assert tools, "the guides should show the tools/*.py commands"
    assert not {t for t in tools if not (REPO / "tools" / f"{t}.py").is_file()}
    recipes = set(CONFIG.findall(text)) | set(CONFIG.findall(prose))
    assert {"ssdlite_ghost_shapes"} <= recipes
    assert not {r for r in recipes if not (REPO / "ghost_vision" / "configs" / f"{r}.yaml").is_file()}
    code = text + "\n" + "\n".join(re.findall(r"`([^`\n]+)`", prose))  # shell blocks and inline code
    commands = set(COMMAND.findall(code))
    assert commands and not commands - set(COMMANDS), commands - set(COMMANDS)
    targets = set(MAKE.findall(text))
    makefile = (REPO / "Makefile").read_text()
    assert {"run", "test", "docs"} <= targets
    assert not {t for t in targets if not re.search(rf"^{re.escape(t)}:", makefile, re.M)}


def test_every_guide_is_in_the_site_navigation() -> None:
    # mkdocs --strict also refuses a page left out of the nav; this says which one without building
    nav = (REPO / "mkdocs.yml").read_text()
    listed = set(re.findall(r"^\s*-\s*[^:#]+:\s*([\w/.-]+\.md)\s*$", nav, re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages <= listed, f"add to the nav of mkdocs.yml: {sorted(pages - listed)}"


# --------------------------------------------------------------------------------------------- version
def _pyproject_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S).group(1)


def test_one_version_everywhere(capsys) -> None:
    version = _pyproject_version()
    assert ghost_vision.__version__ == version
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ghost-vision {version}"
    changelog = (REPO / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
    assert headings[0] == "Unreleased", "CHANGELOG.md starts with an [Unreleased] section"
    assert headings[1] == version, f"the latest release in CHANGELOG.md is {headings[1]}, pyproject says {version}"
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.site_version() == version  # the site's title


def test_installed_metadata_matches_the_checkout() -> None:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("ghost-vision")
    except PackageNotFoundError:
        pytest.skip("ghost-vision is not installed (tests run from the source tree)")
    assert dist.version == _pyproject_version(), "reinstall the package (`make venv` after touching pyproject.toml)"


def test_version_without_a_checkout(tmp_path: Path) -> None:
    # a copy of the package outside any source tree falls back to the installed metadata (or says unknown)
    import shutil
    import subprocess
    import sys

    shutil.copytree(REPO / "ghost_vision", tmp_path / "ghost_vision", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", "import ghost_vision; print(ghost_vision.__version__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    from importlib.metadata import PackageNotFoundError, version

    try:
        expected = version("ghost-vision")
    except PackageNotFoundError:
        expected = "0+unknown"
    assert out == expected


# ---------------------------------------------------------------------------------- accuracy-per-cost tables
RESULTS = DOCS / "results" / "train_benchmark"


def _table(lines: list[str], start: int) -> list[str]:
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_readme_leads_with_the_train_benchmark_tables() -> None:
    """The README's first table is the accuracy-per-cost one, exactly as ``ghost-vision train-benchmark`` wrote it
    (``OUT/train_benchmark.md``): each stored report (``OUT/train_benchmark.json``, kept under
    ``docs/results/train_benchmark/``) renders here again to the text the README carries, footer included, and
    its picture is there. A hand-edited number, or a table from another run, fails."""
    from ghost_vision.commands.train_benchmark_report import markdown

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    reports = sorted(RESULTS.glob("*.json"))
    assert reports, f"no stored train-benchmark report under {RESULTS}"
    tables = []
    for path in reports:
        md = markdown(json.loads(path.read_text(encoding="utf-8")))
        assert md.strip() in readme, f"README.md does not carry {path.name}'s table as the command wrote it"
        assert f"docs/img/accuracy_per_cost_{path.stem}.png" in readme and \
            (DOCS / "img" / f"accuracy_per_cost_{path.stem}.png").is_file(), path.stem
        tables.append(_table(md.splitlines(), 0))
    first = _table(lines, next(i for i, line in enumerate(lines) if line.startswith("|")))
    assert first in tables, "the README's first table is not a train-benchmark table"
