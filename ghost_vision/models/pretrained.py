"""Named pretrained weights: a table of published ImageNet checkpoints, downloaded once and verified.

Every name (``ghostnet_100.in1k``, ``ghostnetv2_130.in1k_official``, ...) is accepted wherever ``weights=``
or ``weights_backbone=`` is: :func:`~ghost_vision.models.create_ghostnet`, the detection and
segmentation builders, :func:`~ghost_vision.models.detection.ghostnet_fpn_backbone` and the recipes'
``model_kwargs``. The file is downloaded once into torch's hub cache (``$TORCH_HOME/hub/checkpoints``, as
torchvision's weights) with a progress bar, checked (sha256 when the publisher gives one; the file must
parse as a checkpoint) *before* it gets its final name, and then loaded with the strict key/shape check of
:func:`~ghost_vision.models.load_weights`.

Naming follows timm's pretrained tags: ``<variant>.in1k`` is timm's Hugging Face hub copy (safetensors,
no pickle; a conversion of the authors' checkpoint), ``<variant>.in1k_official`` the authors' own release
file from huawei-noah/Efficient-AI-Backbones. Neither publisher gives a checksum for these files, so
their ``sha256`` is ``None`` (never made up); a registered mirror can carry one.

Example:
    >>> from ghost_vision.models import list_weights, register_weights
    >>> list_weights("ghostnet_100")
    ['ghostnet_100.in1k', 'ghostnet_100.in1k_official']
    >>> _ = register_weights("ghostnet_100.acme", variant="ghostnet_100",
    ...                      url="https://mirror.acme.example/ghostnet_100.safetensors")
    >>> "ghostnet_100.acme" in list_weights("ghostnet_100")
    True
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor

from .variants import VARIANTS, variant_config
from .weights import read_state_dict

__all__ = [
    "PretrainedWeights",
    "WeightsDownloadError",
    "get_weights",
    "list_weights",
    "register_weights",
    "weights_path",
    "load_named_weights",
    "skip_weight_loading",
    "weight_loading_skipped",
]


class WeightsDownloadError(RuntimeError):
    """A named weight file could not be fetched or failed its checks; the message says what to do."""


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint: ``name`` (``<variant>.<tag>``), the ``variant`` it fits, where it lives.

    ``sha256`` is the file's SHA-256 as the publisher gives it (the full 64 hex digits or a prefix of at
    least 8, as in torch.hub's ``-<prefix>.pth`` file names), or ``None`` when none is published.
    ``file_name`` is the name in the cache folder. ``meta`` holds ``top1`` (ImageNet-1k top-1, %),
    ``source``, ``license``, ``checkpoint_key`` (which entry of a training checkpoint to load), ...

    Example:
        >>> weights = get_weights("ghostnet_100.in1k")
        >>> weights.variant, weights.url
        ('ghostnet_100', 'https://huggingface.co/timm/ghostnet_100.in1k/resolve/main/model.safetensors')
    """

    name: str
    variant: str
    url: str
    sha256: str | None = None
    file_name: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, PretrainedWeights] = {}
_SHA = re.compile(r"^[0-9a-f]{8,64}$")


def _file_name(name: str, url: str) -> str:
    """Cache file name: the entry's name plus the URL's extension (hub files are all ``model.safetensors``,
    so the URL's own base name would collide)."""
    base = Path(urlparse(url).path).name
    for ext in (".pth.tar", ".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
        if base.endswith(ext):
            return name + ext
    return name + ".pth"


def _hash_in_file_name(url: str) -> str | None:
    """torch.hub's ``check_hash`` convention: ``name-<sha256 prefix>.ext`` (e.g. ``resnet18-f37072fd.pth``);
    only prefixes of 8+ hex digits count (``ghostnetv3-1.0.pth.tar`` carries none)."""
    match = torch.hub.HASH_REGEX.search(Path(urlparse(url).path).name)
    return match.group(1) if match and len(match.group(1)) >= 8 else None


def _add(name: str, variant: str, url: str, sha256: str | None = None, **meta: Any) -> PretrainedWeights:
    if not name or "/" in name or os.sep in name:
        raise ValueError(f"weights name {name!r} must be non-empty and contain no path separator")
    sha256 = sha256 or _hash_in_file_name(url)
    if sha256 is not None:
        sha256 = sha256.lower()
        if not _SHA.match(sha256):
            raise ValueError(f"sha256 of {name!r} must be 8-64 hex digits (a full digest or a prefix), got {sha256!r}")
    file_name = meta.pop("file_name", None) or _file_name(name, url)
    entry = PretrainedWeights(name, variant, url, sha256, file_name, MappingProxyType(dict(meta)))
    _REGISTRY[name] = entry
    return entry


def register_weights(
    name: str, *, variant: str, url: str, sha256: str | None = None, **meta: Any
) -> PretrainedWeights:
    """Add (or replace) a named weight: a company mirror, a checkpoint of your own.

    Args:
        name: the name to pass as ``weights=`` / ``weights_backbone=`` (e.g. ``"ghostnet_100.acme"``).
        variant: the GhostNet variant the file fits (see :data:`~ghost_vision.models.VARIANTS`).
        url: ``https://``, ``http://`` or ``file://`` URL of a ``.pth``/``.pth.tar``/``.safetensors``/``.ckpt``
            file in any format :func:`~ghost_vision.models.load_weights` reads.
        sha256: the file's SHA-256 (or a prefix of at least 8 hex digits); checked after every download.
            Default: the prefix in the file name if it follows torch.hub's ``name-<prefix>.pth``, else none.
        **meta: free-form facts (``top1``, ``source``, ``license``); ``checkpoint_key`` picks an entry of a
            training checkpoint (e.g. ``"state_dict_ema"``), ``file_name`` overrides the cache file name.

    Example:
        >>> from ghost_vision.models import register_weights, create_ghostnet
        >>> _ = register_weights("ghostnet_050.mine", variant="ghostnet_050",
        ...                      url="file:///data/ckpt/ghostnet_050_in1k.pth", top1=66.0)
        >>> # create_ghostnet("ghostnet_050", weights="ghostnet_050.mine")
    """
    if variant_config(variant) is None:
        raise ValueError(f"register_weights({name!r}): unknown variant {variant!r}; choose one of {list(VARIANTS)} "
                         "or a custom width such as 'ghostnet_110'")
    if urlparse(url).scheme not in ("http", "https", "file"):
        raise ValueError(f"register_weights({name!r}): url must start with https://, http:// or file://, got {url!r}")
    return _add(name, variant, url, sha256, **meta)


def list_weights(variant: str | None = None) -> list[str]:
    """Names of the registered weights, all or those that fit ``variant`` (e.g. ``"ghostnetv2_100"``).

    Example:
        >>> list_weights("ghostnetv2_100")
        ['ghostnetv2_100.in1k', 'ghostnetv2_100.in1k_official']
    """
    return sorted(n for n, e in _REGISTRY.items() if variant is None or e.variant == variant)


def get_weights(name: str) -> PretrainedWeights:
    """The registry entry called ``name``; ``KeyError`` listing the known names otherwise.

    Example:
        >>> get_weights("ghostnetv2_100.in1k_official").variant
        'ghostnetv2_100'
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no weights named {name!r}; registered: {list_weights()}") from None


def weights_path(name: str) -> Path:
    """Where the file of ``name`` is cached: ``torch.hub.get_dir()/checkpoints/<file_name>`` (honours
    ``$TORCH_HOME``). A file put there by hand is used (and checked) like a downloaded one.

    Example:
        >>> weights_path("ghostnet_100.in1k").parent.name
        'checkpoints'
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / get_weights(name).file_name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(entry: PretrainedWeights, path: Path) -> dict[str, Tensor]:
    """The state dict in ``path``, checked against the entry's hash; raises :class:`WeightsDownloadError`
    for a wrong hash or an unreadable (e.g. truncated) file."""
    if entry.sha256 is not None:
        actual = _sha256(path)
        if not actual.startswith(entry.sha256):
            raise WeightsDownloadError(
                f"sha256 mismatch for weights {entry.name!r} from {entry.url}: expected {entry.sha256}, "
                f"got {actual}. The file was not kept; retry, or check the URL/mirror."
            )
    try:
        return read_state_dict(path, key=entry.meta.get("checkpoint_key"))
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say so, with the cause
        raise WeightsDownloadError(
            f"the file for weights {entry.name!r} ({entry.url}) is not a readable checkpoint "
            f"({type(exc).__name__}: {exc}); an interrupted download or a wrong URL. It was not kept."
        ) from exc


def _download(entry: PretrainedWeights, dst: Path, *, progress: bool) -> dict[str, Tensor]:
    """Download to a private staging name, check it, then give it its final name (atomic rename).

    ``torch.hub.download_url_to_file`` writes to a ``.partial`` file and renames it when the transfer
    ends, but it accepts a transfer that ends early (``http.client`` returns EOF without raising when a
    server closes before ``Content-Length``). So the renamed file is only *staged*: it gets the cache name
    only after the hash (when known) and a full parse pass; otherwise it is deleted. Concurrent processes
    (DDP ranks) each stage their own copy, and the final ``os.replace`` is atomic.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    staged = dst.with_name(f".unverified-{uuid.uuid4().hex}-{dst.name}")  # same extension: same reader
    try:
        try:
            torch.hub.download_url_to_file(entry.url, str(staged), progress=progress)
        except (URLError, OSError, ValueError) as exc:  # HTTPError is a URLError; timeouts are OSErrors
            raise WeightsDownloadError(
                f"cannot download weights {entry.name!r} from {entry.url} ({type(exc).__name__}: {exc}).\n"
                f"  Offline: download that URL elsewhere and put the file at {dst} (it is picked up from "
                f"there), or pass the file itself: weights_backbone=/path/to/file (weights= for a "
                f"backbone/classifier; the official .pth and timm's .safetensors both load)."
            ) from exc
        sd = _read(entry, staged)
        os.replace(staged, dst)
        return sd
    finally:
        staged.unlink(missing_ok=True)


def load_named_weights(name: str, *, progress: bool = True) -> dict[str, Tensor]:
    """The state dict of the registered weights ``name``, from the cache or downloaded (once).

    A cached file is re-checked against a known sha256; a mismatching one is deleted and reported.
    Raises :class:`WeightsDownloadError` (unreachable URL, wrong hash, unreadable file) with the URL,
    the cache path and how to pass a local file instead.
    """
    entry = get_weights(name)
    dst = weights_path(name)
    if dst.is_file():
        try:
            return _read(entry, dst)
        except WeightsDownloadError:
            dst.unlink(missing_ok=True)
            raise
    return _download(entry, dst, progress=progress)


_SKIP_LOADING: contextvars.ContextVar[bool] = contextvars.ContextVar("ghost_vision_skip_weight_loading", default=False)


@contextlib.contextmanager
def skip_weight_loading() -> Iterator[None]:
    """Inside this block builders give the structure that ``weights=`` / ``weights_backbone=`` imply
    (``FrozenBatchNorm2d``, frozen stages) but neither read nor download the weights.

    For models whose every weight a checkpoint restores right after: ``DetectionTask.load_from_checkpoint``
    and ``tools/eval.py`` use it, so that evaluating or deploying a detector trained from
    ``"ghostnet_100.in1k"`` needs neither the ImageNet file nor the internet.

    Example:
        >>> from ghost_vision.models import skip_weight_loading
        >>> from ghost_vision.models.detection import ssdlite320_ghostnet
        >>> with skip_weight_loading():
        ...     model = ssdlite320_ghostnet(num_classes=3, weights_backbone="ghostnet_100.in1k")  # no download
    """
    token = _SKIP_LOADING.set(True)
    try:
        yield
    finally:
        _SKIP_LOADING.reset(token)


def weight_loading_skipped() -> bool:
    """True inside :func:`skip_weight_loading`.

    Example:
        >>> with skip_weight_loading():
        ...     weight_loading_skipped()
        True
        >>> weight_loading_skipped()
        False
    """
    return _SKIP_LOADING.get()


# ----------------------------------------------------------------------------------------------------
# The published ImageNet-1k weights. Official URLs: huawei-noah/Efficient-AI-Backbones (hubconf.py for v1,
# the GhostNetV2 README, timm's default_cfgs for v3); hub files: timm's default_cfgs (hf_hub_id='timm/').
# Top-1 as published by the authors (the checkpoint's file name for v1, the GhostNetV2 paper, the GhostNetV3
# release's plain/EMA weights); timm's copies are conversions of the same checkpoints.
_HF = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
_GH = "https://github.com/huawei-noah/Efficient-AI-Backbones/releases/download/"
_TIMM = {"source": "timm (Hugging Face hub), converted from the authors' checkpoint", "license": "Apache-2.0"}
_OFFICIAL = {"source": "huawei-noah/Efficient-AI-Backbones", "license": "Apache-2.0"}

_add("ghostnet_100.in1k", "ghostnet_100", _HF.format("ghostnet_100.in1k"), top1=73.98, **_TIMM)
_add("ghostnet_100.in1k_official", "ghostnet_100",
     "https://github.com/huawei-noah/ghostnet/raw/master/ghostnet_pytorch/models/state_dict_73.98.pth",
     top1=73.98, **_OFFICIAL)
for _variant, _file, _top1 in (("ghostnetv2_100", "ck_ghostnetv2_10", 75.3), ("ghostnetv2_130", "ck_ghostnetv2_13", 76.9),
                               ("ghostnetv2_160", "ck_ghostnetv2_16", 77.8)):
    _add(f"{_variant}.in1k", _variant, _HF.format(f"{_variant}.in1k"), top1=_top1, **_TIMM)
    _add(f"{_variant}.in1k_official", _variant, f"{_GH}GhostNetV2/{_file}.pth.tar", top1=_top1, **_OFFICIAL)
# GhostNetV3: only 1.0x is published; timm's copy is the release's plain weights (76.93), the release also
# holds EMA weights (77.13), which the official entry loads.
_add("ghostnetv3_100.in1k", "ghostnetv3_100", _HF.format("ghostnetv3_100.in1k"), top1=76.93, **_TIMM)
_add("ghostnetv3_100.in1k_official", "ghostnetv3_100", f"{_GH}GhostNetV3/ghostnetv3-1.0.pth.tar", top1=77.13,
     checkpoint_key="state_dict_ema", **_OFFICIAL)
