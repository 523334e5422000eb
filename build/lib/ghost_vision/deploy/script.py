"""TorchScript freezing of a model's network parts: one compiled graph instead of hundreds of Python calls.

Eager PyTorch spends a large share of a small model's batch-1 time dispatching modules and operators from
Python (GhostNet 1.0 runs ~130 convolutions plus activations, slices and adds per image).
``torch.jit.freeze(torch.jit.script(m))`` runs the same operators from one graph, with weights inlined as
constants. Torch marks TorchScript as deprecated in favour of ``torch.compile``/``torch.export``; on this
torch both were measured (``tools/benchmark.py``, docs/benchmarks.md) and the frozen TorchScript graph was
the faster CPU path with no compile time, so it is used here, behind ``optimize(script=True)``, with its
deprecation warning silenced.

torchvision detectors keep their Python ``forward`` (transforms, anchors, decoding, NMS and the output
format stay as they are); only their network parts are frozen, so every attribute that their ``forward``
and :func:`~ghost_vision.deploy.export.exportable` use is still there.

Example:
    >>> import torch
    >>> from ghost_vision.models import create_ghostnet
    >>> from ghost_vision.deploy.script import freeze_network
    >>> model = create_ghostnet("ghostnet_050").eval()
    >>> frozen, kept_eager = freeze_network(model)
    >>> kept_eager
    []
    >>> x = torch.rand(1, 3, 64, 64)
    >>> bool((frozen(x) - model(x)).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["DETECTOR_PARTS", "freeze_network", "script_and_freeze"]

#: The parameterised network parts of torchvision-style detectors (dotted paths, those present are frozen).
DETECTOR_PARTS = ("backbone", "head", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor")


def script_and_freeze(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.freeze(torch.jit.script(module))`` for an eval-mode module (raises if it does not script)."""
    if module.training:
        raise RuntimeError("freezing needs an eval-mode module: call model.eval() first")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.script is deprecated"
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="The TorchScript type system doesn't support")  # torchvision's
        return torch.jit.freeze(torch.jit.script(module))


def _is_detector(model: nn.Module) -> bool:
    return hasattr(model, "transform") and hasattr(model, "backbone")


def _freeze_tree(module: nn.Module, name: str, kept: list[str]) -> nn.Module:
    try:
        return script_and_freeze(module)
    except Exception as exc:  # noqa: BLE001 - any module that does not script stays eager
        children = [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]
        if not children:
            kept.append(f"{name or type(module).__name__} ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]})")
            return module
        for child_name, child in children:
            setattr(module, child_name, _freeze_tree(child, f"{name}.{child_name}" if name else child_name, kept))
        return module


def freeze_network(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Freeze the largest scriptable parts of an eval-mode ``model``.

    Detectors (anything with ``transform`` and ``backbone``): the parts in :data:`DETECTOR_PARTS`, the model
    itself stays a Python module. Anything else: the whole model if it scripts, else its children, recursively.

    Returns:
        ``(model, kept_eager)``: the frozen model (a ``ScriptModule`` unless it is a detector or did not script
        as a whole) and the modules that stayed eager, each with the reason.

    Example:
        >>> import torch
        >>> from ghost_vision.models import ghostnet_050
        >>> frozen, eager = freeze_network(ghostnet_050().eval())
        >>> isinstance(frozen, torch.jit.ScriptModule), eager
        (True, [])
    """
    kept: list[str] = []
    if not _is_detector(model):
        return _freeze_tree(model, "", kept), kept
    for path in DETECTOR_PARTS:
        parent_path, _, leaf = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
            part = getattr(parent, leaf)
        except AttributeError:
            continue
        if isinstance(part, nn.Module) and not isinstance(part, torch.jit.ScriptModule):
            setattr(parent, leaf, _freeze_tree(part, path, kept))
    return model, kept
