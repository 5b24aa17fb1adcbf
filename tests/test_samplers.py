from collections import Counter

import numpy as np
import pytest

from datamodules.samplers import PKBatchSampler


def indices(batches):
    """Dataset indices of the (index, item_seed) batches a PKBatchSampler yields."""
    return [[i for i, _ in b] for b in batches]


def _labels(n_spk=10, per=6):
    return np.repeat(np.arange(n_spk), per)


def test_pk_batches_have_p_speakers_with_k_distinct_clips_each():
    groups = _labels()
    s = PKBatchSampler(groups, n_groups=4, n_per_group=3, seed=1)
    batches = indices(s)
    assert len(batches) == len(s) == len(groups) // 12
    for b in batches:
        assert len(b) == 12 and len(set(b)) == 12
        counts = Counter(groups[b])
        assert len(counts) == 4 and set(counts.values()) == {3}


def test_epochs_differ_and_are_reproducible():
    groups = _labels()
    a = PKBatchSampler(groups, 4, 3, seed=1)
    b = PKBatchSampler(groups, 4, 3, seed=1)
    first = list(a)
    assert first == list(b)  # same indices and the same per-item crop seeds
    a.set_epoch(1)
    assert indices(a) != indices(first)
    assert {seed for batch in a for _, seed in batch}.isdisjoint({seed for batch in first for _, seed in batch})


def test_ddp_ranks_get_disjoint_batches_of_equal_count():
    groups = _labels(12, 8)
    ranks = [indices(PKBatchSampler(groups, 4, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    assert not {tuple(b) for b in ranks[0]} & {tuple(b) for b in ranks[1]}
    # One epoch over both ranks touches each clip at most ceil(uses) times: no clip is reused before its speaker's pool empties.
    used = Counter(i for r in ranks for b in r for i in b)
    assert max(used.values()) <= 2


def test_subgroup_batches_hold_positives_and_same_speaker_negatives():
    groups = _labels(6, 12)
    clusters = np.tile(np.repeat(np.arange(3), 4), 6)  # 3 clusters of 4 clips per speaker
    s = PKBatchSampler(groups, n_groups=3, n_per_group=2, subgroups=clusters, n_subgroups=2, seed=0)
    for b in indices(s):
        assert len(b) == 3 * 2 * 2
        for i in b:
            same_cluster = [j for j in b if j != i and groups[j] == groups[i] and clusters[j] == clusters[i]]
            same_spk_other = [j for j in b if groups[j] == groups[i] and clusters[j] != clusters[i]]
            assert same_cluster, "every anchor needs a positive"
            assert same_spk_other, "every anchor needs a same-speaker negative"


def test_too_few_speakers_is_a_clear_error():
    with pytest.raises(ValueError, match="n_speakers"):
        PKBatchSampler(_labels(3, 4), n_groups=5, n_per_group=2)
    clusters = np.zeros(12, dtype=int)  # one cluster per speaker: no same-speaker negatives possible
    with pytest.raises(ValueError, match="clusters"):
        PKBatchSampler(_labels(3, 4), n_groups=2, n_per_group=2, subgroups=clusters, n_subgroups=2)


def test_lightning_reaches_set_epoch_through_the_batch_samplers_sampler():
    """Lightning calls set_epoch on dataloader.sampler and batch_sampler.sampler only (never on the
    batch sampler): the relay must forward it, or every epoch replays epoch 0's plan."""
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    s = PKBatchSampler(_labels(), 4, 3, seed=1)
    loader = DataLoader(list(range(len(_labels()))), batch_sampler=s)
    epoch0 = indices(s)
    _set_sampler_epoch(loader, 1)
    assert s.epoch == 1 and indices(s) != epoch0
    assert sorted(s.sampler) == sorted(i for b in indices(s) for i in b)
