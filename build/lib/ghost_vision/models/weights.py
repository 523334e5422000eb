"""Loading GhostNet weights: official checkpoints, timm checkpoints, and this package's checkpoints."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["load_weights", "read_state_dict", "WeightsMismatchError"]

# Counters that thop leaves in the official checkpoints (timm's checkpoint_filter_fn drops them too).
_JUNK = re.compile(r"(^|\.)(total_ops|total_params)$")
_CLASSIFIER = re.compile(r"^(conv_head|classifier)\.")
# The official GhostNetV3 checkpoint names its branch BatchNorms ``bn``; timm (and this package) ``bn1``.
_V3_BRANCH_BN = re.compile(r"(_rpr_(?:conv\.\d+|scale))\.bn\.")


class WeightsMismatchError(RuntimeError):
    """A checkpoint does not fit the model; the message lists every offending key."""


def read_state_dict(
    source: str | os.PathLike | Mapping[str, Tensor], *, key: str | None = None
) -> dict[str, Tensor]:
    """Read a state dict from a mapping or a file (``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors``).

    Nested ``state_dict`` / ``model`` / ``state_dict_ema`` entries (Lightning, timm train scripts) are
    unwrapped, the first found in that order, or the entry ``key`` when given (e.g. ``"state_dict_ema"``).
    Files are read with ``weights_only=True`` (no arbitrary code); the ``argparse.Namespace`` of
    timm-style training checkpoints (``args``) is allowed. Raises ``FileNotFoundError`` naming the path
    when the file is missing.

    Example:
        >>> import torch
        >>> checkpoint = {"state_dict": {"model.w": torch.zeros(2)}, "epoch": 3}  # e.g. Lightning's
        >>> read_state_dict(checkpoint)
        {'model.w': tensor([0., 0.])}
    """
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file not found: {path}. Pass the path of an official GhostNet checkpoint "
                "(e.g. state_dict_73.98.pth), a timm checkpoint (.pth/.safetensors) or a ghost-vision .ckpt."
            )
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            try:
                with torch.serialization.safe_globals([argparse.Namespace]):
                    sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - re-raised with the file name
                raise WeightsMismatchError(f"cannot read weights file {path}: {exc}") from exc
    if key is not None:
        if not isinstance(sd.get(key), Mapping):
            raise WeightsMismatchError(f"the checkpoint has no state dict under {key!r}; its entries: {sorted(sd)[:12]}")
        sd = dict(sd[key])
    for nested in ("state_dict", "model", "state_dict_ema", "model_state"):
        if isinstance(sd.get(nested), Mapping) and all(isinstance(v, Tensor) for v in sd[nested].values()):
            sd = dict(sd[nested])
            break
    if not all(isinstance(v, Tensor) for v in sd.values()):
        bad = [k for k, v in sd.items() if not isinstance(v, Tensor)][:5]
        raise WeightsMismatchError(f"not a state dict: entries {bad} are not tensors")
    return {_V3_BRANCH_BN.sub(r"\1.bn1.", k): v for k, v in sd.items() if not _JUNK.search(k)}


def _strip_prefixes(sd: dict[str, Tensor], target_keys: set[str]) -> dict[str, Tensor]:
    """Find the network inside wrappers (``module.``, ``model.``, ``backbone.body.``, ...).

    The prefix is whatever stands before ``conv_stem.weight``; keys outside it (a detector's heads, an
    optimizer's extras) are not the backbone's and are dropped.
    """
    if set(sd) & target_keys or "conv_stem.weight" not in target_keys:
        return sd
    prefixes = sorted(k[: -len("conv_stem.weight")] for k in sd if k.endswith("conv_stem.weight"))
    if len(prefixes) > 1:
        raise WeightsMismatchError(
            f"the checkpoint holds {len(prefixes)} GhostNets (prefixes {prefixes}); pass the state dict "
            "of the one you want"
        )
    if not prefixes:
        return sd
    p = prefixes[0]
    return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}


def load_weights(
    model: nn.Module, source: str | os.PathLike | Mapping[str, Tensor], *, strict: bool = True
) -> nn.Module:
    """Load GhostNet weights into ``model`` (a classifier or a feature backbone) and return it.

    ``source`` is a path or a state dict: an official checkpoint, a timm checkpoint (``.pth`` or
    ``.safetensors``) or a ghost-vision/Lightning ``.ckpt``. Wrapper prefixes (``module.``, ``model.``,
    ``backbone.``, ...) are stripped. For a feature backbone the classifier head and the stages it does
    not build are skipped. Anything else that does not fit raises one :class:`WeightsMismatchError`
    listing the missing, unexpected and shape-mismatched keys.

    Example:
        >>> from ghost_vision.models import ghostnet_100, load_weights
        >>> net = ghostnet_100(features_only=True)
        >>> _ = load_weights(net, ghostnet_100().state_dict())
    """
    target = model.state_dict()
    sd = _strip_prefixes(read_state_dict(source), set(target))
    if not hasattr(model, "classifier"):
        # A feature backbone: drop the head and stages that it does not build (deeper than requested).
        built_stages = {k.split(".")[1] for k in target if k.startswith("blocks.")}
        sd = {
            k: v for k, v in sd.items()
            if not _CLASSIFIER.match(k) and not (k.startswith("blocks.") and k.split(".")[1] not in built_stages)
        }
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(sd) & set(target)) if sd[k].shape != target[k].shape
    ]
    if strict and (missing or unexpected or mismatched):
        name = source if not isinstance(source, Mapping) else "the given state dict"
        parts = [f"weights from {name} do not fit {type(model).__name__}"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
                parts.append(f"{len(keys)} {title}: {shown}")
        parts.append("Check the variant (version and width) matches the checkpoint.")
        if any("_rpr_" in k for k in missing + unexpected):
            parts.append("GhostNetV3: a training-form checkpoint (keys *_rpr_*) loads into the model as built, "
                         "a deploy-form one after ghost_vision.models.reparameterize(model).")
        raise WeightsMismatchError("\n  ".join(parts))
    ok = {k: v for k, v in sd.items() if k in target and v.shape == target[k].shape}
    model.load_state_dict(ok, strict=strict)
    return model
