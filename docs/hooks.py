"""MkDocs hooks.

* The site name carries the package version, read from its one source (``pyproject.toml``, through
  ``ghost_vision.__version__``), so the site, the package and ``ghost-vision --version`` agree.
* The home page is ``README.md`` (see ``on_page_read_source``).
* Docstrings here write their doctests under ``Example:`` (singular). Griffe's Google-style parser knows
  only ``Examples:`` as the code-example section and would render the singular as a note whose ``>>>`` lines
  become nested block quotes; the singular is registered as the same section. Griffe offers no public option
  for this; if its private table moves, the build stops here with this message instead of rendering wrongly.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def site_version() -> str:
    sys.path.insert(0, str(ROOT))  # the checkout's package, not another installed copy
    try:
        from ghost_vision import __version__
    finally:
        sys.path.remove(str(ROOT))
    return __version__


def _example_is_examples() -> None:
    try:
        try:
            from griffe._internal.docstrings import google
        except ImportError:  # griffe < 1.13
            from _griffe.docstrings import google
        google._section_kind.setdefault("example", google._section_kind["examples"])
    except (ImportError, AttributeError, KeyError) as exc:  # pragma: no cover - a future griffe
        raise RuntimeError(f"docs/hooks.py: cannot register 'Example:' docstring sections with this griffe "
                           f"({exc!r}); update the hook") from exc


def on_config(config, **kwargs):
    _example_is_examples()
    config.site_name = f"ghost-vision {site_version()}"
    return config


def on_page_read_source(page, config, **kwargs):
    """The site's home page is the README (one front page, not two that drift apart), with its links made
    relative to ``docs/``."""
    if page.file.src_uri != "index.md":
        return None
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.replace("](docs/", "](").replace("](CHANGELOG.md)", "](changelog.md)")
