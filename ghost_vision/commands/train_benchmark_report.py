"""The accuracy-per-cost table (JSON + Markdown), its Pareto picture and the training-loss picture, from per-seed
results, costs and the runs' CSV logs.

Example:
    >>> spec = {"metric": "map", "max_steps": 10, "seeds": [0, 1], "recipe": "r.yaml", "entries": [
    ...     {"name": "g", "model": "ssdlite320_ghostnet", "model_kwargs": {}}]}
    >>> rows = aggregate(spec, {"g": [{"seed": 0, "metrics": {"map": 0.2}}, {"seed": 1, "metrics": {"map": 0.4}}]},
    ...                  {"g": {"params_m": 1.0, "macs_g": 0.5}})["rows"]
    >>> round(rows[0]["mean"], 4), round(rows[0]["std"], 4)
    (0.3, 0.1414)
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any

__all__ = ["aggregate", "entry_steps", "loss_curve", "markdown", "pareto_front", "run_name", "train_loss_end",
           "write_report"]


def entry_steps(spec: dict[str, Any], entry: dict[str, Any]) -> int:
    """The entry's step budget: the spec's ``max_steps`` times its ``step_scale`` (at least one step).

    Example:
        >>> entry_steps({"max_steps": 1250}, {"step_scale": 0.5}), entry_steps({"max_steps": 1250}, {})
        (625, 1250)
    """
    return max(1, round(int(spec["max_steps"]) * float(entry.get("step_scale", 1.0))))


def run_name(entry: str, seed: int) -> str:
    """The name of one run, ``ENTRY__seedS``: its folder under ``OUT/runs/`` and its file under ``OUT/results/``.

    Example:
        >>> run_name("ghost_v1_100", 2)
        'ghost_v1_100__seed2'
    """
    return f"{entry}__seed{seed}"


def loss_curve(run_dir: Path) -> dict[int, float]:
    """The logged ``train/loss_step`` of a run by step, from its CSV logs (``run_dir/logs/version_*/metrics.csv``);
    the versions of a resumed run are read in number order, so a step logged again after the resume wins.

    Example:
        >>> loss_curve(Path("no-such-run"))
        {}
    """
    import csv

    losses: dict[int, float] = {}
    paths = Path(run_dir).glob("logs/version_*/metrics.csv")
    for path in sorted(paths, key=lambda p: int(p.parent.name.removeprefix("version_") or 0)):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("train/loss_step"):
                    losses[int(row["step"])] = float(row["train/loss_step"])
    return dict(sorted(losses.items()))


def train_loss_end(run_dir: Path, tail: float = 0.25) -> float | None:
    """Mean of the logged ``train/loss_step`` over the last ``tail`` of the run's steps (:func:`loss_curve`): how
    far the network got on the training data, less noisy than a validation metric early in training. ``None``
    without logged losses.

    Example:
        >>> train_loss_end(Path("no-such-run")) is None
        True
    """
    losses = loss_curve(run_dir)
    if not losses:
        return None
    last = max(losses)
    vals = [v for step, v in losses.items() if step >= last * (1 - tail)]
    return sum(vals) / len(vals)


def aggregate(spec: dict[str, Any], results: dict[str, list[dict[str, Any]]],
              costs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row per entry: the metric's mean and sample standard deviation over its finished seeds, costs, and
    ratios to its peer (the entry its ``vs`` names; a peer's own ratios are 1)."""
    metric = spec["metric"]
    rows = []
    for e in spec["entries"]:
        res = results.get(e["name"], [])
        for r in res:
            if metric not in r["metrics"]:
                raise KeyError(f"result of {e['name']} seed {r['seed']} has no metric {metric!r} "
                               f"(it has {sorted(r['metrics'])}); set 'metric' in the spec to one of them")
        values = [float(r["metrics"][metric]) for r in res]
        row: dict[str, Any] = {
            "name": e["name"], "label": e.get("label", e["name"]), "model": e["model"],
            "model_kwargs": e["model_kwargs"], "args": e.get("args", []), "peer": bool(e.get("peer")),
            "seeds": [r["seed"] for r in res], "values": values, "n": len(values),
            "steps": entry_steps(spec, e),
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "train_wall_s": _mean(r.get("train_wall_s") for r in res),
            "train_cpu_s": _mean(r.get("train_cpu_s") for r in res),
            "train_loss_end": _mean(r.get("train_loss_end") for r in res),
            **costs.get(e["name"], {}),
        }
        rows.append(row)
    by_name = {r["name"]: r for r in rows}
    for e, row in zip(spec["entries"], rows):
        peer = row if row["peer"] else by_name.get(e.get("vs") or "")
        row["vs"] = peer["name"] if peer else None
        if peer and peer["n"]:
            for key, src in (("metric_vs_peer", "mean"), ("macs_vs_peer", "macs_g"), ("latency_vs_peer", "latency_ms"),
                             ("train_time_vs_peer", "train_wall_s"), ("train_cpu_vs_peer", "train_cpu_s")):
                a, b = row.get(src), peer.get(src)
                row[key] = a / b if a is not None and b else None
    return {
        "metric": metric, "recipe": spec["recipe"], "max_steps": int(spec["max_steps"]),
        "seeds": [int(s) for s in spec["seeds"]], "kind": spec.get("kind", "det"), "rows": rows,
        "conditions": {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                       "host": platform.node(), "cpu_count": os.cpu_count(),
                       "load_average": [round(v, 2) for v in os.getloadavg()]},
    }


def _mean(values: Any) -> float | None:
    """Mean of the values, ``None`` when there are none or one is missing."""
    values = list(values)
    return statistics.fmean(values) if values and None not in values else None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (cost lower or equal and accuracy higher or equal, one of
    them strictly), by increasing cost.

    Example:
        >>> pareto_front([(1.0, 0.3), (2.0, 0.2), (2.0, 0.5), (3.0, 0.5)])
        [0, 2]
    """
    front = [i for i, (c, a) in enumerate(points)
             if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for c2, a2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def _step_budgets(report: dict[str, Any]) -> list[int]:
    """The distinct step budgets of the report's entries, ascending (one unless an entry has a ``step_scale``)."""
    return sorted({r["steps"] for r in report["rows"]}) or [int(report["max_steps"])]


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def markdown(report: dict[str, Any]) -> str:
    m, c = report["metric"], report["conditions"]
    labels = {r["name"]: r["label"] for r in report["rows"]}
    several = len({r["vs"] for r in report["rows"] if r["vs"]}) > 1
    lines = [f"| model | {m} (mean ± std) | per seed {', '.join(map(str, report['seeds']))} | steps | params (M) | MACs (G) | latency (ms) | {m} / peer "
             "| MACs / peer | latency / peer | train time / peer | train CPU / peer | train loss at end |",
             "|" + "---|" * 13]
    for r in report["rows"]:
        small = r["n"] and abs(r["mean"]) < 0.01  # early in training: 0.000 ± 0.000 would hide the numbers
        acc = f"{_fmt(r['mean'], '.1e' if small else '.3f')} ± {_fmt(r['std'], '.1e' if small else '.3f')}" \
            if r["n"] else "not run"
        name = f"**{r['label']}** (peer)" if r["peer"] else r["label"]
        if several and r["vs"] and not r["peer"]:
            name += f" (vs {labels[r['vs']]})"
        by_seed = dict(zip(r["seeds"], r["values"]))
        per_seed = " / ".join(_fmt(by_seed.get(s), ".1e" if small else ".3f") for s in report["seeds"])
        lines.append(f"| {name} | {acc} | {per_seed} | {r['steps']} | {_fmt(r.get('params_m'), '.2f')} | "
                     f"{_fmt(r.get('macs_g'), '.3f')} | {_fmt(r.get('latency_ms'), '.1f')} | "
                     f"{_fmt(r.get('metric_vs_peer'), '.2f')} | {_fmt(r.get('macs_vs_peer'), '.2f')} | "
                     f"{_fmt(r.get('latency_vs_peer'), '.2f')} | {_fmt(r.get('train_time_vs_peer'), '.2f')} | "
                     f"{_fmt(r.get('train_cpu_vs_peer'), '.2f')} | "
                     f"{_fmt(r.get('train_loss_end'), '.3f')} |")
    first = next((r for r in report["rows"] if "cost_input" in r), {})
    (steps, *other) = _step_budgets(report)
    budget = (f"{steps} training steps" if not other
              else f"training steps per model as listed (base budget {report['max_steps']})")
    lines += ["", f"Recipe `{Path(report['recipe']).name}`, {budget}, seeds "
              f"{report['seeds']}; std is the sample standard deviation over seeds; train loss at end: the mean logged "
              f"training loss over the last quarter of the steps, mean over seeds; train time: wall clock; train CPU: "
              f"CPU seconds of the run and its data workers (the budget used, whatever else shared the machine). "
              f"MACs and batch-1 latency of "
              f"the fast path (`ghost_vision.deploy.optimize`) at {first.get('cost_input', '–')} on "
              f"{first.get('latency_threads', '–')} thread(s), {first.get('latency_rounds', '–')} interleaved "
              f"rounds; {c['date']}, {c['cpu_count']} CPUs, load average {c['load_average']}."]
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["n"]]
    axes_spec = [(k, label) for k, label in (("latency_ms", "CPU latency, batch 1, fast path (ms)"),
                                             ("macs_g", "MACs (G)")) if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(axes_spec)), figsize=(6 * max(1, len(axes_spec)), 4.5), squeeze=False)
    for ax, (key, xlabel) in zip(axes[0], axes_spec):
        pts = [r for r in rows if r.get(key) is not None]
        for r in pts:
            ax.errorbar(r[key], r["mean"], yerr=r["std"] or 0.0, fmt="s" if r["peer"] else "o", capsize=4,
                        color="tab:orange" if r["peer"] else "tab:blue")
            few = f" ({r['n']} of {len(report['seeds'])} seeds)" if r["n"] < len(report["seeds"]) else ""
            ax.annotate(r["label"] + few, (r[key], r["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        front = pareto_front([(r[key], r["mean"]) for r in pts])
        if len(front) > 1:
            ax.plot([pts[i][key] for i in front], [pts[i]["mean"] for i in front], "--", color="gray", lw=1,
                    label="Pareto front")
            ax.legend(loc="lower right", fontsize=8)
        ax.margins(x=0.2, y=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{report['metric']} (mean ± std, {len(report['seeds'])} seeds)")
        ax.grid(alpha=0.3)
    steps = _step_budgets(report)
    budget = f"{steps[0]} steps" if len(steps) == 1 else f"{steps[0]}-{steps[-1]} steps (per model)"
    fig.suptitle(f"{Path(report['recipe']).stem}: {budget}; squares: MobileNetV3 peer", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_losses(report: dict[str, Any], runs: Path, path: Path) -> bool:
    """Training loss against step per entry, the mean over its seeds at the steps every seed logged, as a running
    mean over a tenth of the logged points (the per-step loss of a batch of 16 is noisy); the same seed means
    the same batches for every entry, so the curves pair up step by step. False (and no file) without logs."""
    curves = {}
    for r in report["rows"]:
        per_seed = [c for s in r["seeds"] if (c := loss_curve(runs / run_name(r["name"], s)))]
        steps = sorted(set.intersection(*(set(c) for c in per_seed))) if per_seed else []
        if steps:
            curves[r["name"]] = (r, steps, [statistics.fmean(c[k] for c in per_seed) for k in steps])
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = iter(["tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"] * 3)
    for r, steps, mean in curves.values():
        w = max(1, len(mean) // 10)
        smooth = [statistics.fmean(mean[max(0, i - w + 1):i + 1]) for i in range(len(mean))]
        ax.plot(steps, smooth, "--" if r["peer"] else "-", color="tab:orange" if r["peer"] else next(colors),
                label=f"{r['label']} ({r['n']} seed{'s' if r['n'] != 1 else ''})")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (mean over seeds, running mean)")
    ax.set_title(f"{Path(report['recipe']).stem}: training loss per step; dashed: MobileNetV3 peer", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(report: dict[str, Any], out: Path) -> None:
    """``OUT/train_benchmark.json``, ``OUT/train_benchmark.md``, ``OUT/pareto.png`` and, from the runs' logs
    (``OUT/runs/ENTRY__seedS/``), ``OUT/train_loss.png``."""
    (out / "train_benchmark.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "train_benchmark.md").write_text(markdown(report))
    _plot(report, out / "pareto.png")
    _plot_losses(report, out / "runs", out / "train_loss.png")
