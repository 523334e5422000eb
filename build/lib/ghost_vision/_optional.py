"""Optional dependencies: an import that fails names the ``pip install 'ghost-vision[EXTRA]'`` to run."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional package is missing; the message names the extra that installs it."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` saying which extra provides it.

    Example:
        >>> ort = require("onnxruntime", extra="onnx", purpose="checking an ONNX export")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{purpose} needs the optional package {top!r}, which is not installed ({exc}). "
            f"Install it with: pip install 'ghost-vision[{extra}]'"
        ) from exc
