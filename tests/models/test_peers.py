"""Fair peers: every torchvision peer is fed what its weights expect, checked against torchvision's documented
pipeline (``weights.transforms()`` + the raw model, same state dict) on a real photo."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ghost_vision.data.io import read_image
from ghost_vision.models import NormalizedInput, get_model, peer_transforms
from ghost_vision.tasks import DetectionTask, SegmentationTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEG_PEERS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")


@pytest.fixture(scope="module")
def photo(request: pytest.FixtureRequest) -> torch.Tensor:
    """A real photograph (uint8 3xHxW RGB) when the shared data is there, else a textured stand-in."""
    try:
        root = request.getfixturevalue("raccoon_root")
    except pytest.skip.Exception:
        root = None
    if root is not None:
        jpg = sorted((root / "VOC2007" / "JPEGImages").glob("*.jpg"))[0]
        return torch.from_numpy(read_image(jpg)).permute(2, 0, 1).contiguous()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:180, 0:240]
    img = np.stack([xx / 240 * 255, yy / 180 * 255, rng.integers(0, 256, (180, 240))], axis=0)
    return torch.from_numpy(img.astype(np.uint8))


@pytest.fixture(scope="module")
def coco_sample(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """A COCO-format dataset's image as the data path gives it: the file scaled to [0, 1], not normalised."""
    from ghost_vision.data.coco import CocoDetection
    from ghost_vision.data.synthetic import write_synthetic_coco

    root = write_synthetic_coco(tmp_path_factory.mktemp("peers") / "coco", num_train=1, num_val=1)
    image, _ = CocoDetection(root / "val2017", next((root / "annotations").glob("instances_val*.json")))[0]
    jpg = next((root / "val2017").glob("*.jpg"))
    torch.testing.assert_close(image, torch.from_numpy(read_image(jpg)).permute(2, 0, 1).float() / 255)
    return image


def _raw(name: str, calibrate: torch.Tensor | None = None, **kwargs) -> torch.nn.Module:
    """torchvision's own model, randomly initialised; with ``calibrate`` (a normalised batch) its BatchNorm
    statistics are those of that batch, as in a trained model, so that its output depends on the input."""
    torch.manual_seed(0)
    builder = torchvision.models.get_model_builder(name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None
    model = builder(weights=None, **kwargs)
    if calibrate is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average
        with torch.no_grad():
            model.train()(calibrate)
    return model.eval()


@pytest.mark.parametrize("name", SEG_PEERS)
def test_segmentation_peer_matches_torchvisions_pipeline(name: str, photo: torch.Tensor) -> None:
    """Task forward/predict on a [0, 1] image == ``weights.transforms()`` + torchvision's model."""
    preprocess = torchvision.models.get_model_weights(name).DEFAULT.transforms(resize_size=96)
    normalised = preprocess(photo)
    raw = _raw(name, calibrate=torch.stack([normalised, normalised.flip(-1)]), num_classes=5)
    task = SegmentationTask(name, num_classes=5).eval()
    task.model.load_state_dict(raw.state_dict())  # a torchvision-format (unprefixed) state dict loads
    with torch.no_grad():
        expected = raw(normalised[None])["out"]
        # our path: the recipe resizes (here exactly as torchvision would), the dataset scales to [0, 1]
        ours = TF.resize(photo, [96], interpolation=InterpolationMode.BILINEAR, antialias=True).float() / 255
        got = task(ours[None])["out"]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(task.predict_step(ours[None], 0), expected.argmax(1))
        # the check has teeth: the same network fed the [0, 1] tensor directly is far off
        assert (raw(ours[None])["out"] - expected).abs().max() > 0.1 * expected.abs().max()


@pytest.mark.parametrize("name", SEG_PEERS)
def test_training_and_validation_feed_the_peer_normalised_input(name: str) -> None:
    """Fails if the torchvision network inside a peer ever sees the [0, 1] tensor the data pipeline gives."""
    task = SegmentationTask(name, num_classes=3, aux_weight=0.0)
    seen: list[torch.Tensor] = []  # what the network's first convolution gets
    first_conv = next(m for m in task.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(0)
    images, masks = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    task.log = lambda *a, **k: None  # no trainer attached
    task.train()
    task.training_step((images, masks), 0)
    task.eval()
    with torch.no_grad():
        task.validation_step((images, masks, torch.tensor([0, 1])), 0)
    preprocess = peer_transforms(name)  # torchvision's mean/std, not a copy of ours
    expected = TF.normalize(images, preprocess.mean, preprocess.std)
    assert len(seen) == 2
    for x in seen:
        torch.testing.assert_close(x, expected, atol=1e-6, rtol=1e-6)


def test_wrapper_keeps_torchvisions_contract_cost_and_checkpoints(tmp_path: Path) -> None:
    from ghost_vision.deploy.bench import PAIRS, build, count_macs

    peer = build(PAIRS["lraspp"]["peer"])  # the benchmark's peer, and export's / gpu_check's: the registry's
    assert isinstance(peer, NormalizedInput) and type(peer.model).__name__ == "LRASPP"
    raw = get_model("lraspp_mobilenet_v3_large", num_classes=19, normalize=False)
    assert type(raw).__name__ == "LRASPP"
    raw.load_state_dict(peer.model.state_dict())
    assert set(peer.state_dict()) == {f"model.{k}" for k in raw.state_dict()}  # mean/std are not persistent
    # a wrapped state dict loads as is too, and a checkpoint of another model is refused
    torch.save(peer.state_dict(), tmp_path / "wrapped.pt")
    peer.load_state_dict(torch.load(tmp_path / "wrapped.pt"))
    with pytest.raises(RuntimeError, match="Missing key"):
        peer.load_state_dict(get_model("lraspp_ghostnet", num_classes=19).state_dict())
    # the wrapper adds no MACs (FlopCounterMode counts no elementwise arithmetic, for either side)
    with torch.device("meta"):
        x = torch.empty(1, 3, 512, 1024)
        assert count_macs(build(PAIRS["lraspp"]["peer"]), x) == count_macs(
            get_model("lraspp_mobilenet_v3_large", num_classes=19, normalize=False).eval(), x)
    # user weights pick the transforms of those weights; a bad mean/std is refused
    assert peer_transforms("lraspp_mobilenet_v3_large", "COCO_WITH_VOC_LABELS_V1").std == [0.229, 0.224, 0.225]
    with pytest.raises(ValueError, match="one value per channel and std > 0"):
        NormalizedInput(raw, mean=(0.5, 0.5, 0.5), std=(0.5, 0.0, 0.5))


def test_wrapped_peer_scripts_optimizes_and_exports(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from ghost_vision.deploy import optimize
    from ghost_vision.deploy.export import export_onnx

    peer = get_model("lraspp_mobilenet_v3_large", num_classes=3).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = peer(x)["out"]
        torch.testing.assert_close(optimize(peer)(x)["out"], ref, atol=1e-4, rtol=1e-4)
    report = export_onnx(peer, x, tmp_path / "peer.onnx")  # checked in onnxruntime against the eager model
    assert report["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize(
    "name, kwargs, mean, std",
    [
        # torchvision's documented constants (torchvision/models/detection/ssdlite.py, faster_rcnn.py)
        ("ssdlite320_mobilenet_v3_large", {}, (0.5,) * 3, (0.5,) * 3),
        ("fasterrcnn_mobilenet_v3_large_320_fpn", {}, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ("ssdlite320_ghostnet", {"width": 0.5}, (0.5,) * 3, (0.5,) * 3),
        ("fasterrcnn_ghostnet_fpn", {"width": 0.5, "min_size": 320, "max_size": 640},
         (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ],
)
def test_detectors_normalise_exactly_once(name, kwargs, mean, std, coco_sample) -> None:
    """Dataset -> task -> model: the backbone sees ``(image - mean) / std`` of the [0, 1] image, once."""
    image = TF.resize(coco_sample, [320, 320], antialias=True)  # the model's own size: its resize is the identity
    task = DetectionTask(name, num_classes=3, model_kwargs=kwargs).eval()
    seen: list[torch.Tensor] = []
    task.model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        task.predict_step([image], 0)
    expected = (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(seen[0][0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_detection_peer_matches_torchvisions_pipeline(name: str, photo: torch.Tensor) -> None:
    raw = _raw(name, num_classes=3)
    task = DetectionTask(name, num_classes=3).eval()
    task.model.load_state_dict(raw.state_dict())
    preprocess = torchvision.models.get_model_weights(name).DEFAULT.transforms()  # ObjectDetection: to [0, 1]
    with torch.no_grad():
        (expected,) = raw([preprocess(photo)])
        (got,) = task.predict_step([photo.float() / 255], 0)  # what our datasets and `infer` feed
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[key], expected[key])


def test_classifier_peers_share_the_ghost_classifiers_input() -> None:
    """Classifiers and trunks take ImageNet-normalised tensors, Ghost (timm's weights) and peer alike: the
    registry adds nothing to them, so ``weights.transforms()`` + our peer is torchvision's pipeline."""
    timm = pytest.importorskip("timm")
    cfg = timm.get_pretrained_cfg("ghostnet_100")
    for name in ("mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v3_large_features"):
        preprocess = peer_transforms(name)
        assert tuple(preprocess.mean) == tuple(cfg.mean) and tuple(preprocess.std) == tuple(cfg.std)
    raw = _raw("mobilenet_v3_large", num_classes=4)
    peer = get_model("mobilenet_v3_large", num_classes=4).eval()
    peer.load_state_dict(raw.state_dict())
    x = peer_transforms("mobilenet_v3_large")(torch.randint(0, 256, (3, 240, 260), dtype=torch.uint8))[None]
    with torch.no_grad():
        torch.testing.assert_close(peer(x), raw(x))
    trunk = get_model("mobilenet_v3_large_features")
    assert isinstance(trunk, torch.nn.Sequential) and not isinstance(trunk, NormalizedInput)


def test_docstring_examples_run() -> None:
    import doctest

    import ghost_vision.models.peers as peers

    result = doctest.testmod(peers, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_old_unnormalised_peer_checkpoint_runs_as_trained_and_torchvision_weights_init(tmp_path: Path) -> None:
    """A SegmentationTask checkpoint of a peer saved before the wrapper (keys ``model.<torchvision key>``) was
    trained on [0, 1] input: it loads unwrapped, with a warning, and predicts exactly as before."""
    from ghost_vision.tasks import load_task
    from ghost_vision.tasks.base import TASK_KEY

    old = SegmentationTask("lraspp_mobilenet_v3_large", num_classes=3, model_kwargs={"normalize": False}).eval()
    hparams = dict(old.hparams)
    hparams["model_kwargs"] = None  # as written before `normalize` existed
    ckpt = {"state_dict": old.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.5.0",
            TASK_KEY: "ghost_vision.tasks.segmentation.SegmentationTask"}
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.warns(UserWarning, match="trained without input normalisation"):
        task = load_task(tmp_path / "old.ckpt").eval()
    assert not isinstance(task.model, NormalizedInput) and task.hparams.model_kwargs == {"normalize": False}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(task(x)["out"], old(x)["out"])
    # a torchvision state dict initialises a new (wrapped) peer through init_from
    torch.save(old.model.state_dict(), tmp_path / "tv.pt")
    new = SegmentationTask("lraspp_mobilenet_v3_large", num_classes=3, init_from=str(tmp_path / "tv.pt")).eval()
    assert new.init_report["skipped"] == 0
    with torch.no_grad():
        torch.testing.assert_close(new(x)["out"], old(TF.normalize(x, new.model.mean.flatten().tolist(),
                                                                      new.model.std.flatten().tolist()))["out"])
