"""A training DataLoader whose epochs are reproducible and which resumes mid-epoch.

A run killed mid-epoch and resumed from ``last.ckpt`` should continue exactly as if it had never stopped.
With a plain ``DataLoader(shuffle=True)`` it cannot: the shuffle order and the workers' seeds are drawn
from the global torch RNG (whose state at the epoch's start is not in the checkpoint), Lightning restarts
the interrupted epoch with a fresh iterator (batches already trained on come again, others never), and
the augmentation generators of :mod:`ghost_vision.data.transforms` continue from wherever they were.

:class:`ResumableDataLoader` makes an epoch a pure function of ``(seed, epoch)``:

* the order comes from :class:`EpochShuffleSampler` (a ``RandomSampler`` with ``set_epoch``, which
  Lightning calls every epoch; under DDP Lightning swaps in ``DistributedSampler``, also seeded by epoch);
* the workers' base seed comes from the loader's own generator, seeded per epoch;
* augmentations running in the main process (``num_workers=0``) are re-seeded per epoch; in worker
  processes they re-seed themselves from the worker seed (see :mod:`ghost_vision.data.transforms`);
* ``state_dict()`` holds the epoch and the number of batches served in it. Lightning stores it in every
  checkpoint (stateful-dataloader support) and hands it back on resume; the next iteration then *replays*
  those batches (loads and drops them, no training), which also advances every augmentation generator to
  where the interrupted run was, so the rest of the epoch is identical.

Exactness holds with ``num_workers=0`` and with non-persistent workers; with ``persistent_workers=True``
the workers' augmentation streams run on across epochs and a resumed run restarts them (order and
positions stay exact, augmentations differ).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

__all__ = ["EpochShuffleSampler", "ResumableDataLoader", "default_seed"]


def default_seed() -> int:
    """Lightning's ``seed_everything`` seed when set, else torch's initial seed."""
    env = os.environ.get("PL_GLOBAL_SEED")
    return int(env) if env is not None else int(torch.initial_seed() % 2**63)


def _mix(*key: int) -> int:
    return int(np.random.SeedSequence([k % 2**63 for k in key]).generate_state(1, dtype=np.uint64)[0] % 2**63)


class EpochShuffleSampler(RandomSampler):
    """Random permutation per epoch from ``(seed, epoch)``; ``set_epoch`` picks the epoch."""

    def __init__(self, data_source: Any, seed: int | None = None) -> None:
        super().__init__(data_source)
        self.seed = default_seed() if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, 0))
        yield from torch.randperm(len(self.data_source), generator=g).tolist()


def _seeded_transforms(dataset: Any, depth: int = 0) -> list[Any]:
    """The re-seedable transforms (:mod:`ghost_vision.data.transforms` presets) used by a dataset."""
    if dataset is None or depth > 4:
        return []
    found = [t for t in (getattr(dataset, "transforms", None), getattr(dataset, "transform", None))
             if t is not None and hasattr(t, "_reseed") and hasattr(t, "seed")]
    for inner in [getattr(dataset, "dataset", None), *getattr(dataset, "datasets", [])]:
        found += _seeded_transforms(inner, depth + 1)
    return found


class ResumableDataLoader(DataLoader):
    """``DataLoader`` for training with reproducible epochs and mid-epoch resume (see the module doc).

    Pass ``shuffle=True`` (or nothing and an :class:`EpochShuffleSampler`); ``seed`` defaults to
    :func:`default_seed`.

    Example:
        >>> loader = ResumableDataLoader(list(range(10)), batch_size=4, shuffle=True, seed=0)
        >>> it = iter(loader); first = next(it)
        >>> state = loader.state_dict(); state["batches"]
        1
        >>> again = ResumableDataLoader(list(range(10)), batch_size=4, shuffle=True, seed=0)
        >>> again.load_state_dict(state)
        >>> [b.tolist() for b in again] == [b.tolist() for b in it]
        True
    """

    def __init__(self, dataset: Dataset, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        seed = default_seed() if seed is None else int(seed)
        if kwargs.pop("shuffle", False):
            if kwargs.get("sampler") is not None:
                raise ValueError("pass shuffle=True or a sampler, not both")
            kwargs["sampler"] = EpochShuffleSampler(dataset, seed)
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator()
        super().__init__(dataset, *args, **kwargs)
        self.seed = seed
        self._served: dict[str, int] = {"epoch": 0, "batches": 0}
        self._resume: dict[str, int] | None = None

    def _epoch(self) -> int:
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(sampler, "epoch"):
                return int(sampler.epoch)
        return 0

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        # a generator: nothing below runs before the first batch is asked for, i.e. after Lightning's
        # set_epoch for the epoch about to run
        epoch = self._epoch()
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        self.generator.manual_seed(_mix(self.seed, epoch, 1))
        if self.num_workers == 0:
            for t in _seeded_transforms(self.dataset):
                t._reseed([t.seed, _mix(self.seed, epoch, 2)])
        self._served = {"epoch": epoch, "batches": 0}
        it = super().__iter__()
        if skip:
            # replay what the interrupted run already trained on; a dataset drawing from the global RNGs
            # must not shift them (the checkpoint's global RNG states already include those draws)
            saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
            for _ in range(skip):
                next(it)
                self._served["batches"] += 1
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])
        for batch in it:
            self._served["batches"] += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, **self._served}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.seed = int(state_dict.get("seed", self.seed))
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if isinstance(sampler, EpochShuffleSampler):
                sampler.seed = self.seed
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
