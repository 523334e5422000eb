"""``ghost-vision train-benchmark``'s bookkeeping on a tiny budget: seeds, resume, the table and the picture.

No accuracy or timing is asserted: the runs are 2 steps long.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from ghost_vision.commands import main as cli_main
from ghost_vision.commands.train_benchmark import (
    _fingerprint,
    _in_process_train,
    load_spec,
    result_path,
    run_benchmark,
    train_loss_end,
)
from ghost_vision.commands.train_benchmark_report import _plot_losses, aggregate, loss_curve, pareto_front

GHOST = {"name": "ghost_050", "model": "ssdlite320_ghostnet", "model_kwargs": {"width": 0.5}}
PEER = {"name": "peer", "model": "ssdlite320_mobilenet_v3_large", "peer": True}


def _spec(tmp: Path, entries: list[dict], **over) -> Path:
    spec = {"recipe": "ssdlite_ghost_shapes", "kind": "det", "metric": "map", "seeds": [0, 1], "max_steps": 2,
            "checkpoint_every": 1, "cost_input": [3, 320, 320], "entries": entries,
            "args": ["--data.init_args.root", str(tmp / "data"), "--data.init_args.num_train", "8",
                     "--data.init_args.num_val", "4", "--data.init_args.num_workers", "0",
                     "--data.init_args.batch_size", "4", "--data.init_args.val_batch_size", "1",
                     "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1"], **over}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _write_result(out: Path, spec: dict, entry: dict, seed: int, value: float) -> None:
    path = result_path(out, entry["name"], seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"entry": entry["name"], "seed": seed, "metrics": {"map": value, "map_50": 1.0},
                                "train_wall_s": 10.0 * (seed + 1), "train_cpu_s": 5.0 * (seed + 1) * value,
                                "num_classes": 5,
                                "fingerprint": _fingerprint(spec, entry, [])}))


def test_table_mean_std_and_ratios_from_the_per_seed_files(tmp_path):
    """Finished results are never re-run; the table's mean and sample std are those of the files."""
    spec_file = _spec(tmp_path, [GHOST, PEER], seeds=[0, 1, 2])
    spec, out = load_spec(spec_file), tmp_path / "out"
    for seed, (g, p) in enumerate([(0.1, 0.30), (0.2, 0.40), (0.6, 0.50)]):
        _write_result(out, spec, spec["entries"][0], seed, g)
        _write_result(out, spec, spec["entries"][1], seed, p)

    cli_main(["train-benchmark", str(spec_file), "--out", str(out), "--latency-rounds", "0"])  # nothing to train

    report = json.loads((out / "train_benchmark.json").read_text())
    ghost, peer = report["rows"]
    assert ghost["seeds"] == peer["seeds"] == [0, 1, 2]
    assert ghost["mean"] == pytest.approx(0.3) and peer["mean"] == pytest.approx(0.4)
    assert ghost["std"] == pytest.approx(math.sqrt((0.2**2 + 0.1**2 + 0.3**2) / 2))  # sample std
    assert peer["std"] == pytest.approx(0.1)
    assert ghost["metric_vs_peer"] == pytest.approx(0.75) and ghost["train_time_vs_peer"] == pytest.approx(1.0)
    # CPU seconds 5 (s + 1) value: ghost 0.5 + 2 + 9 = 11.5, peer 1.5 + 4 + 7.5 = 13
    assert ghost["train_cpu_vs_peer"] == pytest.approx(11.5 / 13)
    # params of the models the runs trained (num_classes from the results), against torchvision's own count
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    tv = ssdlite320_mobilenet_v3_large(num_classes=5, weights_backbone=None)
    assert peer["params_m"] == pytest.approx(sum(p.numel() for p in tv.parameters()) / 1e6)
    assert 0.1 < ghost["macs_vs_peer"] < 0.5 and "latency_ms" not in ghost  # Ghost 0.5x; no latency rounds asked
    md = (out / "train_benchmark.md").read_text()
    assert "0.300 ± 0.265 | 0.100 / 0.200 / 0.600 |" in md and "0.400 ± 0.100 | 0.300 / 0.400 / 0.500 |" in md
    assert "| map (mean ± std) | per seed 0, 1, 2 |" in md and "(peer)" in md
    assert (out / "pareto.png").stat().st_size > 5000


def test_a_result_of_other_settings_stops_the_run(tmp_path):
    spec = load_spec(_spec(tmp_path, [GHOST]))
    out = tmp_path / "out"
    _write_result(out, spec, spec["entries"][0], 0, 0.1)
    spec["max_steps"] = 3
    with pytest.raises(SystemExit, match="ghost_050__seed0.json was run with other settings"):
        run_benchmark(spec, out, report_only=True, latency_rounds=0)


def test_spec_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"recipe": "x", "metric": "map", "seeds": [0], "max_steps": 1, "entries": [],
                                   "epochs": 3}))
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown key\(s\) \['epochs'\]"):
        load_spec(bad)
    with pytest.raises(FileNotFoundError, match="ssdlite_shapes2k"):
        load_spec("no_such_benchmark")
    bad.write_text(yaml.safe_dump({"recipe": "x", "metric": "map", "seeds": [0], "max_steps": 1,
                                   "entries": [GHOST, {**GHOST, "name": "g2", "vs": "ghost_050"}]}))
    with pytest.raises(ValueError, match="vs: 'ghost_050' is not an entry with peer: true"):
        load_spec(bad)
    # the packaged specs read, and name recipes that exist
    assert {e["name"]: e.get("vs") for e in load_spec("seg_shapes")["entries"]}["lraspp_ghost_100"] == \
        "lraspp_mnv3_peer"
    import ghost_vision

    packaged = sorted(p.stem for p in (Path(ghost_vision.__file__).parent / "configs" / "benchmarks").glob("*.yaml"))
    assert {"ssdlite_shapes", "ssdlite_shapes2k", "ssdlite_raccoon", "seg_shapes"} <= set(packaged)
    for name in packaged:
        assert Path(load_spec(name)["recipe"]).is_file(), name
    bad.write_text(yaml.safe_dump({"recipe": "x", "metric": "map", "seeds": [0], "max_steps": 1,
                                   "entries": [{**GHOST, "step_scale": 0}]}))
    with pytest.raises(ValueError, match=r"bad\.yaml: entries\[0\] \('ghost_050'\): step_scale is a number"):
        load_spec(bad)


def test_step_scale_gives_an_entry_its_own_step_budget(tmp_path):
    """Equal training time for a model whose step costs more: its runs get ``step_scale`` x the steps, the
    fingerprint and the table record them, and a result of the other budget is not reused."""
    spec = load_spec(_spec(tmp_path, [{**GHOST, "step_scale": 0.5}, PEER], max_steps=10, seeds=[0]))
    out, steps = tmp_path / "out", {}

    def fake(args, log, threads):
        steps[args[args.index("--model.init_args.model") + 1]] = int(args[args.index("--trainer.max_steps") + 1])
        return {"map": 0.1}

    report = run_benchmark(spec, out, latency_rounds=0, trainer=fake)
    assert steps == {"ssdlite320_ghostnet": 5, "ssdlite320_mobilenet_v3_large": 10}
    stored = json.loads(result_path(out, "ghost_050", 0).read_text())
    assert stored["train_cpu_s"] >= 0 and stored["train_wall_s"] > 0
    assert [r["steps"] for r in report["rows"]] == [5, 10]
    md = (out / "train_benchmark.md").read_text()
    assert "| SSDLite" not in md and "| ghost_050 | 0.100 ± – | 0.100 | 5 |" in md
    assert "training steps per model as listed (base budget 10)" in md
    spec["entries"][0]["step_scale"] = 1.0
    with pytest.raises(SystemExit, match="ghost_050__seed0.json was run with other settings"):
        run_benchmark(spec, out, report_only=True, latency_rounds=0)


def test_each_entry_is_compared_with_its_own_peer():
    entries = [{"name": n, "model": "m", "model_kwargs": {}, **extra} for n, extra in (
        ("a", {"vs": "pa"}), ("pa", {"peer": True}), ("b", {"vs": "pb"}), ("pb", {"peer": True}))]
    results = {n: [{"seed": 0, "metrics": {"miou": v}}] for n, v in (("a", 0.3), ("pa", 0.6), ("b", 0.5), ("pb", 0.4))}
    costs = {n: {"macs_g": m} for n, m in (("a", 1.0), ("pa", 4.0), ("b", 0.5), ("pb", 0.25))}
    rows = aggregate({"metric": "miou", "recipe": "r", "max_steps": 1, "seeds": [0], "entries": entries}, results,
                     costs)["rows"]
    assert [(r["vs"], r["metric_vs_peer"], r["macs_vs_peer"]) for r in rows] == [
        ("pa", 0.5, 0.25), ("pa", 1.0, 1.0), ("pb", 1.25, 2.0), ("pb", 1.0, 1.0)]
    assert rows[0]["std"] is None  # one seed: no spread


def test_train_loss_end_reads_every_log_version_of_a_resumed_run(tmp_path):
    header = "epoch,step,train/loss_step,val/map\n"
    (tmp_path / "logs" / "version_0").mkdir(parents=True)
    (tmp_path / "logs" / "version_1").mkdir()
    (tmp_path / "logs" / "version_0" / "metrics.csv").write_text(
        header + "".join(f"0,{s},{10 - s},\n" for s in range(1, 6)) + "0,5,,0.1\n")
    (tmp_path / "logs" / "version_1" / "metrics.csv").write_text(header + "".join(f"0,{s},{s},\n" for s in (6, 7, 8)))
    assert train_loss_end(tmp_path) == pytest.approx((6 + 7 + 8) / 3)  # steps >= 0.75 * 8
    assert train_loss_end(tmp_path, tail=0.5) == pytest.approx((6 + 5 + 6 + 7 + 8) / 5)  # steps 4..8
    assert train_loss_end(tmp_path / "nothing") is None
    for version, loss in ((2, 30), (10, 20)):  # version 10 is read after version 2 (not in string order)
        (tmp_path / "logs" / f"version_{version}").mkdir()
        (tmp_path / "logs" / f"version_{version}" / "metrics.csv").write_text(header + f"0,8,{loss},\n")
    assert train_loss_end(tmp_path) == pytest.approx((6 + 7 + 20) / 3)


@pytest.mark.filterwarnings("ignore:No artists with labels")  # Axes.plot is replaced below
def test_training_loss_picture_pairs_the_seeds_each_entry_logged(tmp_path, monkeypatch):
    """``OUT/train_loss.png``: per entry the mean over its seeds at the steps all of them logged (a seed that
    logged fewer steps limits the curve); no logs, no picture."""
    header = "epoch,step,train/loss_step\n"
    logs = {("g", 0): {1: 4.0, 2: 3.0, 3: 2.0}, ("g", 1): {1: 6.0, 2: 5.0}, ("p", 0): {1: 5.0, 2: 4.0, 3: 3.0}}
    for (name, seed), curve in logs.items():
        d = tmp_path / "runs" / f"{name}__seed{seed}" / "logs" / "version_0"
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text(header + "".join(f"0,{k},{v}\n" for k, v in curve.items()))
    assert loss_curve(tmp_path / "runs" / "g__seed0") == {1: 4.0, 2: 3.0, 3: 2.0}
    report = {"recipe": "r.yaml", "rows": [
        {"name": "g", "label": "G", "peer": False, "seeds": [0, 1], "n": 2},
        {"name": "p", "label": "P", "peer": True, "seeds": [0], "n": 1},
        {"name": "x", "label": "X", "peer": False, "seeds": [0], "n": 1}]}  # no logs: left out
    import matplotlib.axes

    plotted = []
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, x, y, *a, **k: plotted.append((list(x), y)))
    assert _plot_losses(report, tmp_path / "runs", tmp_path / "loss.png")
    assert plotted == [([1, 2], [5.0, 4.0]), ([1, 2, 3], [5.0, 4.0, 3.0])]  # g: steps of both seeds, averaged
    assert (tmp_path / "loss.png").is_file()
    assert not _plot_losses(report, tmp_path / "nothing", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_pareto_front():
    assert pareto_front([(1.0, 0.3), (2.0, 0.2), (2.0, 0.5), (3.0, 0.5), (0.5, 0.1)]) == [4, 0, 2]


def test_runs_every_seed_once_and_resumes_a_killed_run(tmp_path):
    """The runner's bookkeeping with a stand-in trainer: one run per (entry, seed) with that seed, results
    written per run; a run whose result is missing but whose checkpoint exists (killed) gets ``--ckpt_path
    last``; a complete benchmark trains nothing when run again."""
    spec = load_spec(_spec(tmp_path, [GHOST, PEER]))
    out, calls = tmp_path / "out", []

    def fake(args, log, threads):
        seed = int(args[args.index("--seed_everything") + 1])
        calls.append((args[args.index("--model.init_args.model") + 1], seed, args[-2:] == ["--ckpt_path", "last"]))
        return {"map": 0.1 * (seed + 1)}

    ghost_ckpt = out / "runs" / "ghost_050__seed1" / "checkpoints" / "last.ckpt"
    ghost_ckpt.parent.mkdir(parents=True)
    torch.save({"num_classes": 5}, ghost_ckpt)  # a run that died after a checkpoint, before its result
    _write_result(out, spec, spec["entries"][1], 0, 0.5)  # the peer's seed 0 finished before the kill
    report = run_benchmark(spec, out, latency_rounds=0, trainer=fake)
    assert calls == [("ssdlite320_ghostnet", 0, False), ("ssdlite320_ghostnet", 1, True),
                     ("ssdlite320_mobilenet_v3_large", 1, False)]
    assert [json.loads(result_path(out, "ghost_050", s).read_text())["seed"] for s in (0, 1)] == [0, 1]
    ghost, peer = report["rows"]
    assert ghost["values"] == pytest.approx([0.1, 0.2]) and peer["values"] == pytest.approx([0.5, 0.2])
    calls.clear()
    run_benchmark(spec, out, latency_rounds=0, trainer=fake)
    assert calls == []


@pytest.mark.slow
def test_training_runs_record_their_seeds_and_resume(tmp_path, one_torch_thread):
    """Two seeded 2-step runs in-process; a run killed after its last checkpoint but before its result resumes
    from that checkpoint (``--ckpt_path last``); a complete benchmark trains nothing when run again."""
    spec = load_spec(_spec(tmp_path, [GHOST]))
    out, calls = tmp_path / "out", []

    def spy(args, log, threads):
        calls.append(args)
        return _in_process_train(args, log, threads)

    run_benchmark(spec, out, in_process=True, latency_rounds=2, trainer=spy)
    assert len(calls) == 2
    for seed in (0, 1):
        result = json.loads(result_path(out, "ghost_050", seed).read_text())
        assert result["seed"] == seed and result["num_classes"] == 5 and not result["resumed"]
        assert result["train_loss_end"] > 0
        assert set(result["metrics"]) >= {"map", "map_50"}
        (config,) = (out / "runs" / f"ghost_050__seed{seed}").rglob("config.yaml")
        saved = yaml.safe_load(config.read_text())
        assert saved["seed_everything"] == seed and saved["trainer"]["max_steps"] == 2
        assert saved["model"]["init_args"]["model_kwargs"] == {"width": 0.5}

    result_path(out, "ghost_050", 1).unlink()  # killed before the result was written
    calls.clear()
    report = run_benchmark(spec, out, in_process=True, latency_rounds=2, trainer=spy)
    assert len(calls) == 1 and calls[0][-2:] == ["--ckpt_path", "last"]
    assert calls[0][calls[0].index("--seed_everything") + 1] == "1"
    assert json.loads(result_path(out, "ghost_050", 1).read_text())["resumed"]
    (row,) = report["rows"]
    assert row["n"] == 2 and row["latency_ms"] > 0 and row["macs_g"] > 0

    calls.clear()
    run_benchmark(spec, out, in_process=True, latency_rounds=2, trainer=spy)
    assert calls == []
    for name in ("train_benchmark.json", "train_benchmark.md", "pareto.png"):
        assert (out / name).stat().st_size > 0
