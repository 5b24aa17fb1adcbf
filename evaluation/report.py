"""Writing evaluation results: metrics.json (everything), metrics.csv (one row per head x fold
plus mean / std / 95% interval rows, for spreadsheets), confusion PNGs, a console table and flat
scalars for loggers. A figure with a caveat (transductive, shared speakers, unknown provenance)
carries it in every one of them: the table title, a csv column and the loggers' key prefix."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluation.metrics import SCALARS

CSV_COLUMNS = ("head", "fold", "repeat", "n_train", "n_test", *SCALARS, "evaluation")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_metrics_json(results: dict, path: str | Path) -> Path:
    path = Path(path)
    _atomic_write_text(path, json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path


def head_names(results: dict) -> list[str]:
    return [k for k, v in results.items() if k not in ("protocol", "data") and isinstance(v, dict) and "folds" in v]


def evaluation_label(results: dict) -> str:
    return results.get("protocol", {}).get("evaluation", "speaker-independent")


def table_title(results: dict, short: bool = False) -> str:
    p = results["protocol"]
    tags = " | ".join(p.get("labels") or [])
    repeats = p.get("repeats", 1)
    folds = f"{p.get('folds_per_repeat', p['n_folds'])} folds x {repeats} repeats" if repeats > 1 else f"{p['n_folds']} fold(s)"
    if short:
        return (f"{tags}: " if tags else "") + f"{p['name']}, {folds}"
    return ((f"[{tags}] " if tags else "") + f"protocol={p['name']} {folds} seed={p['seed']} balancing={p['balancing']} "
            f"n={p['n_rows']} speakers={p['n_speakers']}")


def print_notes(results: dict) -> None:
    """Everything a reader must know beside the table: fallbacks, left-out clips, caveats."""
    p = results["protocol"]
    for note in p.get("notes", []):
        print(f"note: {note}")
    left = results.get("data", {}).get("left_out_by_evaluation") or {}
    if left:
        print("left out of the evaluation: " + ", ".join(f"{k}={v}" for k, v in left.items()))
    leak = p.get("leakage") or {}
    if leak.get("status") == "transductive":
        print(f"TRANSDUCTIVE: the encoder saw {leak['n_seen_test_speakers']} of the {leak['n_test_speakers']} test "
              "speakers; not a speaker-independent figure")
    elif leak.get("status") == "unknown":
        print(f"provenance unknown: {leak.get('note', '')}")
    features = p.get("features") or {}
    if features.get("output") == "layer_stats":
        print(f"features: layer_stats (mean + std over time) of layers {[l['name'] for l in features['layers']]}, "
              f"{features.get('dim')} columns" + (f"; {features['heads_note']}" if features.get("heads_note") else ""))
    for h in head_names(results):
        weights = results[h].get("layer_weights")
        if weights:
            print(f"{h}: learnt layer weights (mean ± std over folds): " + ", ".join(
                f"{n} {weights['mean'][n]:.3f} ± {weights['std'][n]:.3f}" for n in weights["mean"]))
    interval = p.get("interval") or {}
    if interval:
        print(f"95% interval: {interval['method']} ({interval['n_scores']} fold scores, "
              f"test/train ratio {interval['test_train_ratio']:.3f})")


def write_metrics_csv(results: dict, path: str | Path) -> Path:
    """Per-class F1 columns are the union of every head's labels (blank where a head lacks one)."""
    path = Path(path)
    heads = head_names(results)
    class_cols: list[str] = []
    for h in heads:
        class_cols += [c for c in results[h]["per_class_f1"] if c not in class_cols]
    columns = [*CSV_COLUMNS, *(f"f1_{c}" for c in class_cols)]
    label = evaluation_label(results)
    rows = []
    for h in heads:
        r = results[h]
        for f in r["folds"]:
            rows.append({"head": h, "fold": f["name"], "repeat": f.get("repeat", 0), "n_train": f["n_train"],
                         "n_test": f["n_test"], **{k: f[k] for k in SCALARS},
                         **{f"f1_{c}": v for c, v in f["per_class_f1"].items()}})
        for rep in r.get("per_repeat", []):
            rows.append({"head": h, "fold": f"r{rep['repeat']}.mean", "repeat": rep["repeat"], **{k: rep[k] for k in SCALARS}})
        folds = r["folds"]
        rows.append({"head": h, "fold": "mean", "n_train": sum(f["n_train"] for f in folds),
                     "n_test": sum(f["n_test"] for f in folds), **{k: r[k] for k in SCALARS},
                     **{f"f1_{c}": v for c, v in r["per_class_f1"].items()}})
        rows.append({"head": h, "fold": "std", **{k: r[f"{k}_std"] for k in SCALARS}})
        if all(r.get(f"{k}_ci95") for k in SCALARS):
            rows.append({"head": h, "fold": "ci95_low", **{k: r[f"{k}_ci95"][0] for k in SCALARS}})
            rows.append({"head": h, "fold": "ci95_high", **{k: r[f"{k}_ci95"][1] for k in SCALARS}})
    for row in rows:
        row["evaluation"] = label
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def plot_confusion(confusion, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised colours (recall per true class) with raw counts annotated in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = 1.2 + 0.9 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="row-normalised")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def scalar_prefix(results: dict, prefix: str = "eval") -> str:
    """`eval`, or `eval_transductive` / `eval_speaker_overlap`: a caveated figure never lands on the
    dashboard key of a clean one."""
    p = results.get("protocol", {})
    if p.get("transductive"):
        return f"{prefix}_transductive"
    if not p.get("speaker_independent", True):
        return f"{prefix}_speaker_overlap"
    return prefix


def flatten_scalars(results: dict, prefix: str = "eval") -> dict[str, float]:
    """Flat scalars such as `eval/svm/ua` (and `_std`, `_ci95_low`, `_ci95_high`, `f1_sad`) for W&B,
    plus `<prefix>/transductive`, `/speaker_independent` and `/provenance_known` as 0/1 flags."""
    p = results.get("protocol", {})
    prefix = scalar_prefix(results, prefix)
    flat = {f"{prefix}/transductive": float(bool(p.get("transductive"))),
            f"{prefix}/speaker_independent": float(bool(p.get("speaker_independent", True))),
            f"{prefix}/provenance_known": float((p.get("leakage") or {}).get("status") not in ("unknown",))}
    for h in head_names(results):
        for k in SCALARS:
            flat[f"{prefix}/{h}/{k}"] = float(results[h][k])
            flat[f"{prefix}/{h}/{k}_std"] = float(results[h][f"{k}_std"])
            ci = results[h].get(f"{k}_ci95")
            if ci:
                flat[f"{prefix}/{h}/{k}_ci95_low"], flat[f"{prefix}/{h}/{k}_ci95_high"] = float(ci[0]), float(ci[1])
        for c, v in results[h]["per_class_f1"].items():
            flat[f"{prefix}/{h}/f1_{c}"] = float(v)
    return flat


def format_table(results: dict) -> list[list[str]]:
    """mean ± std over folds x repeats, and the 95% interval of the mean UA."""
    rows = [["head", "WA %", "UA %", "macro-F1 %", "weighted-F1 %", "UA 95% CI"]]
    for h in head_names(results):
        r = results[h]
        ci = r.get("ua_ci95")
        rows.append([h, *(f"{100 * r[k]:.2f} ± {100 * r[f'{k}_std']:.2f}" for k in SCALARS),
                     f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "n/a (1 fold)"])
    return rows


def print_table(results: dict, title: str = "") -> None:
    rows = format_table(results)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        if title:
            print(title)
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        return
    table = Table(title=title or None)
    for i, col in enumerate(rows[0]):
        table.add_column(col, justify="left" if i == 0 else "right")
    for r in rows[1:]:
        table.add_row(*r)
    console = Console()
    if not console.is_terminal:  # logs and pipes: do not wrap "84.57 ± 5.50" over two lines at 80 columns
        console = Console(width=160)
    console.print(table)
