"""Fit every classifier head on every fold and write the scores: the one path by which the
framework's SER numbers are produced, so folds, seeds, label order, what was left out, where the
embeddings came from and the uncertainty of every mean are all recorded with them."""
from __future__ import annotations

import inspect
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from evaluation.balancing import balance_training, check_balancing
from evaluation.embeddings_io import EmbeddingSet
from evaluation.heads import SVMHead, head_class, head_params, make_head
from evaluation.metrics import SCALARS, compute_metrics, summarize_folds
from evaluation.protocols import Fold, FoldPlan, plan_folds
from evaluation.provenance import Provenance, check_leakage
from evaluation.report import (flatten_scalars, plot_confusion, print_notes, print_table, table_title,
                               write_metrics_csv, write_metrics_json)
from evaluation.statistics import INTERVAL_METHOD, corrected_t_interval

log = logging.getLogger(__name__)

DEFAULT_HEADS = ("svm", "sad_first", "linear", "detection")


def _check_class_order(emb_set: EmbeddingSet, class_order: Sequence[str] | None) -> list[str]:
    present = emb_set.classes
    if class_order is None:
        return present
    class_order = [str(c) for c in class_order]
    if len(set(class_order)) != len(class_order):
        raise ValueError(f"class_order has duplicates: {class_order}")
    extra = sorted(set(present) - set(class_order))
    if extra:
        raise ValueError(f"labels {extra} are in the set but not in class_order {class_order}; "
                         "drop them first with evaluation.embeddings_io.filter_labels")
    missing = [c for c in class_order if c not in present]
    if missing:
        raise ValueError(f"class_order label(s) {missing} are not in the set (present: {present})")
    return class_order


def _check_head_kwargs(heads: Sequence[str], head_kwargs: dict | None) -> dict[str, dict]:
    head_kwargs = dict(head_kwargs or {})
    for name in heads:
        head_params(name)  # unknown head -> clear error before any fitting
    stray = sorted(set(head_kwargs) - set(heads))
    if stray:
        raise ValueError(f"head_kwargs given for head(s) {stray} that are not evaluated (heads: {list(heads)})")
    for name, kw in head_kwargs.items():
        make_head(name, **kw)  # validates argument names now rather than after hours of fitting
    out = {name: dict(head_kwargs.get(name, {})) for name in heads}
    try:
        json.dumps(out)  # recorded in metrics.json: fail now, not after fitting
    except TypeError as e:
        raise TypeError(f"head_kwargs must hold plain JSON values ({e}); convert Hydra configs with "
                        "OmegaConf.to_container(cfg, resolve=True)") from e
    return out


def _fit_fold(k: int, fold: Fold, X: np.ndarray, y: np.ndarray, speakers: np.ndarray, heads: Sequence[str],
              head_kwargs: dict[str, dict], balancing: str, seed: int, class_order: list[str],
              blas_threads: int | None) -> dict[str, dict]:
    """Scores of every head on one fold (a pure function of its inputs, so folds can run in parallel)."""
    with threadpool_limits(limits=blas_threads):
        return _fit_fold_heads(k, fold, X, y, speakers, heads, head_kwargs, balancing, seed, class_order)


def _fit_fold_heads(k: int, fold: Fold, X: np.ndarray, y: np.ndarray, speakers: np.ndarray, heads: Sequence[str],
                    head_kwargs: dict[str, dict], balancing: str, seed: int, class_order: list[str]) -> dict[str, dict]:
    train_idx, class_weight = balance_training(y[fold.train_idx], balancing, seed=seed + k)
    train_idx = fold.train_idx[train_idx]
    out = {}
    for name in heads:
        kwargs = {"random_state": seed, **head_kwargs[name]}
        if class_weight is not None:
            kwargs["class_weight"] = class_weight
        head = make_head(name, **kwargs)
        t0 = time.perf_counter()
        try:
            head.fit(X[train_idx], y[train_idx], groups=speakers[train_idx])
            fit_s = time.perf_counter() - t0
            pred = head.predict(X[fold.test_idx])
        except ValueError as e:
            raise ValueError(f"head {name!r} on fold {fold.name!r}: {e}") from e
        labels = head.scoring_order(class_order)
        m = compute_metrics(head.scoring_labels(y[fold.test_idx]), pred, labels)
        m.pop("n")
        entry = {**fold.describe(), "n_fit": int(len(train_idx)), **m, "fit_seconds": round(fit_s, 3)}
        if balancing == "undersample":
            entry["undersample_seed"] = seed + k
        if getattr(head, "uses_nystroem_", False) or getattr(getattr(head, "stage1_", None), "uses_nystroem_", False):
            entry["nystroem"] = True
        if hasattr(head, "best_params_"):
            entry["best_params"] = head.best_params_
        if hasattr(head, "layer_weight_table"):
            entry["layer_weights"] = head.layer_weight_table()
        out[name] = entry
    return out


def _nystroem_decisions(heads: Sequence[str], kwargs_by_head: dict[str, dict], folds: Sequence[Fold], y: np.ndarray,
                        balancing: str, seed: int) -> dict[str, dict]:
    """One Nystroem-or-exact decision per SVM head for the whole evaluation, from its largest training part.

    Deciding per fit let folds (and grid-search inner folds) of one evaluation fit different models.
    """
    n_fit = max(len(balance_training(y[f.train_idx], balancing, seed=seed + k)[0]) for k, f in enumerate(folds))
    defaults = inspect.signature(SVMHead.__init__).parameters
    out = {}
    for name in heads:
        params = head_class(name).svm_settings(kwargs_by_head[name])
        if params is None:  # no SVM in this head
            continue
        threshold = int(params.get("nystroem_threshold", defaults["nystroem_threshold"].default))
        forced = params.get("use_nystroem")
        used = bool(forced) if forced is not None else n_fit > threshold
        out[name] = {"used": used, "largest_training_part": int(n_fit), "threshold": threshold,
                     "decided_by": "use_nystroem" if forced is not None else "largest training part > threshold"}
        if used:
            log.warning("%s: the largest training part has %d rows (nystroem_threshold=%d): every fit of this "
                        "evaluation uses the Nystroem approximation of the RBF kernel", name, n_fit, threshold)
    return out


def with_nystroem(name: str, kwargs: dict, decision: dict | None) -> dict:
    return kwargs if decision is None else head_class(name).with_nystroem(kwargs, decision["used"])


def _test_train_ratio(folds: Sequence[Fold]) -> float:
    return float(np.mean([len(f.test_idx) / len(f.train_idx) for f in folds]))


def _summarize_head(fold_entries: list[dict], labels: list[str], plan: FoldPlan, ratio: float) -> dict:
    out = summarize_folds(fold_entries, labels)
    for key in SCALARS:
        ci = corrected_t_interval([f[key] for f in fold_entries], ratio, bounds=(0.0, 1.0))
        out[f"{key}_ci95"] = None if ci is None else [ci["low"], ci["high"]]
    out["n_scores"] = len(fold_entries)
    picks = [f["best_params"]["pick"] for f in fold_entries if isinstance(f.get("best_params"), dict) and "pick" in f["best_params"]]
    if picks:  # head auto: what the folds chose on their training speakers
        out["picks"] = dict(Counter(picks).most_common())
    if all("layer_weights" in f for f in fold_entries) and fold_entries:
        names = list(fold_entries[0]["layer_weights"])
        w = np.array([[f["layer_weights"][n] for n in names] for f in fold_entries])
        out["layer_weights"] = {"mean": dict(zip(names, w.mean(0).tolist())), "std": dict(zip(names, w.std(0).tolist())),
                                "note": "softmax layer weights learnt on each fold's training speakers; mean and std "
                                        "over the fold scores"}
    if plan.repeats > 1:
        out["per_repeat"] = [{"repeat": r, **{k: float(np.mean([f[k] for f in fold_entries if f["repeat"] == r]))
                                              for k in SCALARS}} for r in range(plan.repeats)]
    return out


def evaluation_labels(protocol_block: dict) -> list[str]:
    """Caveats that must travel with every printed or written figure (empty: a clean figure)."""
    labels = []
    if protocol_block.get("transductive"):
        labels.append("TRANSDUCTIVE")
    if not protocol_block.get("speaker_independent", True):
        labels.append("NOT speaker-independent")
    if (protocol_block.get("leakage") or {}).get("status") == "unknown":
        labels.append("provenance unknown")
    return labels


def run_evaluation(
    emb_set: EmbeddingSet,
    heads: Sequence[str] = DEFAULT_HEADS,
    protocol: str = "auto",
    n_folds: int = 5,
    seed: int = 0,
    balancing: str = "none",
    head_kwargs: dict | None = None,
    out_dir: str | Path | None = None,
    class_order: Sequence[str] | None = None,
    logger_fn: Callable[[dict], None] | None = None,
    test_speakers: Sequence[str] | None = None,
    n_jobs: int = 1,
    blas_threads: int | None = 1,
    verbose: bool = True,
    repeats: int = 1,
    allow_speaker_overlap: bool = False,
    unknown_speakers_train: bool | None = None,
    provenance: Provenance | None = None,
    allow_transductive: bool = False,
    data_report: dict | None = None,
    plan: FoldPlan | None = None,
    features: dict | None = None,
) -> dict:
    """Evaluate `heads` under `protocol`; return (and write to `out_dir` unless None) the results.

    Result: {"protocol": {...}, "data": {...}, <head>: {wa, ua, macro_f1, weighted_f1 (means over
    folds x repeats, fractions), *_std, *_ci95 ([low, high], see evaluation.statistics), per_class_f1,
    confusion (summed), labels, per_repeat, folds: [...]}}.
    head_kwargs: {head name: constructor kwargs}, e.g. {"svm": {"C": 10}, "sad_first": {"svm": {"C": 10}}}.
    balancing: "none" | "undersample" (seeded with seed + fold index) | "class_weight".
    repeats: k-fold repeated with seeds seed, seed + 1, ... (other protocols are deterministic: once).
    allow_speaker_overlap / unknown_speakers_train: see evaluation.protocols.plan_folds.
    provenance: which speakers shaped the encoder (evaluation.provenance); folds testing on them
        are refused unless allow_transductive, and then labelled TRANSDUCTIVE everywhere.
    data_report: the corpus report copied into results["data"] (the evaluation adds what it left out).
    plan: precomputed folds (e.g. to score two embedding sets on identical folds).
    features: what the columns are (evaluation/layer_features.py; default: the set's own `features`,
        else final embeddings), recorded in results["protocol"]["features"].
    n_jobs: folds fitted in parallel processes (joblib); results do not depend on it.
    blas_threads: BLAS threads while fitting (None = library default). 1 by default: these matrices
        are small, and multi-threaded OpenBLAS on a busy 2-core machine was measured ~10x slower
        (logistic regression on 3200x256: 3.8 s vs 0.4 s single-threaded).
    """
    emb_set.validate()
    heads = list(heads)
    if not heads:
        raise ValueError(f"no heads to evaluate; choose from {list(DEFAULT_HEADS)}")
    if len(set(heads)) != len(heads):
        raise ValueError(f"heads listed twice: {heads}")
    check_balancing(balancing)
    kwargs_by_head = _check_head_kwargs(heads, head_kwargs)
    class_order = _check_class_order(emb_set, class_order)
    if plan is None:
        plan = plan_folds(emb_set, protocol, n_folds=n_folds, seed=seed, test_speakers=test_speakers, repeats=repeats,
                          allow_speaker_overlap=allow_speaker_overlap, unknown_speakers_train=unknown_speakers_train)
    folds = plan.folds
    leakage = check_leakage([f.test_speakers for f in folds], provenance, allow_transductive)
    X, y, speakers = emb_set.embeddings, emb_set.emotion, emb_set.speaker
    nystroem = _nystroem_decisions(heads, kwargs_by_head, folds, y, balancing, seed)
    fit_kwargs = {name: with_nystroem(name, kwargs_by_head[name], nystroem.get(name)) for name in heads}

    t0 = time.perf_counter()
    args = [(k, fold, X, y, speakers, heads, fit_kwargs, balancing, seed, class_order, blas_threads)
            for k, fold in enumerate(folds)]
    if n_jobs == 1 or len(folds) == 1:
        per_fold = [_fit_fold(*a) for a in args]
    else:
        from joblib import Parallel, delayed

        per_fold = Parallel(n_jobs=n_jobs)(delayed(_fit_fold)(*a) for a in args)
    elapsed = time.perf_counter() - t0

    counts = Counter(y.tolist())
    ratio = _test_train_ratio(folds)
    protocol_block = {
        **plan.describe(),
        "n_folds": len(folds),
        "seed": seed,
        "fold_seeds": [seed + r for r in range(plan.repeats)] if plan.protocol == "kfold" else None,
        "balancing": balancing,
        "class_order": class_order,
        "counts": {c: int(counts[c]) for c in class_order},
        "n_rows": len(emb_set),
        "n_speakers": int(len(np.unique(speakers))),
        "embedding_dim": int(X.shape[1]),
        "heads": heads,
        "head_kwargs": kwargs_by_head,
        "nystroem": nystroem,
        "interval": {"confidence": 0.95, "method": INTERVAL_METHOD, "test_train_ratio": ratio,
                     "n_scores": len(folds)},
        "provenance": None if provenance is None else provenance.summary(),
        "leakage": leakage,
        "transductive": leakage["transductive"],
        "folds": [f.describe() for f in folds],
        "n_jobs": n_jobs,
        "blas_threads": blas_threads,
        "seconds": round(elapsed, 2),
    }
    from evaluation.layer_features import embedding_description

    protocol_block["features"] = dict(features or emb_set.features or embedding_description(X.shape[1]))
    protocol_block["labels"] = evaluation_labels(protocol_block)
    protocol_block["evaluation"] = "; ".join(protocol_block["labels"]) or "speaker-independent"
    data = dict(data_report or {})
    data["left_out_by_evaluation"] = {**data.get("left_out_by_evaluation", {}), **plan.left_out}
    data["n_rows_evaluated"] = len(emb_set)
    results: dict = {"protocol": protocol_block, "data": data}
    for name in heads:
        fold_entries = [pf[name] for pf in per_fold]
        labels = fold_entries[0]["per_class_f1"].keys()
        results[name] = {**_summarize_head(fold_entries, list(labels), plan, ratio), "folds": fold_entries}

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics_json(results, out_dir / "metrics.json")
        write_metrics_csv(results, out_dir / "metrics.csv")
        for name in heads:
            plot_confusion(results[name]["confusion"], results[name]["labels"], out_dir / f"confusion_{name}.png",
                           title=f"{name} ({table_title(results, short=True)}, summed)")
    if verbose:
        print_table(results, title=table_title(results))
        print_notes(results)
    if logger_fn is not None:
        logger_fn(flatten_scalars(results))
    return results
