"""The report's pairs: what a trained model is compared with, and what its starting encoder is compared with."""
from evaluation.crossval_report import comparison_pairs


def test_a_warm_started_baseline_is_compared_with_the_reference_encoders():
    names = ["baseline/layer_stats/linear", "baseline/embedding/svm", "baseline[fit]/layer_stats/linear",
             "reference-ge2e/layer_stats/linear", "reference-ge2e/embedding/svm",
             "trained/layer_stats/linear", "trained/embedding/svm", "trained/classifier"]
    pairs = comparison_pairs(names)
    # the trained model against its start and the references, probe by probe
    assert ("trained/layer_stats/linear", "baseline/layer_stats/linear") in pairs
    assert ("trained/layer_stats/linear", "reference-ge2e/layer_stats/linear") in pairs
    assert ("trained/classifier", "baseline[fit]/layer_stats/linear") in pairs
    # the start itself (e.g. a model.init_from checkpoint trained on other corpora) against the references:
    # what the warm start brought before this run trained anything
    assert ("baseline/layer_stats/linear", "reference-ge2e/layer_stats/linear") in pairs
    assert ("baseline/embedding/svm", "reference-ge2e/embedding/svm") in pairs
    assert ("baseline/layer_stats/linear", "reference-ge2e/embedding/svm") not in pairs  # other probes are not paired
    assert not any(a.startswith("reference-") or a.startswith("baseline[fit]") for a, _ in pairs)
    assert len(pairs) == len(set(pairs))


def test_without_references_only_the_trained_entries_are_paired():
    pairs = comparison_pairs(["baseline/layer_stats/linear", "trained/layer_stats/linear"])
    assert pairs == [("trained/layer_stats/linear", "baseline/layer_stats/linear")]
