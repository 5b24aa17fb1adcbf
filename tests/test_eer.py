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


def test_eer_of_tied_scores_does_not_depend_on_trial_order():
    # Every score tied: no threshold separates anything, so FAR and FRR cross at 0.5 whatever the order.
    assert compute_eer([1, 1, 1, 1], [1, 1, 0, 0]) == pytest.approx(0.5)
    assert compute_eer([1, 1, 1, 1], [0, 0, 1, 1]) == pytest.approx(0.5)
    # fully collapsed embeddings: every cosine score is 1.0
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=301)
    assert compute_eer(np.ones(301), labels) == pytest.approx(0.5)


def test_eer_is_invariant_to_permuting_trials_with_ties():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=400), 1)  # many ties
    labels = (scores + rng.normal(scale=1.0, size=400) > 0).astype(int)
    reference = compute_eer(scores, labels)
    for seed in range(10):
        perm = np.random.default_rng(seed).permutation(400)
        assert compute_eer(scores[perm], labels[perm]) == pytest.approx(reference, abs=1e-12)
    assert 0.0 < reference < 0.5


def test_eer_with_partly_tied_groups_is_the_roc_crossing():
    # targets {0.9, 0.5, 0.5}, non-targets {0.5, 0.5, 0.1}: the tied block at 0.5 takes the ROC from
    # (FPR 0, FNR 2/3) straight to (FPR 2/3, FNR 0); FNR = FPR on that segment at 1/3.
    assert compute_eer([0.9, 0.5, 0.5, 0.5, 0.5, 0.1], [1, 1, 1, 0, 0, 0]) == pytest.approx(1 / 3)
    assert compute_eer([0.5, 0.5, 0.1, 0.9, 0.5, 0.5], [0, 0, 0, 1, 1, 1]) == pytest.approx(1 / 3)
