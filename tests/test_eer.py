import numpy as np
import pytest

from evaluation.eer import compute_eer, pairwise_trials


def test_eer_of_separable_and_inverted_scores():
    labels = np.array([1, 1, 1, 0, 0, 0])
    assert compute_eer([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], labels) == 0.0
    assert compute_eer([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], labels) == 1.0


def test_eer_with_one_swapped_pair():
    # 4 targets, 4 non-targets; one target below one non-target -> FAR = FRR = 1/4 at the crossing.
    scores = [0.9, 0.8, 0.7, 0.4, 0.5, 0.3, 0.2, 0.1]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    assert compute_eer(scores, labels) == pytest.approx(0.25)


def test_eer_needs_both_trial_kinds():
    with pytest.raises(ValueError, match="non-target"):
        compute_eer([0.1, 0.2], [1, 1])


def test_sampled_pairs_are_distinct_valid_and_scored_like_the_full_set():
    rng = np.random.default_rng(0)
    emb, spk = rng.normal(size=(60, 8)), np.repeat(np.arange(12), 5)
    s_all, l_all, i_all, j_all = pairwise_trials(emb, spk)
    assert len(i_all) == 60 * 59 // 2
    s, l, i, j = pairwise_trials(emb, spk, max_pairs=500, seed=3)
    assert len(set(zip(i.tolist(), j.tolist()))) == 500 and (i < j).all() and (j < 60).all()
    lookup = {(a, b): (v, t) for a, b, v, t in zip(i_all, j_all, s_all, l_all)}
    for a, b, v, t in zip(i, j, s, l):
        assert lookup[(a, b)][0] == pytest.approx(v, abs=1e-5) and lookup[(a, b)][1] == t
