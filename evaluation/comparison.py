"""Two embedding sets scored on identical folds: per head and metric, the paired difference and
its uncertainty (evaluation.statistics.paired_comparison), written to comparison.json and a table."""
from __future__ import annotations

import json
from pathlib import Path

from evaluation.metrics import SCALARS
from evaluation.report import head_names
from evaluation.statistics import paired_comparison


def compare_results(results_a: dict, results_b: dict, out_dir: str | Path | None = None, name_a: str = "A",
                    name_b: str = "B", verbose: bool = True) -> dict:
    """Pair the per-fold scores of two `run_evaluation` results made on the same folds."""
    folds_a = [(f["name"], tuple(f["test_speakers"])) for f in results_a["protocol"]["folds"]]
    folds_b = [(f["name"], tuple(f["test_speakers"])) for f in results_b["protocol"]["folds"]]
    if folds_a != folds_b:
        raise ValueError("compare_results: the two results were not made on the same folds")
    if len(folds_a) < 2:
        raise ValueError(f"a paired comparison needs at least 2 folds; protocol {results_a['protocol']['name']!r} "
                         "has 1 (use eval.protocol=kfold)")
    ratio = results_a["protocol"]["interval"]["test_train_ratio"]
    out: dict = {"a": name_a, "b": name_b, "protocol": results_a["protocol"]["name"],
                 "n_folds": len(folds_a), "repeats": results_a["protocol"].get("repeats", 1),
                 "labels": sorted(set(results_a["protocol"].get("labels", [])) | set(results_b["protocol"].get("labels", []))),
                 "heads": {}}
    for head in head_names(results_a):
        if head not in results_b:
            continue
        out["heads"][head] = {
            metric: {**paired_comparison([f[metric] for f in results_a[head]["folds"]],
                                         [f[metric] for f in results_b[head]["folds"]], test_train_ratio=ratio),
                     "per_fold_a": [f[metric] for f in results_a[head]["folds"]],
                     "per_fold_b": [f[metric] for f in results_b[head]["folds"]]}
            for metric in SCALARS}
    if out_dir is not None:
        path = Path(out_dir) / "comparison.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        tmp.replace(path)
    if verbose:
        print_comparison(out)
    return out


def format_comparison(comparison: dict, metric: str = "ua") -> list[list[str]]:
    rows = [["head", f"A {metric.upper()} %", f"B {metric.upper()} %", "A - B", "95% CI (corrected t)",
             "p corrected t", "p Wilcoxon", "A wins / B wins", "verdict"]]
    for head, by_metric in comparison["heads"].items():
        c = by_metric[metric]
        t = c["corrected_t"]
        rows.append([head, f"{100 * c['mean_a']:.2f}", f"{100 * c['mean_b']:.2f}", f"{100 * c['mean_difference']:+.2f}",
                     f"[{100 * t['low']:+.2f}, {100 * t['high']:+.2f}]" if t else "n/a",
                     f"{t['p_value']:.3g}" if t else "n/a", f"{c['wilcoxon']['p_value']:.3g}",
                     f"{c['wins_a']} / {c['wins_b']}", c["verdict"]])
    return rows


def print_comparison(comparison: dict, metric: str = "ua") -> None:
    rows = format_comparison(comparison, metric)
    tags = f"[{' | '.join(comparison['labels'])}] " if comparison["labels"] else ""
    print(f"{tags}paired comparison on identical folds ({comparison['protocol']}, {comparison['n_folds']} fold scores): "
          f"A = {comparison['a']}, B = {comparison['b']}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
