"""Is `features=auto` (each fold picks its features and head on its training speakers) as good as the best fixed
choice? evaluate.py with every choice on the same folds, and the paired comparisons.

    python scripts/feature_choice.py data=emodb data.root=/data/emodb --out results/emodb/feature_choice
    python scripts/feature_choice.py data=casia data.root=/data/casia eval.n_folds=4 --out results/casia/feature_choice

Positional arguments are Hydra overrides of configs/evaluate.yaml (the backbone defaults to the pretrained GE2E).
The fixed choices: the SVM and the linear probe on the final embedding, the linear probe and weighted_layers on
every layer's statistics. Writes comparison.json and results.md (the command on top) to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from evaluation.statistics import corrected_t_interval, paired_comparison
from tasks.evaluate import evaluate
from utils.compose import compose_config

CHOICES = [("embedding", ["svm", "linear"]), ("layer_stats", ["linear", "weighted_layers"]), ("auto", ["auto"])]


def run(overrides: list[str], runs: Path) -> dict:
    scores, folds, picks = {}, None, None
    # auto first: its one pass over the audio fills the clip feature cache with the embedding and the layer
    # statistics (lightning_modules/clip_feature_cache.py), which the fixed choices then read back
    for features, heads in sorted(CHOICES, key=lambda c: c[0] != "auto"):
        cfg = compose_config("evaluate.yaml", ["backbone=ge2e", *overrides, f"features={features}",
                                                f"eval.heads=[{','.join(heads)}]", "eval.export.heads=[]",
                                                "eval.verification_analysis=false"], runs / features)
        res = evaluate(cfg)
        names = [f["test_speakers"] for f in res["protocol"]["folds"]]
        if folds is not None and names != folds:
            raise RuntimeError(f"features={features} ran on other folds than the first choice")
        folds = names
        for h in heads:
            scores[f"{features}/{h}"] = {"ua": [f["ua"] for f in res[h]["folds"]],
                                         "ratio": float(np.mean([f["n_test"] / f["n_fit"] for f in res[h]["folds"]]))}
        if features == "auto":
            picks = res["auto"].get("picks")
    scores = {f"{features}/{h}": scores[f"{features}/{h}"] for features, heads in CHOICES for h in heads}
    summary = {}
    for name, s in scores.items():
        ci = corrected_t_interval(s["ua"], s["ratio"], bounds=(0.0, 1.0))
        summary[name] = {"ua": float(np.mean(s["ua"])), "ua_std": float(np.std(s["ua"])),
                         "ua_ci95": None if ci is None else [ci["low"], ci["high"]], "n": len(s["ua"])}
    best_fixed = max((n for n in scores if not n.startswith("auto")), key=lambda n: summary[n]["ua"])
    comparisons = [{"a": "auto/auto", "b": n, **paired_comparison(scores["auto/auto"]["ua"], scores[n]["ua"],
                                                                   test_train_ratio=scores[n]["ratio"])}
                   for n in scores if n != "auto/auto"] if len(folds) > 1 else []
    return {"overrides": overrides, "n_folds": len(folds), "summary": summary, "best_fixed": best_fixed,
            "picks": picks, "comparisons": comparisons, "per_fold_ua": {n: s["ua"] for n, s in scores.items()}}


def markdown(result: dict, command: str) -> str:
    lines = [f"# features=auto against every fixed choice ({result['n_folds']} folds)", "", f"`{command}`", "",
             "| features / head | UA % | UA 95% interval |", "|---|---:|---|"]
    for n, s in result["summary"].items():
        ci = s["ua_ci95"]
        lines.append(f"| {n}{' (best fixed)' if n == result['best_fixed'] else ''} | {100 * s['ua']:.1f} ± "
                     f"{100 * s['ua_std']:.1f} | {f'[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]' if ci else 'n/a'} |")
    lines += ["", f"Picks of auto over the folds: {result['picks']}", ""]
    if result["comparisons"]:
        lines += ["| auto − | mean difference | p (corrected t) | wins / losses / ties | verdict |", "|---|---:|---:|---|---|"]
        for c in result["comparisons"]:
            t = c.get("corrected_t") or {}
            lines.append(f"| {c['b']} | {100 * c['mean_difference']:+.1f} | {t.get('p_value', float('nan')):.3g} | "
                         f"{c['wins_a']} / {c['wins_b']} / {c['ties']} | "
                         f"{'auto better' if c['significant'] and c['mean_difference'] > 0 else 'auto worse' if c['significant'] else 'within the noise'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", required=True, help="where comparison.json and results.md go")
    ap.add_argument("--runs", default=None, help="evaluate.py's run folders (default logs/feature_choice/<out name>)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs) if args.runs else Path(__file__).resolve().parents[1] / "logs" / "feature_choice" / out.name
    result = run(list(args.overrides), runs)
    command = "python scripts/feature_choice.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result, command))
    print(markdown(result, command))
    return result


if __name__ == "__main__":
    main()
