"""Writing evaluation results: metrics.json (everything), metrics.csv (one row per head x fold
plus mean rows, for spreadsheets), confusion PNGs, a console table and flat scalars for loggers."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluation.metrics import SCALARS

CSV_COLUMNS = ("head", "fold", "n_train", "n_test", *SCALARS)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_metrics_json(results: dict, path: str | Path) -> Path:
    path = Path(path)
    _atomic_write_text(path, json.dumps(results, indent=2, sort_keys=False) + "\n")
    return path


def head_names(results: dict) -> list[str]:
    return [k for k, v in results.items() if k != "protocol" and isinstance(v, dict) and "folds" in v]


def write_metrics_csv(results: dict, path: str | Path) -> Path:
    """Per-class F1 columns are the union of every head's labels (blank where a head lacks one)."""
    path = Path(path)
    heads = head_names(results)
    class_cols: list[str] = []
    for h in heads:
        class_cols += [c for c in results[h]["per_class_f1"] if c not in class_cols]
    columns = [*CSV_COLUMNS, *(f"f1_{c}" for c in class_cols)]
    rows = []
    for h in heads:
        for f in results[h]["folds"]:
            rows.append({"head": h, "fold": f["name"], "n_train": f["n_train"], "n_test": f["n_test"],
                         **{k: f[k] for k in SCALARS}, **{f"f1_{c}": v for c, v in f["per_class_f1"].items()}})
        folds = results[h]["folds"]
        rows.append({"head": h, "fold": "mean", "n_train": sum(f["n_train"] for f in folds),
                     "n_test": sum(f["n_test"] for f in folds), **{k: results[h][k] for k in SCALARS},
                     **{f"f1_{c}": v for c, v in results[h]["per_class_f1"].items()}})
        rows.append({"head": h, "fold": "std", **{k: results[h][f"{k}_std"] for k in SCALARS}})
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


def flatten_scalars(results: dict, prefix: str = "eval") -> dict[str, float]:
    """Flat scalars such as `eval/svm/ua` (and `eval/svm/ua_std`, `eval/svm/f1_sad`) for W&B."""
    flat = {}
    for h in head_names(results):
        for k in SCALARS:
            flat[f"{prefix}/{h}/{k}"] = results[h][k]
            flat[f"{prefix}/{h}/{k}_std"] = results[h][f"{k}_std"]
        for c, v in results[h]["per_class_f1"].items():
            flat[f"{prefix}/{h}/f1_{c}"] = v
    return flat


def format_table(results: dict) -> list[list[str]]:
    rows = [["head", "WA %", "UA %", "macro-F1 %", "weighted-F1 %"]]
    for h in head_names(results):
        r = results[h]
        rows.append([h, *(f"{100 * r[k]:.2f} ± {100 * r[f'{k}_std']:.2f}" for k in SCALARS)])
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
    Console().print(table)
