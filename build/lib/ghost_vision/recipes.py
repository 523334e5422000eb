"""The packaged training recipes: ``ghost_vision/configs/*.yaml``, shipped inside the wheel.

A recipe is addressed by name (``ssdlite_ghost_shapes``) or by the path of any YAML file. Its relative
output paths (``runs/...``, ``data_cache/...``) are resolved against the current working directory, never
against the package.

Example:
    >>> from ghost_vision.recipes import list_recipes, recipe_path
    >>> "ssdlite_ghost_shapes" in list_recipes()
    True
    >>> recipe_path("ssdlite_ghost_shapes").name
    'ssdlite_ghost_shapes.yaml'
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RECIPES_DIR", "list_recipes", "recipe_path", "recipe_summary"]

# A plain folder next to this module (setuptools package data): the wheel is installed unzipped, and
# LightningCLI needs a real file path to read the YAML from.
RECIPES_DIR = Path(__file__).resolve().parent / "configs"


def recipe_summary(path: str | os.PathLike) -> str:
    """The recipe's one-line description: its first ``# ...`` comment line ('' when there is none).

    Example:
        >>> recipe_summary(recipe_path("ssdlite_ghost_shapes")).startswith("SSDLite-GhostNet")
        True
    """
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line:
            break
    return ""


def list_recipes() -> dict[str, str]:
    """``{name: one-line description}`` of every packaged recipe, sorted by name.

    Example:
        >>> "ssdlite_ghost_shapes" in list_recipes()
        True
    """
    return {p.stem: recipe_summary(p) for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """An existing YAML file as given, else the packaged recipe of that name (``.yaml`` optional).

    Raises:
        FileNotFoundError: neither a file nor a packaged recipe; the message lists the recipes.

    Example:
        >>> recipe_path("ssdlite_ghost_shapes").name
        'ssdlite_ghost_shapes.yaml'
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    packaged = RECIPES_DIR / f"{name}.yaml"
    if len(path.parts) == 1 and packaged.is_file():
        return packaged
    raise FileNotFoundError(
        f"config not found: {os.fspath(name_or_path)!r} is neither a YAML file nor a packaged recipe. "
        f"Packaged recipes (ghost-vision configs): {', '.join(list_recipes())}"
    )
