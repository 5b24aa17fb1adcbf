import logging
from collections import Counter

import numpy as np
import pytest

from datamodules.samplers import PKBatchSampler


def indices(batches):
    """Dataset indices of the (index, item_seed[, cluster]) batches a PKBatchSampler yields."""
    return [[item[0] for item in b] for b in batches]


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
    assert {item[1] for batch in a for item in batch}.isdisjoint({item[1] for batch in first for item in batch})


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


def test_each_item_carries_its_cluster_once_subgroups_are_set():
    groups = _labels(6, 12)
    clusters = np.tile(np.repeat(np.arange(3), 4), 6)
    s = PKBatchSampler(groups, n_groups=3, n_per_group=2, seed=0)
    assert all(len(item) == 2 for b in s for item in b)  # P x K: (index, item_seed)
    s.set_subgroups(clusters)
    items = [item for b in s for item in b]
    assert items and all(len(item) == 3 and item[2] == clusters[item[0]] for item in items)
    relabelled = (clusters + 1) % 3  # re-clustering: the next plan carries the new labels
    s.set_subgroups(relabelled)
    assert all(item[2] == relabelled[item[0]] for b in s for item in b)


def test_speakers_too_small_for_a_batch_are_counted_and_reported(caplog):
    groups = np.concatenate([_labels(4, 6), [4], [5, 5, 5]])  # speaker 4 has one clip
    names = [f"corpus:{g:02d}" for g in range(6)]
    with caplog.at_level(logging.WARNING, logger="datamodules.samplers"):
        s = PKBatchSampler(groups, n_groups=3, n_per_group=2, seed=0, group_names=names)
    assert s.excluded_groups == [4] and s.n_excluded_items == 1
    assert 4 not in {groups[i] for b in indices(s) for i in b}
    warning = [r.getMessage() for r in caplog.records if "never sampled" in r.getMessage()]
    assert len(warning) == 1 and "1 of 6 speakers (1 of 28 clips)" in warning[0] and "corpus:04" in warning[0]

    # With clusters: speaker 5 (3 clips, one cluster) cannot give 2 clusters; speaker 4 still cannot either.
    clusters = np.concatenate([np.tile([0, 0, 0, 1, 1, 1], 4), [0], [0, 0, 0]])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.samplers"):
        s.set_subgroups(clusters)
        s.set_subgroups(clusters)  # the same set again: not reported twice
    assert s.excluded_groups == [4, 5] and s.n_excluded_items == 4
    warning = [r.getMessage() for r in caplog.records if "never sampled" in r.getMessage()]
    assert len(warning) == 1 and "2 of 6 speakers (4 of 28 clips)" in warning[0] and "corpus:05" in warning[0]
