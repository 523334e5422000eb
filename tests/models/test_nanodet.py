"""NanoDet-Plus on GhostNet: losses and assigner against hand-computed values, the distribution regression,
the builder contract, the assist head (AGM), the fast path and ONNX export against the eager model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ghost_vision.models import get_model, list_models
from ghost_vision.models.detection import NanoDetPlus, nanodet_plus_ghostnet
from ghost_vision.models.detection.nanodet import (
    DynamicSoftLabelAssigner,
    GhostPAN,
    Integral,
    bbox2distance,
    distance2bbox,
    distribution_focal_loss,
    giou_loss,
    quality_focal_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bce(x: float, t: float) -> float:
    """Binary cross-entropy with logits, from its definition."""
    p = 1.0 / (1.0 + math.exp(-x))
    return -(t * math.log(p) + (1.0 - t) * math.log(1.0 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------------------------- losses
def test_quality_focal_loss_hand_computed() -> None:
    logits = torch.tensor([[1.5, -0.5, 0.0], [-2.0, 0.3, 1.0]], dtype=torch.float64)
    labels = torch.tensor([2, -1])  # prior 0: class 2 with IoU 0.8; prior 1: background
    scores = torch.tensor([0.8, 0.9], dtype=torch.float64)  # the background's score is ignored
    expected = [
        _bce(1.5, 0) * _sigmoid(1.5) ** 2 + _bce(-0.5, 0) * _sigmoid(-0.5) ** 2
        + _bce(0.0, 0.8) * abs(0.8 - 0.5) ** 2,
        sum(_bce(x, 0) * _sigmoid(x) ** 2 for x in (-2.0, 0.3, 1.0)),
    ]
    got = quality_focal_loss(logits, labels, scores, beta=2.0)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_distribution_focal_loss_hand_computed() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    lse = math.log(sum(math.exp(v) for v in (0, 1, 2, 3, 0, 0, 0, 0)))
    # target 2.3: bins 2 and 3, weights 0.7 and 0.3
    expected = 0.7 * (lse - 2.0) + 0.3 * (lse - 3.0)
    got = distribution_focal_loss(logits, torch.tensor([2.3], dtype=torch.float64))
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_giou_loss_hand_computed() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]])
    # overlap 1, union 7, hull 9 | no overlap, union 2, hull 3
    expected = torch.tensor([1 - (1 / 7 - 2 / 9), 1 - (0 - 1 / 3)])
    torch.testing.assert_close(giou_loss(boxes, target), expected)


# ----------------------------------------------------------------------------------------------- assigner
def _iou(a: tuple, b: tuple) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def test_assigner_hand_worked_case() -> None:
    """Two overlapping 16x16 boxes, A (class 0) and B (class 1), five priors (stride 8):

    p0 (4, 8) in A only, p1 (12, 8) in both, p2 (20, 8) and p3 (22, 4) in B only, p4 outside both.
    Predicted boxes: p0 = A (IoU_A 1), p1 shifted 3 px right of A (IoU_A 13/19 = 0.684, IoU_B 11/21 = 0.524),
    p2 = B (IoU_B 1), p3 1 px right of B (IoU_B 15/17 = 0.882) but with a confident wrong class-1 logit (-5).

    k_A = int(1 + 0.684 + 1/3 + 0.28) = 2 and k_B = int(1 + 0.882 + 0.524 + 1/3) = 2. A's two cheapest
    candidates are p0, p1; B's are p2 and p1 (p3's class cost is large). p1 is cheaper for A (its IoU with A
    is higher), so it goes to A and B keeps p2 alone; p3 and p4 are background.
    """
    A, B = (0.0, 0.0, 16.0, 16.0), (8.0, 0.0, 24.0, 16.0)
    preds = [A, (3.0, 0.0, 19.0, 16.0), B, (9.0, 0.0, 25.0, 16.0), A]
    logits = torch.zeros(5, 2)
    logits[3, 1] = -5.0

    # the premises of the docstring, from the definitions
    def cost(i: int, box: tuple, cls: int) -> float:
        u = _iou(preds[i], box)
        c = sum(_bce(float(logits[i, j]), u if j == cls else 0.0)
                * abs((u if j == cls else 0.0) - _sigmoid(float(logits[i, j]))) ** 2 for j in range(2))
        return c - 3.0 * math.log(u + 1e-7)

    assert int(sum(sorted((_iou(p, A) for p in preds[:4]), reverse=True))) == 2
    assert int(sum(sorted((_iou(p, B) for p in preds[:4]), reverse=True))) == 2
    assert cost(0, A, 0) < cost(1, A, 0)
    assert cost(2, B, 1) < cost(1, B, 1) < cost(3, B, 1)
    assert cost(1, A, 0) < cost(1, B, 1)

    priors = torch.tensor([[4.0, 8.0, 8.0], [12.0, 8.0, 8.0], [20.0, 8.0, 8.0], [22.0, 4.0, 8.0], [40.0, 40.0, 8.0]])
    result = DynamicSoftLabelAssigner(topk=13, iou_weight=3.0)(
        logits, priors, torch.tensor(preds), torch.tensor([A, B]), torch.tensor([0, 1]))
    assert result.gt_inds.tolist() == [0, 0, 1, -1, -1]
    torch.testing.assert_close(result.ious, torch.tensor([1.0, 13 / 19, 1.0, 0.0, 0.0]))


def test_assigner_no_boxes_and_no_candidates() -> None:
    assigner = DynamicSoftLabelAssigner()
    priors = torch.tensor([[4.0, 4.0, 8.0], [12.0, 4.0, 8.0]])
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0]])
    empty = assigner(torch.zeros(2, 3), priors, boxes, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert empty.gt_inds.tolist() == [-1, -1] and empty.ious.tolist() == [0.0, 0.0]
    far = assigner(torch.zeros(2, 3), priors, boxes, torch.tensor([[50.0, 50.0, 60.0, 60.0]]), torch.tensor([1]))
    assert far.gt_inds.tolist() == [-1, -1]


# ----------------------------------------------------------------------------------------------- regression
def test_distribution_decode_encode_round_trip() -> None:
    """The two-hot distribution DFL trains towards integrates to its target; boxes <-> distances invert."""
    reg_max = 7
    g = torch.Generator().manual_seed(0)
    target = torch.rand(50, 4, generator=g, dtype=torch.float64) * (reg_max - 0.1)
    left = target.floor().long()
    probs = torch.zeros(50, 4, reg_max + 1, dtype=torch.float64)
    probs.scatter_(-1, left[..., None], (left + 1 - target)[..., None])
    probs.scatter_add_(-1, (left + 1)[..., None], (target - left)[..., None])
    logits = probs.clamp(min=1e-30).log().reshape(50, -1)
    dist = Integral(reg_max).double()(logits)
    torch.testing.assert_close(dist, target, rtol=0, atol=1e-9)
    # the two-hot distribution is where DFL is smallest (its gradient vanishes there)
    logits.requires_grad_(True)
    distribution_focal_loss(logits.reshape(-1, reg_max + 1), target.reshape(-1)).sum().backward()
    assert logits.grad.abs().max() < 1e-9
    points = torch.rand(50, 2, generator=g, dtype=torch.float64) * 300
    stride = 16.0
    boxes = distance2bbox(points, dist * stride)
    torch.testing.assert_close(bbox2distance(points, boxes) / stride, target, rtol=0, atol=1e-9)
    assert bool((boxes[:, 2:] >= boxes[:, :2]).all())


# ----------------------------------------------------------------------------------------------- builder contract
def test_builder_contract_and_registry() -> None:
    assert "nanodet_plus_ghostnet" in list_models(kind="detector")
    model = get_model("nanodet_plus_ghostnet", num_classes=4, width=0.5, score_thresh=0.0, detections_per_img=7)
    assert isinstance(model, NanoDetPlus) and model.backbone.body.width == 0.5
    assert model.head.num_classes == 3 and model.head.reg_max == 7
    assert model.backbone.neck.out_channels == 96 and model.size == 320
    # eval: torchvision's format, boxes in each input image's pixels
    images = [torch.rand(3, 320, 320), torch.rand(3, 500, 400)]
    with torch.no_grad():
        out = model.eval()(images)
    assert [sorted(o) for o in out] == [["boxes", "labels", "scores"]] * 2
    for o, img in zip(out, images):
        assert 0 < len(o["boxes"]) <= 7 and o["boxes"].dtype == torch.float32
        assert o["labels"].min() >= 1 and o["labels"].max() <= 3
        assert bool((o["boxes"][:, 2] <= img.shape[2] + 1e-3).all() and (o["boxes"][:, 3] <= img.shape[1] + 1e-3).all())
        assert bool((o["scores"][:-1] >= o["scores"][1:]).all())
    # train: a dict of finite losses, empty targets allowed
    model.train()
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 100.0, 150.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = model(images, targets)
    assert set(losses) == {"loss_qfl", "loss_bbox", "loss_dfl", "aux_loss_qfl", "aux_loss_bbox", "aux_loss_dfl"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with pytest.raises(ValueError, match="targets should not be none"):
        model(images)
    with pytest.raises(ValueError, match=r"labels must be in 1\.\.3"):
        model(images, [{"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([4])}] * 2)
    with pytest.raises(ValueError, match="num_classes counts the background"):
        nanodet_plus_ghostnet(num_classes=1)
    v2 = nanodet_plus_ghostnet(num_classes=3, backbone="ghostnetv2_100", aux_head=False)
    assert v2.aux_head is None and v2.backbone.body.version == 2


def test_cost_at_320_and_aux_excluded() -> None:
    from ghost_vision.deploy.bench import build, count_macs, count_params
    from ghost_vision.deploy.export import NanoDetOutputs, exportable

    model = build(("nanodet_plus_ghostnet", dict(num_classes=81)))  # what the benchmark counts
    assert model.aux_head is None and model.aux_neck is None
    full = nanodet_plus_ghostnet(num_classes=81).eval()
    net, dynamic = exportable(full)
    assert isinstance(net, NanoDetOutputs) and dynamic
    assert count_params(net) == count_params(model) < count_params(full)
    macs = count_macs(model, [torch.rand(3, 320, 320)])
    assert macs <= 1.0e9  # the bound (NanoDet-Plus-m: 0.9 G)
    assert count_macs(net, torch.rand(1, 3, 320, 320)) == macs  # the head and neck are all the cost


def _grad_norm(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_assist_head_guides_then_detaches() -> None:
    torch.manual_seed(0)
    model = nanodet_plus_ghostnet(num_classes=3, width=0.5, size=128, detach_epoch=2, aux_channels=32,
                                  aux_convs=1).train()
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 70.0, 90.0]]), "labels": torch.tensor([1])}] * 2
    for epoch, reaches in ((1, True), (2, False)):
        model.zero_grad()
        model.set_epoch(epoch)
        losses = model(images, targets)
        sum(v for k, v in losses.items() if k.startswith("aux_")).backward()
        assert (_grad_norm(model.backbone) > 0) is reaches, epoch
        assert _grad_norm(model.aux_head) > 0


def test_task_sets_the_epoch(monkeypatch) -> None:
    from ghost_vision.tasks import DetectionTask

    task = DetectionTask("nanodet_plus_ghostnet", num_classes=3, model_kwargs={"width": 0.5})
    monkeypatch.setattr(DetectionTask, "current_epoch", property(lambda self: 7))  # no trainer attached
    task.on_train_epoch_start()
    assert task.model.epoch == 7


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_ghost_pan_shapes_and_scripting() -> None:
    neck = GhostPAN([20, 56, 480], 32).eval()
    maps = [torch.rand(1, 20, 13, 13), torch.rand(1, 56, 7, 7), torch.rand(1, 480, 4, 4)]
    out = neck(maps)
    assert [tuple(m.shape) for m in out] == [(1, 32, 13, 13), (1, 32, 7, 7), (1, 32, 4, 4), (1, 32, 2, 2)]
    scripted = torch.jit.script(neck)
    for a, b in zip(scripted(maps), out):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="num_extra_levels must be 0 or 1"):
        GhostPAN([20, 56], num_extra_levels=2)


# ----------------------------------------------------------------------------------------------- deploy
def _calibrated(**kwargs) -> NanoDetPlus:
    """A fresh model whose BatchNorm statistics come from one batch (untrained scores are then not all tied)."""
    torch.manual_seed(0)
    model = nanodet_plus_ghostnet(num_classes=4, width=0.5, score_thresh=0.005, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model.forward_raw(model.transform([torch.rand(3, 320, 320), torch.rand(3, 320, 320)])[0].tensors)
    return model.eval()


def _same_detections(a: dict, b: dict, atol: float = 1e-3) -> None:
    assert len(a["boxes"]) == len(b["boxes"]) > 0
    oa, ob = torch.argsort(a["scores"], descending=True, stable=True), torch.argsort(b["scores"], descending=True, stable=True)
    torch.testing.assert_close(a["scores"][oa], b["scores"][ob], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["boxes"][oa], b["boxes"][ob], atol=atol, rtol=0)
    assert a["labels"][oa].tolist() == b["labels"][ob].tolist()


def test_fast_path_matches_eager() -> None:
    from ghost_vision.deploy import optimize, unfused_batchnorms

    model = _calibrated()
    fast = optimize(model)
    assert not unfused_batchnorms(optimize(model, script=False))  # every BatchNorm folded (neck and head too)
    assert isinstance(fast.backbone, torch.jit.ScriptModule) and isinstance(fast.head, torch.jit.ScriptModule)
    images = [torch.rand(3, 320, 320), torch.rand(3, 240, 400)]
    with torch.inference_mode():
        ref, got = model(images), fast(images)
    for a, b in zip(got, ref):
        _same_detections(a, b)


def test_onnx_export_parity(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from ghost_vision.deploy import optimize_for_onnx
    from ghost_vision.deploy.export import NanoDetOutputs, export_onnx, ort_session

    model = _calibrated()
    net = NanoDetOutputs(model)
    images = [torch.rand(3, 320, 320), torch.rand(3, 300, 420)]
    x = net.preprocess(images)
    report = export_onnx(optimize_for_onnx(model), x[:1], tmp_path / "nanodet.onnx", atol=1e-4)
    assert report["dynamic_batch"] and report["dynamic_size"] and report["max_abs_diff"] <= 1e-4
    raw = ort_session(tmp_path / "nanodet.onnx").run(None, {"images": x.numpy()})[0]
    assert raw.shape == (2, 40 * 40 + 20 * 20 + 10 * 10 + 5 * 5, 3 + 32)
    dets = model.postprocess(torch.from_numpy(raw), (320, 320), [tuple(i.shape[-2:]) for i in images])
    with torch.no_grad():
        ref = model(images)
    for a, b in zip(dets, ref):
        _same_detections(a, b)


# ----------------------------------------------------------------------------------------------- DDP
def _ddp_case() -> tuple[NanoDetPlus, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Four images whose halves differ in positives (three and two boxes vs one small box each). Eval mode:
    BatchNorm uses its running statistics, so an image's loss does not depend on the others in the batch.
    Class biases 0 instead of the prior: the box-loss normaliser (sum of the positives' scores) is then well
    above its clamp at 1 (at the prior it is about 0.4, and clamped normalisers cannot add up across ranks)."""
    torch.manual_seed(0)
    model = nanodet_plus_ghostnet(num_classes=3, width=0.5, size=128, aux_channels=32, aux_convs=1).eval()
    with torch.no_grad():
        for conv in [*model.head.gfl_cls, model.aux_head.gfl_cls]:
            conv.bias[:2].zero_()
    x = torch.randn(4, 3, 128, 128)
    boxes = ([[8.0, 8.0, 70.0, 90.0], [60.0, 20.0, 120.0, 60.0], [30.0, 70.0, 100.0, 125.0]],
             [[10.0, 40.0, 60.0, 110.0], [70.0, 5.0, 125.0, 80.0]], [[50.0, 50.0, 66.0, 64.0]],
             [[20.0, 90.0, 40.0, 118.0]])
    targets = [{"boxes": torch.tensor(b), "labels": torch.arange(len(b)) % 2 + 1} for b in boxes]
    return model, x, targets


def _loss_grads(model: NanoDetPlus, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    model.zero_grad()
    sum(model.compute_loss(x, targets).values()).backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _ddp_grads(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One gloo process: the loss of its half of the batch, gradients averaged over ranks as DDP does."""
    import os

    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model, x, targets = _ddp_case()
        share = slice(2 * rank, 2 * rank + 2)
        grads = _loss_grads(model, x[share], targets[share])
        for g in grads:
            dist.all_reduce(g)
            g /= world_size
        torch.save(grads, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_give_the_one_process_gradient(tmp_path: Path, free_port: int) -> None:
    import torch.multiprocessing as mp

    model, x, targets = _ddp_case()
    whole = _loss_grads(model, x, targets)
    # what per-rank normalisers give (each half divided by its own positives, then averaged): not the same
    halves = [_loss_grads(model, x[i:i + 2], targets[i:i + 2]) for i in (0, 2)]
    per_rank = [(a + b) / 2 for a, b in zip(*halves)]
    assert max(float((a - b).abs().max()) for a, b in zip(per_rank, whole)) > 1e-3  # the check has teeth

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_ddp_grads, args=(2, free_port, str(tmp_path)), nprocs=2, join=True, start_method=method)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        for g, w in zip(got, whole):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------- overfit
@pytest.mark.slow
def test_overfit_loss_falls_and_map_rises() -> None:
    from ghost_vision.metrics import VOCMeanAP

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(4):
        img = torch.rand(3, 160, 160, generator=g) * 0.2
        boxes, labels = [], []
        for k in range(2):
            x0, y0 = (torch.rand(2, generator=g) * 90).tolist()
            w, h = (torch.rand(2, generator=g) * 40 + 25).tolist()
            label = 1 + (k + len(images)) % 2
            img[label - 1, int(y0):int(y0 + h), int(x0):int(x0 + w)] = 1.0
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(label)
        images.append(img)
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)})
    model = nanodet_plus_ghostnet(num_classes=3, width=0.5, size=160, aux_channels=64, aux_convs=2, detach_epoch=1)

    def evaluate() -> float:
        metric = VOCMeanAP(num_classes=3, use_07_metric=False)
        with torch.no_grad():
            metric.update(model.eval()(images), [{**t, "image_id": i} for i, t in enumerate(targets)])
        return float(metric.compute()["map"])

    map_before = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    history = []
    for step in range(80):
        model.train()
        model.set_epoch(step // 20)
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
        opt.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5
    map_after = evaluate()
    assert map_after > max(0.5, map_before + 0.3), (map_before, map_after)
