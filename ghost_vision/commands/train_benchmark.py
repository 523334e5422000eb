"""Accuracy per cost: train Ghost models and their MobileNetV3 peers with one recipe, several seeds, one step
budget, and tabulate accuracy (mean ± std over seeds) against params, MACs and fast-path CPU latency.

A *benchmark spec* (YAML; packaged ones in ``ghost_vision/configs/benchmarks/``, by name) names a recipe, the
accuracy metric, seeds, the step budget and the entries::

    recipe: recipes/ssdlite_shapes2k.yaml   # relative to the spec, a packaged recipe name, or a path
    metric: map                             # key of the run's metrics JSON
    seeds: [0, 1, 2]
    max_steps: 3000
    checkpoint_every: 250                   # resumable checkpoints (a divisor of max_steps is used)
    cost_input: [3, 320, 320]               # one image, for MACs and latency
    args: []                                # overrides for every run (LightningCLI syntax)
    entries:
      - {name: ghost_100, model: ssdlite320_ghostnet, model_kwargs: {width: 1.0}}
      - {name: mnv3_peer, model: ssdlite320_mobilenet_v3_large, peer: true, args: [--model.init_args.lr, "0.003"]}

(``peer: true`` marks a peer; with several, an entry's ratios are to the one its ``vs:`` names, default the
first. ``step_scale: 0.5`` gives an entry half the step budget: to compare at equal training *time* a model
whose step costs twice as much; the table lists each entry's steps and training time.)

Every (entry, seed) run is ``ghost-vision train RECIPE`` (:func:`ghost_vision.cli.train`, in a subprocess by
default) with ``--seed_everything SEED --trainer.max_steps N``, no validation until the end, and its final
weights validated; its result is written to ``OUT/results/ENTRY__seedS.json`` as soon as it finishes. Run the
same command again after a kill: finished runs are skipped and an unfinished one resumes from its last
checkpoint. Then params, MACs (``FlopCounterMode``) and batch-1 latency of ``ghost_vision.deploy.optimize``
(detectors: the network up to the head outputs, as ``ghost-vision benchmark``), all entries interleaved, and
the outputs ``OUT/train_benchmark.{json,md}`` and ``OUT/pareto.png`` (accuracy vs latency and vs MACs).

Usage:
    ghost-vision train-benchmark ssdlite_shapes2k --out bench_acc/shapes2k
    ghost-vision train-benchmark ssdlite_shapes2k --out /tmp/b --max-steps 20 --seeds 0 1 -- --data.init_args.num_workers 0
    ghost-vision train-benchmark ssdlite_shapes2k --out bench_acc/shapes2k --report-only   # table of what is done
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from ghost_vision.commands.train_benchmark_report import (
    aggregate,
    entry_steps,
    run_name,
    train_loss_end,
    write_report,
)

__all__ = ["BENCHMARKS_DIR", "load_spec", "entry_steps", "run_args", "run_benchmark", "train_loss_end", "main"]

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "configs" / "benchmarks"
_SPEC_KEYS = {"recipe", "metric", "seeds", "max_steps", "checkpoint_every", "cost_input", "args", "entries", "kind"}
_ENTRY_KEYS = {"name", "model", "model_kwargs", "args", "peer", "vs", "label", "step_scale"}


def spec_path(name_or_path: str | os.PathLike) -> Path:
    """An existing YAML file as given, else the packaged benchmark spec of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = BENCHMARKS_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if len(path.parts) == 1 and packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in BENCHMARKS_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"benchmark spec not found: {os.fspath(name_or_path)!r} is neither a YAML file nor a "
                            f"packaged spec ({names})")


def load_spec(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a benchmark spec; ``recipe`` comes back as an absolute path when it names a file.

    Raises:
        ValueError: a missing or unknown key, or a bad entry, named with the file.
    """
    path = spec_path(name_or_path)
    spec = yaml.safe_load(path.read_text()) or {}

    def bad(msg: str) -> ValueError:
        return ValueError(f"{path}: {msg}")

    if not isinstance(spec, dict):
        raise bad("a benchmark spec is a mapping (recipe, metric, seeds, max_steps, entries, ...)")
    if unknown := set(spec) - _SPEC_KEYS:
        raise bad(f"unknown key(s) {sorted(unknown)}; known: {sorted(_SPEC_KEYS)}")
    if missing := {"recipe", "metric", "seeds", "max_steps", "entries"} - set(spec):
        raise bad(f"missing key(s) {sorted(missing)}")
    recipe = path.parent / spec["recipe"]
    spec["recipe"] = str(recipe.resolve()) if recipe.is_file() else str(spec["recipe"])
    spec.setdefault("args", [])
    spec.setdefault("checkpoint_every", spec["max_steps"])
    spec.setdefault("kind", "det")
    if spec["kind"] not in ("det", "seg"):
        raise bad(f"kind must be 'det' or 'seg', got {spec['kind']!r}")
    entries = spec["entries"]
    if not isinstance(entries, list) or not entries:
        raise bad("'entries' is a non-empty list of {name, model, model_kwargs, args, peer, vs, label}")
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not {"name", "model"} <= set(e) or set(e) - _ENTRY_KEYS:
            raise bad(f"entries[{i}] needs 'name' and 'model' and only the keys {sorted(_ENTRY_KEYS)}, got {e!r}")
        e.setdefault("model_kwargs", {})
        e.setdefault("args", [])
        e["args"] = [str(a) for a in e["args"]]
        scale = e.setdefault("step_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 100:
            raise bad(f"entries[{i}] ({e['name']!r}): step_scale is a number in (0, 100], got {scale!r}")
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise bad(f"entry names repeat: {names}")
    peers = [e["name"] for e in entries if e.get("peer")]
    for e in entries:  # ratios of an entry are to its ``vs`` peer (default: the first peer)
        if e.get("vs", peers[0] if peers else None) not in (*peers, None):
            raise bad(f"entry {e['name']!r}: vs: {e['vs']!r} is not an entry with peer: true ({peers})")
        if peers and not e.get("peer"):
            e.setdefault("vs", peers[0])
    spec["args"] = [str(a) for a in spec["args"]]
    return spec


def _divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` not above ``at_most``: checkpoints then fall on the last step."""
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def run_args(spec: dict[str, Any], entry: dict[str, Any], seed: int, run_dir: Path, extra: Sequence[str] = ()
             ) -> list[str]:
    """``ghost-vision train`` arguments of one (entry, seed) run writing only under ``run_dir``.

    Example:
        >>> spec = {"recipe": "ssdlite_ghost_shapes", "max_steps": 100, "checkpoint_every": 30, "args": []}
        >>> args = run_args(spec, {"model": "ssdlite320_ghostnet", "model_kwargs": {"width": 0.5}, "args": []},
        ...                 3, Path("out/runs/g__seed3"))
        >>> args[args.index("--seed_everything") + 1], args[args.index("--checkpoint.every_n_train_steps") + 1]
        ('3', '25')
    """
    steps = entry_steps(spec, entry)
    return [
        spec["recipe"],
        "--model.init_args.model", entry["model"],
        "--model.init_args.model_kwargs", json.dumps(entry["model_kwargs"]),
        "--seed_everything", str(seed),
        "--trainer.max_epochs", "-1", "--trainer.max_steps", str(steps),
        # no validation while training (equal steps, equal cost); the final weights are validated at the end
        "--trainer.check_val_every_n_epoch", "1000000", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir),
        "--checkpoint.dirpath", str(run_dir / "checkpoints"),
        "--checkpoint.monitor", "null", "--checkpoint.filename", "{step:07d}",
        "--checkpoint.every_n_train_steps", str(_divisor(steps, int(spec["checkpoint_every"]))),
        "--output", str(run_dir / "metrics.json"),
        *spec["args"], *entry["args"], *extra,
    ]


def _fingerprint(spec: dict[str, Any], entry: dict[str, Any], extra: Sequence[str]) -> dict[str, Any]:
    """What a stored result must match to be reused: the same recipe, model, budget and overrides."""
    return {"recipe": Path(spec["recipe"]).name, "model": entry["model"], "model_kwargs": entry["model_kwargs"],
            "max_steps": entry_steps(spec, entry), "args": [*spec["args"], *entry["args"], *extra]}


def _subprocess_train(args: list[str], log: Path, threads: int | None) -> dict[str, float]:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, "-m", "ghost_vision", "train", *args], stdout=f,
                              stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"training run failed (exit {proc.returncode}); its log: {log}")
    return json.loads(Path(args[args.index("--output") + 1]).read_text())


def _in_process_train(args: list[str], log: Path, threads: int | None) -> dict[str, float]:
    from ghost_vision.cli import train

    return train(args)


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children, data workers included: the
    training budget a run used, which, unlike wall time, does not grow when other jobs share the cores."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _num_classes(run_dir: Path) -> int | None:
    import torch

    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    return int(torch.load(last, map_location="cpu", weights_only=False, mmap=True)["num_classes"])


def _write_json(path: Path, data: Any) -> None:
    """Atomic: a kill while writing leaves the old file or none, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def result_path(out: Path, entry: str, seed: int) -> Path:
    return out / "results" / f"{run_name(entry, seed)}.json"


def run_benchmark(spec: dict[str, Any], out: str | os.PathLike, *, extra: Sequence[str] = (),
                  in_process: bool = False, threads: int | None = 1, latency_rounds: int = 20,
                  report_only: bool = False,
                  trainer: Callable[[list[str], Path, int | None], dict[str, float]] | None = None
                  ) -> dict[str, Any]:
    """Train what is not done yet, then measure costs and write the table and the picture.

    Args:
        spec: a spec from :func:`load_spec` (seeds, max_steps, entries may be edited before).
        out: output folder; results already in it are reused (a mismatching one stops the run, named).
        extra: overrides appended to every run's arguments (part of the result's fingerprint).
        in_process: train in this process instead of a fresh ``python -m ghost_vision train`` per run.
        threads: ``OMP_NUM_THREADS`` of training subprocesses, and the threads of the latency measurement.
        latency_rounds: interleaved rounds of the batch-1 latency measurement (0: no latency).
        report_only: train nothing; tabulate the results there are.
        trainer: the function that runs one training (tests); default by ``in_process``.

    Returns:
        The aggregate written to ``OUT/train_benchmark.json``.
    """
    out = Path(out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    train_fn = trainer or (_in_process_train if in_process else _subprocess_train)
    runs = [(e, int(s)) for s in spec["seeds"] for e in spec["entries"]]  # seed-major: every entry gets seed 0 first
    todo = []
    for entry, seed in runs:
        path = result_path(out, entry["name"], seed)
        if path.is_file():
            stored = json.loads(path.read_text()).get("fingerprint")
            if stored != _fingerprint(spec, entry, extra):
                raise SystemExit(f"{path} was run with other settings ({stored}) than now "
                                 f"({_fingerprint(spec, entry, extra)}): use another --out, or delete that file")
        else:
            todo.append((entry, seed))
    if not report_only:
        with tqdm(total=len(runs), initial=len(runs) - len(todo), desc="training runs", unit="run") as bar:
            for entry, seed in todo:
                name = run_name(entry["name"], seed)
                bar.set_postfix_str(name)
                run_dir = out / "runs" / name
                run_dir.mkdir(parents=True, exist_ok=True)
                args = run_args(spec, entry, seed, run_dir, extra)
                resumed = (run_dir / "checkpoints" / "last.ckpt").is_file()
                if resumed:  # killed before: continue from its last checkpoint (exact resume)
                    args += ["--ckpt_path", "last"]
                t0, cpu0 = time.perf_counter(), _cpu_seconds()
                metrics = train_fn(args, run_dir / "train.log", threads)
                _write_json(result_path(out, entry["name"], seed), {
                    "entry": entry["name"], "seed": seed, "metrics": metrics,
                    "train_wall_s": time.perf_counter() - t0, "train_cpu_s": _cpu_seconds() - cpu0,
                    "resumed": resumed,
                    "train_loss_end": train_loss_end(run_dir),
                    "num_classes": _num_classes(run_dir), "fingerprint": _fingerprint(spec, entry, extra),
                    "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "host": platform.node()})
                bar.update(1)
    results = {e["name"]: [json.loads(p.read_text()) for s in spec["seeds"]
                           if (p := result_path(out, e["name"], int(s))).is_file()] for e in spec["entries"]}
    costs = _costs(spec, results, out / "costs.json", threads, latency_rounds)
    report = aggregate(spec, results, costs)
    write_report(report, out)
    return report


def _costs(spec: dict[str, Any], results: dict[str, list[dict[str, Any]]], path: Path, threads: int | None,
           rounds: int) -> dict[str, dict[str, Any]]:
    """Params, MACs and fast-path latency per entry with a result, kept in ``path`` (re-timed, all entries
    together, only when an entry is new): the models are built through the registry (weights not read;
    ``num_classes`` of the trained run), costs do not depend on the weights."""
    import statistics

    import torch

    from ghost_vision.deploy import optimize
    from ghost_vision.deploy.bench import build, count_macs, count_params, interleaved
    from ghost_vision.deploy.export import exportable
    from ghost_vision.models import reparameterize, skip_weight_loading

    size = tuple(spec.get("cost_input", (3, 320, 320)))
    entries = [e for e in spec["entries"] if results[e["name"]]]
    key = {e["name"]: [e["model"], e["model_kwargs"], list(size), results[e["name"]][0].get("num_classes"),
                       rounds] for e in entries}
    stored = json.loads(path.read_text()) if path.is_file() else {}
    if stored.get("key") == key:
        return stored["costs"]
    costs: dict[str, dict[str, Any]] = {}
    nets: dict[str, Any] = {}
    x = torch.rand(1, *size)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        for e in entries:
            kwargs = dict(e["model_kwargs"])
            if results[e["name"]][0].get("num_classes"):
                kwargs["num_classes"] = results[e["name"]][0]["num_classes"]
            with skip_weight_loading():  # GhostNetV3 is counted and timed in its fused (deploy) form
                model = reparameterize(build((e["model"], kwargs)))
            net = exportable(model)[0] if spec["kind"] == "det" else model
            costs[e["name"]] = {"params_m": count_params(model) / 1e6, "macs_g": count_macs(net, x) / 1e9}
            if rounds:
                fast = optimize(model)
                nets[e["name"]] = exportable(fast)[0] if spec["kind"] == "det" else fast
        if rounds and nets:
            times = interleaved({k: (lambda n=n: n(x)) for k, n in nets.items()}, rounds, warmup=2)
            for k, t in times.items():
                costs[k]["latency_ms"] = 1e3 * statistics.median(t)
        for c in costs.values():
            c.update(latency_threads=torch.get_num_threads(), latency_rounds=rounds, cost_input=list(size))
    finally:
        torch.set_num_threads(before)
    _write_json(path, {"key": key, "costs": costs})
    return costs


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="Arguments after '--' are appended to every training run.")
    parser.add_argument("spec", help="benchmark spec: a packaged name (" + ", ".join(
        sorted(p.stem for p in BENCHMARKS_DIR.glob("*.yaml"))) + ") or a YAML path")
    parser.add_argument("--out", type=Path, required=True, help="output folder (rerun the same command to resume)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the spec's seeds")
    parser.add_argument("--max-steps", type=int, help="override the spec's step budget")
    parser.add_argument("--entries", nargs="+", help="only these entries (by name)")
    parser.add_argument("--threads", type=int, default=1, help="threads per training run and for latency")
    parser.add_argument("--latency-rounds", type=int, default=20)
    parser.add_argument("--in-process", action="store_true", help="train in this process (no subprocesses)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: tabulate what is done")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    if args.seeds:
        spec["seeds"] = args.seeds
    if args.max_steps:
        spec["max_steps"] = args.max_steps
    if args.entries:
        known = {e["name"] for e in spec["entries"]}
        if unknown := set(args.entries) - known:
            raise SystemExit(f"--entries: unknown {sorted(unknown)}; the spec has {sorted(known)}")
        spec["entries"] = [e for e in spec["entries"] if e["name"] in args.entries]
    report = run_benchmark(spec, args.out, extra=extra, in_process=args.in_process, threads=args.threads,
                           latency_rounds=args.latency_rounds, report_only=args.report_only)
    print((args.out / "train_benchmark.md").read_text())
    return report
