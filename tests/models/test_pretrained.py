"""Named pretrained weights, end to end against a local HTTP server (the real download code path, no
internet): download with progress, cache reuse, sha256 checks, server down, truncated transfer, the built-in
table, and a detector built from a name carrying exactly the served weights with frozen BatchNorm."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ghost_vision.models import (
    VARIANTS,
    GhostNetFeatures,
    WeightsDownloadError,
    create_ghostnet,
    get_weights,
    list_weights,
    register_weights,
    weights_path,
)
from ghost_vision.models import pretrained as pretrained_mod
from ghost_vision.models.detection import ghostnet_fpn_backbone, ssdlite320_ghostnet
from ghost_vision.models.segmentation import deeplabv3_ghostnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1:<random port>; counts requests per path. A path in
    ``truncate`` announces its full ``Content-Length`` but sends only half the body, then closes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: Counter[str] = Counter()
        self.closed = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.requests[self.path] += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.truncate else body)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self) -> None:
        if not self.closed:
            self.httpd.shutdown()
            self.httpd.server_close()
        self.closed = True


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private torch hub cache ($TORCH_HOME) and a registry restored after the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(pretrained_mod, "_REGISTRY", dict(pretrained_mod._REGISTRY))


@pytest.fixture(scope="module")
def served_sd() -> dict[str, torch.Tensor]:
    """A GhostNet 0.5x classifier with non-default weights and BN statistics."""
    torch.manual_seed(0)
    model = create_ghostnet("ghostnet_050")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _official_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    """As state_dict_73.98.pth: a pickled state dict with thop's counters at the top and per module."""
    out = {"total_ops": torch.zeros(1, dtype=torch.float64), "total_params": torch.zeros(1, dtype=torch.float64)}
    for k, v in sd.items():
        out[k] = v
        if k.endswith("conv_stem.weight"):
            out["conv_stem.total_ops"] = torch.zeros(1, dtype=torch.float64)
    buf = io.BytesIO()
    torch.save(out, buf)
    return buf.getvalue()


def _timm_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    """As timm's hub ``model.safetensors``."""
    return save_safetensors({k: v.contiguous() for k, v in sd.items()})


def _cache_files() -> list[str]:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _assert_same(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert own, "no weights"
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, sd[key]), key


@pytest.mark.parametrize("fmt", ["official", "timm"])
def test_download_progress_and_cache_reuse(server, served_sd, fmt, capfd) -> None:
    path = "/ck/ghostnet_050.pth" if fmt == "official" else "/timm/ghostnet_050.in1k/resolve/main/model.safetensors"
    server.files[path] = _official_bytes(served_sd) if fmt == "official" else _timm_bytes(served_sd)
    register_weights("ghostnet_050.test", variant="ghostnet_050", url=server.url(path), top1=66.2)

    model = create_ghostnet("ghostnet_050", weights="ghostnet_050.test")
    _assert_same(model, served_sd)
    assert server.requests[path] == 1
    assert "100%" in capfd.readouterr().err  # torch.hub's progress bar (tqdm) on stderr
    cached = weights_path("ghostnet_050.test")
    ext = ".pth" if fmt == "official" else ".safetensors"
    assert cached == Path(torch.hub.get_dir()) / "checkpoints" / f"ghostnet_050.test{ext}"
    assert _cache_files() == [cached.name]  # no staging/partial leftovers
    assert cached.read_bytes() == server.files[path]

    again = create_ghostnet("ghostnet_050", weights="ghostnet_050.test", features_only=True)
    _assert_same(again, served_sd)
    assert server.requests[path] == 1  # served from the cache, no second request


def test_sha256_checked_and_mismatch_not_kept(server, served_sd) -> None:
    body = _timm_bytes(served_sd)
    server.files["/w.safetensors"] = body
    digest = hashlib.sha256(body).hexdigest()

    register_weights("ghostnet_050.good", variant="ghostnet_050", url=server.url("/w.safetensors"), sha256=digest[:10])
    _assert_same(create_ghostnet("ghostnet_050", weights="ghostnet_050.good"), served_sd)

    wrong = "0" * 64
    register_weights("ghostnet_050.bad", variant="ghostnet_050", url=server.url("/w.safetensors"), sha256=wrong)
    with pytest.raises(WeightsDownloadError) as exc:
        create_ghostnet("ghostnet_050", weights="ghostnet_050.bad")
    msg = str(exc.value)
    assert server.url("/w.safetensors") in msg and wrong in msg and digest in msg and "not kept" in msg
    assert _cache_files() == [weights_path("ghostnet_050.good").name]  # the bad download left nothing

    # a file put into the cache by hand is checked too: a wrong one is reported and removed
    weights_path("ghostnet_050.bad").write_bytes(body)
    with pytest.raises(WeightsDownloadError, match="sha256 mismatch"):
        create_ghostnet("ghostnet_050", weights="ghostnet_050.bad")
    assert not weights_path("ghostnet_050.bad").exists()


def test_server_down_says_what_to_do(served_sd, free_port) -> None:
    url = f"http://127.0.0.1:{free_port}/ghostnet_050.pth"
    register_weights("ghostnet_050.offline", variant="ghostnet_050", url=url)
    with pytest.raises(WeightsDownloadError) as exc:
        create_ghostnet("ghostnet_050", weights="ghostnet_050.offline")
    msg = str(exc.value)
    cache = weights_path("ghostnet_050.offline")
    assert url in msg and str(cache) in msg and "weights_backbone=/path/to/file" in msg
    assert _cache_files() == []

    # the remedy the message gives: a file placed at the cache path is used, with no network
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(_official_bytes(served_sd))
    _assert_same(create_ghostnet("ghostnet_050", weights="ghostnet_050.offline"), served_sd)


def test_http_error_and_truncated_transfer_leave_nothing(server, served_sd) -> None:
    register_weights("ghostnet_050.missing", variant="ghostnet_050", url=server.url("/nope.pth"))
    with pytest.raises(WeightsDownloadError, match="404"):
        create_ghostnet("ghostnet_050", weights="ghostnet_050.missing")

    for path, body in (("/cut.pth", _official_bytes(served_sd)), ("/cut.safetensors", _timm_bytes(served_sd))):
        server.files[path] = body
        server.truncate.add(path)
        name = f"ghostnet_050.cut{Path(path).suffix.replace('.', '_')}"
        register_weights(name, variant="ghostnet_050", url=server.url(path))
        with pytest.raises(WeightsDownloadError, match="not a readable checkpoint") as exc:
            create_ghostnet("ghostnet_050", weights=name)
        assert server.url(path) in str(exc.value)
        assert _cache_files() == []  # the partial file is never given the cache name
        # the next run downloads again instead of trusting a partial file
        server.truncate.discard(path)
        _assert_same(create_ghostnet("ghostnet_050", weights=name), served_sd)
        assert server.requests[path] == 2
        weights_path(name).unlink()


def test_detector_and_segmenter_from_a_name_get_the_served_weights_frozen(server, served_sd) -> None:
    server.files["/w.pth"] = _official_bytes(served_sd)
    register_weights("ghostnet_050.served", variant="ghostnet_050", url=server.url("/w.pth"))

    detector = ssdlite320_ghostnet(num_classes=3, width=0.5, weights_backbone="ghostnet_050.served")
    fpn = ghostnet_fpn_backbone("ghostnet_050", weights="ghostnet_050.served")
    for model in (detector, fpn):
        body = next(m for m in model.modules() if isinstance(m, GhostNetFeatures))
        _assert_same(body, served_sd)
        norms = [m for m in body.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    segmenter = deeplabv3_ghostnet(num_classes=3, width=0.5, weights_backbone="ghostnet_050.served")
    _assert_same(segmenter.backbone, served_sd)
    assert server.requests["/w.pth"] == 1


def test_names_are_checked_against_the_variant() -> None:
    with pytest.raises(ValueError, match="are for ghostnet_100, not ghostnet_050"):
        create_ghostnet("ghostnet_050", weights="ghostnet_100.in1k")
    with pytest.raises(FileNotFoundError, match=r"neither a registered name nor an existing file.*ghostnet_100\.in1k"):
        create_ghostnet("ghostnet_100", weights="ghostnet_100.imagenet")
    with pytest.raises(ValueError, match="unknown variant"):
        register_weights("x.y", variant="ghostnet_999", url="https://example.com/x.pth")
    with pytest.raises(ValueError, match="https://"):
        register_weights("x.y", variant="ghostnet_050", url="ftp://example.com/x.pth")
    assert register_weights("x.h", variant="ghostnet_050", url="https://a.b/ghostnet-3c3f9a1e.pth").sha256 == "3c3f9a1e"
    assert register_weights("x.v3", variant="ghostnet_050", url="https://a.b/ghostnetv3-1.0.pth.tar").sha256 is None
    with pytest.raises(ValueError, match="hex digits"):
        register_weights("x.y", variant="ghostnet_050", url="https://example.com/x.pth", sha256="abc")


def test_timm_alias_is_the_hub_entry(monkeypatch, served_sd) -> None:
    seen = []
    monkeypatch.setattr(pretrained_mod, "_download", lambda entry, dst, progress: seen.append(entry.name) or served_sd)
    create_ghostnet("ghostnet_050", weights=None)
    with pytest.raises(ValueError, match="timm publishes no ImageNet weights for ghostnet_050"):
        create_ghostnet("ghostnet_050", weights="timm")
    with pytest.raises(Exception):  # noqa: B017 - a 0.5x state dict does not fit 1.0x; only the name matters here
        create_ghostnet("ghostnet_100", weights="timm")
    assert seen == ["ghostnet_100.in1k"]


def test_builtin_table() -> None:
    names = list_weights()
    for variant in ("ghostnet_100", "ghostnetv2_100", "ghostnetv2_130", "ghostnetv2_160", "ghostnetv3_100"):
        assert list_weights(variant) == [f"{variant}.in1k", f"{variant}.in1k_official"]
    for name in names:
        entry = get_weights(name)
        assert entry.variant in VARIANTS or entry.variant.startswith("ghostnetv3_"), entry
        assert entry.sha256 is None  # neither huawei-noah nor timm publish checksums for these files
        assert 60 < entry.meta["top1"] < 81 and entry.meta["license"] == "Apache-2.0"
        if name.endswith(".in1k"):
            assert entry.url == f"https://huggingface.co/timm/{name}/resolve/main/model.safetensors"
        else:
            assert entry.url.startswith("https://github.com/huawei-noah/")
    assert get_weights("ghostnet_100.in1k_official").url.endswith("/state_dict_73.98.pth")
    assert get_weights("ghostnetv3_100.in1k_official").meta["checkpoint_key"] == "state_dict_ema"
    with pytest.raises(KeyError, match="ghostnet_100.in1k"):
        get_weights("ghostnet_100.nope")


@pytest.mark.skipif("ghostnetv3_100" not in VARIANTS, reason="GhostNetV3 variants not in this build")
def test_v3_names_resolve_for_v3() -> None:
    with pytest.raises(ValueError, match="are for ghostnetv3_100"):
        create_ghostnet("ghostnetv2_100", weights="ghostnetv3_100.in1k")


def test_checkpoint_of_a_named_weight_run_loads_offline(server, served_sd, tmp_path) -> None:
    """A task trained from a named weight restores from its checkpoint without the ImageNet file:
    ``load_from_checkpoint`` builds the same structure (frozen BN) and does not download."""
    import lightning as L

    from ghost_vision.models import skip_weight_loading
    from ghost_vision.tasks import DetectionTask

    server.files["/w.pth"] = _official_bytes(served_sd)
    register_weights("ghostnet_050.ckpt", variant="ghostnet_050", url=server.url("/w.pth"))
    task = DetectionTask("ssdlite320_ghostnet", num_classes=3,
                         model_kwargs={"width": 0.5, "weights_backbone": "ghostnet_050.ckpt"})
    with torch.no_grad():  # "trained": every weight differs from the ImageNet ones
        for p in task.parameters():
            p.add_(0.01)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "num_classes": 3,
                "pytorch-lightning_version": L.__version__}, path)
    weights_path("ghostnet_050.ckpt").unlink()
    server.close()  # offline from here on

    restored = DetectionTask.load_from_checkpoint(path)
    for key, value in task.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    assert any(isinstance(m, FrozenBatchNorm2d) for m in restored.model.backbone.modules())
    assert server.requests["/w.pth"] == 1 and _cache_files() == []
    with skip_weight_loading():  # the same for a builder
        body = create_ghostnet("ghostnet_050", weights="ghostnet_050.ckpt", features_only=True)
    assert not torch.equal(body.conv_stem.weight, served_sd["conv_stem.weight"])


def test_training_checkpoint_format_picks_the_named_entry(server, served_sd) -> None:
    """The official v2/v3 releases are timm-train-script checkpoints: ``state_dict``, ``state_dict_ema`` and
    an ``argparse.Namespace`` of arguments (allowed by the weights-only reader); ``checkpoint_key`` picks one."""
    import argparse

    ema = {k: v + 1 if v.is_floating_point() else v for k, v in served_sd.items()}
    buf = io.BytesIO()
    torch.save({"epoch": 449, "state_dict": {f"module.{k}": v for k, v in served_sd.items()},
                "state_dict_ema": ema, "args": argparse.Namespace(model="ghostnet", lr=0.064)}, buf)
    server.files["/ck.pth.tar"] = buf.getvalue()
    register_weights("ghostnet_050.plain", variant="ghostnet_050", url=server.url("/ck.pth.tar"))
    register_weights("ghostnet_050.ema", variant="ghostnet_050", url=server.url("/ck.pth.tar"),
                     checkpoint_key="state_dict_ema")
    assert weights_path("ghostnet_050.ema").name == "ghostnet_050.ema.pth.tar"
    _assert_same(create_ghostnet("ghostnet_050", weights="ghostnet_050.plain"), served_sd)
    _assert_same(create_ghostnet("ghostnet_050", weights="ghostnet_050.ema"), ema)
