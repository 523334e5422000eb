#!/usr/bin/env python
"""Accuracy per cost: seeded Ghost-vs-peer training runs, table and Pareto plot.

    python tools/train_benchmark.py ssdlite_shapes2k --out bench_acc/ssdlite_shapes2k

The same as ``ghost-vision train-benchmark ...``; the code lives in ``ghost_vision.commands.train_benchmark``.
"""

from ghost_vision.commands.train_benchmark import main as main

if __name__ == "__main__":
    from ghost_vision.commands import run

    run(main)
