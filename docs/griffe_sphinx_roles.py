"""Griffe extension for the API reference: the docstrings' Sphinx roles become MkDocs cross-references.

The docstrings are read by ``help()`` and by the site, so they keep the Sphinx spelling
(:func:`~ghost_vision.models.get_model`, :class:`GhostNetFeatures`); mkdocstrings does not know roles and
would print them as text. Each role is resolved here as Python resolves the name in the docstring's scope
(the class, then the module, then an absolute ``ghost_vision...`` path) and becomes a link to the object's
canonical page, so ``mkdocs build --strict`` fails when a link points at an object the reference does not
document. Names outside the package (``OSError``, ``Path``) and private objects stay plain code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj|const):`(~?)([\w.]+?)(\(\))?`")


def _lookup(scope: griffe.Object, dotted: str) -> griffe.Object | griffe.Alias | None:
    head, *rest = dotted.split(".")
    node = scope.members.get(head)
    for part in rest:
        if node is None:
            return None
        try:
            node = node.members.get(part)
        except griffe.AliasResolutionError:
            return None
    return node


def _resolve(obj: griffe.Object, name: str, package: griffe.Module) -> str | None:
    candidates = []
    scope: Any = obj
    while scope is not None:  # the object itself (a class's methods), its class, its module, ... up
        candidates.append(scope)
        scope = scope.parent
    for scope in candidates:
        node = _lookup(scope, name)
        if node is not None:
            break
    else:
        node = _lookup(package, name.split(".", 1)[1]) if name.startswith(package.name + ".") else None
    if node is None:
        return None
    try:
        path = node.final_target.path if isinstance(node, griffe.Alias) else node.path
    except griffe.AliasResolutionError:  # an import from another package
        return None
    if not path.startswith(package.name + ".") or any(p.startswith("_") for p in path.split(".")):
        return None
    return path


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is None or ":`" not in obj.docstring.value:
                continue

            def link(match: re.Match, obj: griffe.Object = obj) -> str:
                tilde, name, call = match.groups()
                shown = (name.rsplit(".", 1)[-1] if tilde else name) + (call or "")
                target = _resolve(obj, name, pkg)
                return f"[`{shown}`][{target}]" if target else f"`{shown}`"

            obj.docstring.value = ROLE.sub(link, obj.docstring.value)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias and member.parent is obj:
            yield from _walk(member)
