"""``ghost-vision configs``: the packaged recipes with one line each, or one recipe's YAML.

    ghost-vision configs                              # name and description of every recipe
    ghost-vision configs ssdlite_ghost_coco > my.yaml # a copy to edit; then: ghost-vision train my.yaml
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ghost_vision.recipes import RECIPES_DIR, list_recipes, recipe_path


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="print this recipe's YAML instead of the list")
    parser.add_argument("--path", action="store_true", help="print the recipes' file paths as well")
    args = parser.parse_args(argv)
    recipes = list_recipes()
    if args.name:
        path = recipe_path(args.name)
        print(path.read_text(), end="")
        return {path.stem: recipes.get(path.stem, "")}
    width = max(map(len, recipes), default=0)
    for name, summary in recipes.items():
        print(f"{name.ljust(width)}  {summary}")
        if args.path:
            print(f"{''.ljust(width)}  {RECIPES_DIR / (name + '.yaml')}")
    return recipes
