"""What crossval.py writes: per pipeline the fold scores' mean and interval, the paired comparisons with the
baseline on the same folds, a markdown report and a plot of the paired per-fold lines.

Entries are named `<side>/<features>/<head>` (`baseline/layer_stats/linear`, `trained/embedding/svm`,
`reference-ge2e/layer_stats/linear`) or `trained/classifier` (a model that classifies emotions itself, e.g.
ser_finetune). Each trained entry is compared with the baseline and reference entries of the same probe;
the classifier with every one of them, including `baseline[fit]/...`: the baseline probes fitted on the rows
the trained model was fitted on (the fold's training speakers less the validation ones); and each baseline
entry with the reference entries of the same probe (what a warm start brought). Without test scores (`crossval.score_test=false`) the report gives the
validation speakers' selection scores only.
The corrected resampled t-test uses n_test / n_fit, the rows the compared models were fitted on (the
smaller of the two, the cautious choice: its interval is the wider). A difference the test does not
separate from zero is reported as noise, whatever its sign.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluation.statistics import INTERVAL_METHOD, corrected_t_interval, paired_comparison

METRICS = ("ua", "wa", "macro_f1")


def entry_names(folds: Sequence[dict]) -> list[str]:
    """Entries present in every fold, baselines first, in the order of the first fold."""
    common = [k for k in folds[0]["scores"] if all(k in f["scores"] for f in folds)]
    return [k for k in common if is_baseline(k)] + [k for k in common if not is_baseline(k)]


def is_baseline(name: str) -> bool:
    """`baseline/...` (the encoder training started from) and `reference-<backbone>/...` (one as configured)."""
    return name.startswith("baseline") or name.startswith("reference-")


def summarize(folds: Sequence[dict]) -> dict:
    out = {}
    for name in entry_names(folds):
        rows = [f["scores"][name] for f in folds]
        ratio = float(np.mean([r["n_test"] / r["n_fit"] for r in rows]))
        entry = {"n_scores": len(rows), "test_train_ratio": ratio}
        for m in METRICS:
            v = np.array([r[m] for r in rows], dtype=float)
            ci = corrected_t_interval(v, ratio, bounds=(0.0, 1.0))
            entry[m], entry[f"{m}_std"] = float(v.mean()), float(v.std())
            entry[f"{m}_ci95"] = None if ci is None else [ci["low"], ci["high"]]
        out[name] = entry
    return out


def comparison_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    baselines = [n for n in names if is_baseline(n)]
    pairs = []
    for n in names:
        if not n.startswith("trained/"):
            continue
        probe = n.split("/", 1)[1]
        # a probe on the trained encoder is fitted on all training rows, like baseline/ and reference-*/ probes;
        # baseline[fit]/ probes see only the rows the trained model fitted (its classifier's like for like)
        same = [b for b in baselines if b.split("/", 1)[1] == probe and not b.startswith("baseline[fit]")]
        pairs += [(n, b) for b in (same or baselines)]
    # the starting encoder against the references on the same probe: what a warm start (model.init_from, a
    # chained stage) brought before this run trained anything
    for n in names:
        if n.startswith("baseline/"):
            probe = n.split("/", 1)[1]
            pairs += [(n, r) for r in baselines if r.startswith("reference-") and r.split("/", 1)[1] == probe]
    return pairs


def compare(folds: Sequence[dict]) -> list[dict]:
    if len(folds) < 2:
        return []
    out = []
    for a, b in comparison_pairs(entry_names(folds)):
        ra, rb = [f["scores"][a] for f in folds], [f["scores"][b] for f in folds]
        ratio = float(np.mean([x["n_test"] / min(x["n_fit"], y["n_fit"]) for x, y in zip(ra, rb)]))
        c = paired_comparison([x["ua"] for x in ra], [y["ua"] for y in rb], test_train_ratio=ratio)
        c.update({"a": a, "b": b, "metric": "ua", "per_fold_difference": [x["ua"] - y["ua"] for x, y in zip(ra, rb)],
                  "folds": [f["fold"]["name"] for f in folds]})
        out.append(c)
    return out


def validation_summary(folds: Sequence[dict]) -> dict | None:
    """Mean and spread of the folds' selection scores (validation speakers only: what hyper-parameters are chosen on)."""
    v = [f["selected_score"] for f in folds if f.get("selected_score") is not None]
    if not v:
        return None
    return {"metric": folds[0].get("selected_on"), "mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}


def assemble(folds: Sequence[dict], settings: dict) -> dict:
    folds = sorted(folds, key=lambda f: (f["fold"]["repeat"], f["fold"]["name"]))
    labels = sorted({lab for f in folds for lab in f.get("labels", [])})
    scored = [f for f in folds if f["scores"]]
    return {"settings": settings, "labels": labels, "interval": INTERVAL_METHOD,
            "validation": validation_summary(folds), "summary": summarize(scored) if scored else {},
            "comparisons": compare(scored), "folds": list(folds)}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def markdown(result: dict) -> str:
    s = result["settings"]
    plan = s["plan"]
    labels = result.get("labels") or []
    lines = [f"# {s['experiment']} on {s['corpus']}: trained vs the encoder it starts from", "",
             f"`{s['command']}`", "",
             f"{len(result['folds'])} speaker-independent folds ({plan['folds_per_repeat']} folds x {plan['repeats']} "
             f"repeat(s), fold seeds from {s['seed']}; the plan of evaluate.py){'; ' + '; '.join(plan['notes']) if plan.get('notes') else ''}. "
             f"Each fold trains on its training speakers ({s['val_speakers']} of them validate), and is scored on its "
             "test speakers, never seen." + (f" **{', '.join(labels)}**." if labels else ""), "",
             ]
    v = result.get("validation")
    if v:
        lines += [f"Selection on the validation speakers: {v['metric']} {100 * v['mean']:.1f} ± {100 * v['std']:.1f} "
                  f"(mean ± std over {v['n']} folds).", ""]
    if not result["summary"]:
        return "\n".join(lines + ["Test speakers not scored (crossval.score_test=false)."]) + "\n"
    lines += ["| pipeline | UA % | UA 95% interval | WA % | WA 95% interval | macro-F1 % |", "|---|---:|---|---:|---|---:|"]
    for name, e in result["summary"].items():
        ua_ci, wa_ci = e.get("ua_ci95"), e.get("wa_ci95")
        lines.append(f"| {name} | {_pct(e['ua'])} ± {_pct(e['ua_std'])} | "
                     f"{f'[{_pct(ua_ci[0])}, {_pct(ua_ci[1])}]' if ua_ci else 'n/a'} | {_pct(e['wa'])} ± {_pct(e['wa_std'])} | "
                     f"{f'[{_pct(wa_ci[0])}, {_pct(wa_ci[1])}]' if wa_ci else 'n/a'} | {_pct(e['macro_f1'])} |")
    if result["comparisons"]:
        lines += ["", "Paired over the same folds (UA, A − B; corrected resampled t with n_test / n_fit, Wilcoxon "
                      "signed-rank):", "",
                  "| A | B | mean difference | 95% interval (corrected t) | p (corrected t) | p (Wilcoxon) | wins / losses / ties | verdict |",
                  "|---|---|---:|---|---:|---:|---|---|"]
        for c in result["comparisons"]:
            t = c.get("corrected_t") or {}
            verdict = ("A better (p < 0.05)" if c["significant"] and c["mean_difference"] > 0 else
                       "B better (p < 0.05)" if c["significant"] else "within the noise")
            lines.append(f"| {c['a']} | {c['b']} | {100 * c['mean_difference']:+.1f} | "
                         f"[{100 * t.get('low', np.nan):+.1f}, {100 * t.get('high', np.nan):+.1f}] | "
                         f"{t.get('p_value', np.nan):.3g} | {c['wilcoxon']['p_value']:.3g} | "
                         f"{c['wins_a']} / {c['wins_b']} / {c['ties']} | {verdict} |")
    names = list(result["summary"])
    lines += ["", "| fold | test speakers | " + " | ".join(f"{n} UA" for n in names) + " | epochs | minutes |",
              "|---|---|" + "---:|" * len(names) + "---:|---:|"]
    for f in result["folds"]:
        uas = " | ".join(_pct(f["scores"][n]["ua"]) for n in names)
        lines.append(f"| {f['fold']['name']} | {', '.join(f['fold']['test_speakers'])} | {uas} | "
                     f"{f.get('epochs_run', 'n/a')} | {f.get('seconds', 0) / 60:.1f} |")
    return "\n".join(lines) + "\n"


def plot_paired(result: dict, path: str | Path) -> Path | None:
    """One panel per comparison: each fold a line from B's UA to A's, the means in black."""
    comps = result["comparisons"]
    if not comps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(comps)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.6, 3.8), squeeze=False)
    for ax, c in zip(axes[0], comps):
        a = np.array([f["scores"][c["a"]]["ua"] for f in result["folds"]]) * 100
        b = np.array([f["scores"][c["b"]]["ua"] for f in result["folds"]]) * 100
        for x, y in zip(b, a):
            ax.plot([0, 1], [x, y], color="tab:green" if y > x else "tab:red" if y < x else "grey", alpha=0.5, lw=1)
        ax.plot([0, 1], [b.mean(), a.mean()], color="black", lw=2.5, marker="o")
        p = (c.get("corrected_t") or {}).get("p_value", np.nan)
        ax.set_title(f"{100 * c['mean_difference']:+.1f} UA, p = {p:.2g}\n{c['wins_a']} won / {c['wins_b']} lost", fontsize=9)
        ax.set_xticks([0, 1], [c["b"].replace("/", "\n", 1), c["a"].replace("/", "\n", 1)], fontsize=7)
        ax.set_xlim(-0.3, 1.3)
        ax.set_ylabel("UA % (test speakers)")
        ax.grid(alpha=0.3)
    s = result["settings"]
    fig.suptitle(f"{s['experiment']} on {s['corpus']}: {len(result['folds'])} paired folds", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"comparison": out / "comparison.json", "results": out / "results.md"}
    tmp = files["comparison"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(files["comparison"])
    files["results"].write_text(markdown(result))
    png = plot_paired(result, out / "paired_folds.png")
    if png is not None:
        files["plot"] = png
    return files


def flat_scalars(result: dict, prefix: str = "crossval") -> dict[str, float]:
    """Summary and comparisons as flat scalars for loggers."""
    out = {}
    for name, e in result["summary"].items():
        for m in METRICS:
            out[f"{prefix}/{name}/{m}"] = e[m]
    for c in result["comparisons"]:
        key = f"{prefix}/{c['a']}-vs-{c['b']}"
        out[f"{key}/ua_difference"] = c["mean_difference"]
        if c.get("corrected_t"):
            out[f"{key}/p_corrected_t"] = c["corrected_t"]["p_value"]
    return out
