"""ghost-vision: GhostNet as a first-class backbone for detection and segmentation."""


def _version() -> str:
    """The version, written once in ``pyproject.toml``: read from the checkout's file when this package is
    imported from a source tree (an editable install's metadata goes stale when the file changes), else from
    the installed distribution's metadata."""
    import re
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        text = pyproject.read_text(encoding="utf-8")
        project = re.search(r"^\[project\]\s*$(.*?)(?=^\[)", text + "\n[", re.M | re.S)
        if project and re.search(r'^name\s*=\s*"ghost-vision"', project.group(1), re.M):
            found = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M)
            if found:
                return found.group(1)
    try:
        return version("ghost-vision")
    except PackageNotFoundError:  # neither installed nor in a checkout (e.g. a copied folder)
        return "0+unknown"


__version__ = _version()
