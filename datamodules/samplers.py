"""Batch samplers that build metric-learning batches: P groups x (C subgroups x) K items.

`PKBatchSampler` with only `groups` gives classic P speakers x K utterances (triplet / GE2E).
With `subgroups` (e.g. intra-speaker k-means clusters) it gives P speakers x C clusters x K clips,
so every anchor has a positive (same cluster) and same-speaker negatives (the speaker's other
clusters). Under DDP every rank draws from the same seeded epoch plan and takes every
world_size-th batch, so ranks get disjoint batches and the same number of them.

Each batch item is an `(index, item_seed)` pair, or `(index, item_seed, cluster)` once subgroups are
set (the objective reads a clip's pseudo-label from its batch). The seed is a function of (seed,
epoch, batch, position) only, so random crops and augmentation do not depend on worker scheduling
or on the global RNG, and a resumed run draws exactly the crops the uninterrupted run would have drawn.

Groups that cannot fill their part of a batch (fewer than 2 items; with subgroups, fewer than C
subgroups) are never sampled: they are counted (`excluded_groups`, `n_excluded_items`) and logged
once per distinct set, never dropped silently.

Lightning calls `set_epoch` on `dataloader.sampler` and `dataloader.batch_sampler.sampler`, never on
a batch sampler itself; `PKBatchSampler.sampler` is therefore a relay whose `set_epoch` reaches
the batch sampler, so every epoch gets its own plan under Lightning's loop.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger(__name__)

def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _CyclingPool:
    """Per-key shuffled pools: an item is reused only after all items of its key were used."""

    def __init__(self, items_by_key: dict, rng: np.random.Generator):
        self.items = {k: np.asarray(v) for k, v in items_by_key.items()}
        self.rng = rng
        self.queue = {k: [] for k in self.items}

    def take(self, key, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if not self.queue[key]:
                self.queue[key] = list(self.rng.permutation(self.items[key]))
            nxt = self.queue[key].pop()
            if nxt in out and len(self.items[key]) >= n:
                self.queue[key].insert(0, nxt)  # avoid a duplicate inside one batch when possible
                continue
            out.append(int(nxt))
        return out


def item_seed(seed: int, epoch: int, batch: int, position: int) -> int:
    """Seed of one batch item: independent of workers, ranks and the global RNG."""
    return int(np.random.SeedSequence([seed, epoch, batch, position]).generate_state(1)[0])


class _EpochRelay(Sampler[int]):
    """What Lightning sees as `batch_sampler.sampler`: forwards `set_epoch`, iterates the epoch's items."""

    def __init__(self, owner: "PKBatchSampler"):
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return (i for batch in self._owner.rank_batches() for i in batch)

    def __len__(self) -> int:
        return len(self._owner) * self._owner.batch_size


class PKBatchSampler(Sampler[list[tuple[int, ...]]]):
    """groups: per-item group (speaker) labels; subgroups: per-item pseudo-labels (or None for P x K).
    group_names: optional names of the group labels (e.g. speaker ids) for the excluded-groups report.
    """

    def __init__(self, groups: Sequence, n_groups: int, n_per_group: int, subgroups: Sequence | None = None,
                 n_subgroups: int = 2, batches_per_epoch: int | None = None, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, group_names: Sequence[str] | None = None):
        self.groups = np.asarray(groups)
        self.group_names = None if group_names is None else list(group_names)
        self._reported: tuple | None = None
        if len(self.groups) == 0:
            raise ValueError("PKBatchSampler: no items to sample from")
        self.subgroups = None if subgroups is None else np.asarray(subgroups)
        if self.subgroups is not None and len(self.subgroups) != len(self.groups):
            raise ValueError(f"PKBatchSampler: {len(self.subgroups)} subgroup labels for {len(self.groups)} items")
        self.n_groups, self.n_per_group, self.n_subgroups = int(n_groups), int(n_per_group), int(n_subgroups)
        self.seed, self.epoch = int(seed), 0
        self._rank, self._world = rank, world_size
        self._index()
        self._batches_per_epoch = batches_per_epoch
        self.sampler = _EpochRelay(self)
        self._skip: tuple[int, int] | None = None  # (epoch, batches of this rank already trained), see skip_once

    def _index(self):
        self.by_group = defaultdict(list)
        for i, g in enumerate(self.groups):
            self.by_group[g].append(i)
        if self.subgroups is None:
            self.eligible = sorted(g for g, idx in self.by_group.items() if len(idx) >= 2)
        else:
            self.by_sub = defaultdict(list)
            for i, (g, s) in enumerate(zip(self.groups, self.subgroups)):
                self.by_sub[(g, s)].append(i)
            subs_of = defaultdict(list)
            for (g, s) in self.by_sub:
                subs_of[g].append(s)
            self.subs_of = {g: sorted(v) for g, v in subs_of.items()}
            self.eligible = sorted(g for g, v in self.subs_of.items() if len(v) >= self.n_subgroups)
        eligible = set(self.eligible)
        self.excluded_groups = sorted(g for g in self.by_group if g not in eligible)
        self.n_excluded_items = sum(len(self.by_group[g]) for g in self.excluded_groups)
        need = (f"at least {self.n_subgroups} subgroups (clusters) each" if self.subgroups is not None
                else "at least 2 items each")
        if len(self.eligible) < self.n_groups:
            raise ValueError(f"PKBatchSampler: batch asks for {self.n_groups} groups (speakers) but only "
                             f"{len(self.eligible)} have {need}; lower n_groups (data.n_speakers) or use more data")
        self._report_excluded(need)

    def _name(self, g) -> str:
        return str(self.group_names[int(g)]) if self.group_names is not None else str(g)

    def _report_excluded(self, need: str) -> None:
        key = (tuple(self.excluded_groups), self.subgroups is None)
        if not self.excluded_groups or key == self._reported:
            return
        self._reported = key
        if self._rank_world()[0] != 0:
            return
        names = [self._name(g) for g in self.excluded_groups]
        log.warning("sampler: %d of %d speakers (%d of %d clips) are never sampled: a batch needs %s; e.g. %s",
                    len(names), len(self.by_group), self.n_excluded_items, len(self.groups), need,
                    ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))

    def set_subgroups(self, subgroups: Sequence) -> None:
        """Swap in new pseudo-labels (e.g. after re-clustering) without rebuilding the dataloader."""
        sub = np.asarray(subgroups)
        if len(sub) != len(self.groups):
            raise ValueError(f"set_subgroups: {len(sub)} labels for {len(self.groups)} items")
        old, self.subgroups = self.subgroups, sub
        try:
            self._index()
        except ValueError:
            self.subgroups = old
            self._index()
            raise

    @property
    def batch_size(self) -> int:
        if self.subgroups is None:
            return self.n_groups * self.n_per_group
        return self.n_groups * self.n_subgroups * self.n_per_group

    @property
    def batches_per_epoch(self) -> int:
        """Batches per rank: one pass over the data split across ranks, unless fixed by the user."""
        if self._batches_per_epoch:
            return int(self._batches_per_epoch)
        return max(1, len(self.groups) // (self.batch_size * self._rank_world()[1]))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_once(self, epoch: int, n_batches: int) -> None:
        """The next pass over `epoch` starts after this rank's first `n_batches` batches (a run resumed
        mid-epoch continues the plan instead of replaying its start)."""
        if not 0 <= int(n_batches) <= len(self):
            raise ValueError(f"skip_once: {n_batches} batches to skip, the epoch has {len(self)}")
        self._skip = (int(epoch), int(n_batches)) if n_batches else None

    def _rank_world(self) -> tuple[int, int]:
        if self._rank is not None and self._world is not None:
            return self._rank, self._world
        return _dist_rank_world()

    def epoch_plan(self) -> list[list[int]]:
        """All batches of this epoch (before splitting across ranks); identical on every rank."""
        rng = np.random.default_rng([self.seed, self.epoch])
        _, world = self._rank_world()
        n_total = self.batches_per_epoch * world
        batches = []
        if self.subgroups is None:
            pool = _CyclingPool({g: self.by_group[g] for g in self.eligible}, rng)
            for _ in range(n_total):
                gs = rng.choice(len(self.eligible), size=self.n_groups, replace=False)
                batches.append([i for g in gs for i in pool.take(self.eligible[g], self.n_per_group)])
        else:
            pool = _CyclingPool(dict(self.by_sub), rng)
            for _ in range(n_total):
                gs = rng.choice(len(self.eligible), size=self.n_groups, replace=False)
                batch = []
                for gi in gs:
                    g = self.eligible[gi]
                    subs = rng.choice(len(self.subs_of[g]), size=self.n_subgroups, replace=False)
                    for si in subs:
                        batch.extend(pool.take((g, self.subs_of[g][si]), self.n_per_group))
                batches.append(batch)
        return batches

    def rank_batches(self) -> list[list[int]]:
        """This rank's batches of the epoch plan (every world_size-th batch), as dataset indices."""
        rank, world = self._rank_world()
        return self.epoch_plan()[rank::world]

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        rank, world = self._rank_world()
        sub = self.subgroups
        skip = self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0
        self._skip = None
        for b, batch in enumerate(self.epoch_plan()):
            if b % world == rank and b // world >= skip:
                if sub is None:
                    yield [(i, item_seed(self.seed, self.epoch, b, j)) for j, i in enumerate(batch)]
                else:
                    yield [(i, item_seed(self.seed, self.epoch, b, j), int(sub[i])) for j, i in enumerate(batch)]

    def __len__(self) -> int:
        return self.batches_per_epoch
