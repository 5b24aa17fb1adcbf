"""Why does ser_finetune's classifier on a *frozen* encoder trail the linear probe on the same features? A
controlled look on the validation speakers only (never a test speaker), over crossval.py's folds.

    python scripts/ser_head_validation.py data=emodb data.root=/data/emodb --out results/emodb/ser_head_validation

For every fold of crossval.py's plan (evaluate.py's folds, `seed`, `eval.n_folds`, `eval.repeats`), the fold's
training speakers are split as crossval.py splits them (`crossval.val_speakers`, data seed = seed + repeat): the
heads are fitted on the fit speakers' clips and scored on the validation speakers' clips. Features: the frozen
GE2E's per-layer time statistics of whole clips (`layer_stats`, cached like crossval's). Heads:
- `probe`: the linear probe of evaluate.py / crossval.py (standardised columns, logistic regression, C=1);
- ser_finetune's head as `freeze=all` trains it (LayerNorm per layer, a projection per layer, softmax layer mix,
  dropout, then an MLP of `hidden` units or a linear layer; AdamW, cosine schedule, class-weighted CE, batches of
  24 clips), for a grid of optimiser steps, learning rates and classifier widths.
Writes results.md and comparison.json (mean validation UA, paired difference to the probe, wins) to --out.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.compose import compose_config

GRID = [dict(hidden=h, lr=lr, steps=s) for h in (128, 0) for lr in (1e-3, 1e-2) for s in (80, 200, 400, 800)]


def train_head(X: np.ndarray, y: np.ndarray, Xv: np.ndarray, widths: list[int], n_classes: int, hidden: int,
               lr: float, steps: int, pooled: int = 256, batch: int = 24, dropout: float = 0.2, wd: float = 1e-4,
               seed: int = 0) -> np.ndarray:
    """ser_finetune's LayerWeightedPooling (norm=layer) + classifier on precomputed statistics; validation predictions."""
    from lightning_modules.ser_finetune import LayerWeightedPooling

    torch.manual_seed(seed)
    dims = [w // 2 for w in widths]
    pool = LayerWeightedPooling(dims, pooled, stats="mean_std", norm="layer")
    head = [nn.Dropout(dropout), nn.Linear(pooled, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)] \
        if hidden else [nn.Dropout(dropout), nn.Linear(pooled, n_classes)]
    cls = nn.Sequential(*head)
    params = [*pool.parameters(), *cls.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    offs = np.cumsum([0, *widths])
    split = lambda Z: [Z[:, offs[i]: offs[i + 1]] for i in range(len(widths))]  # noqa: E731
    Xt, yt, Xvt = torch.tensor(X, dtype=torch.float32), torch.tensor(y), torch.tensor(Xv, dtype=torch.float32)
    counts = np.bincount(y, minlength=n_classes)
    weight = torch.tensor(len(y) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    pool.train(), cls.train()
    for _ in range(steps):
        idx = torch.randint(0, len(yt), (batch,), generator=g)
        loss = F.cross_entropy(cls(pool(split(Xt[idx]))), yt[idx], weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    pool.eval(), cls.eval()
    with torch.no_grad():
        return cls(pool(split(Xvt))).argmax(1).numpy()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from datamodules.speaker_datamodule import split_speakers
    from evaluation.metrics import unweighted_accuracy
    from evaluation.statistics import paired_comparison
    from lightning_modules.clip_feature_cache import clip_features
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from tasks.crossval import plan_of, reference_encoder

    out = Path(args.out)
    cfg = compose_config("crossval.yaml", ["experiment=ser_finetune", *args.overrides], output_dir=out / "run")
    dm, records, ls, plan, _ = plan_of(cfg)
    encoder = reference_encoder("ge2e")
    X, _ = clip_features(encoder, dm, records, ["layer_stats"], Path(cfg.paths.data_dir) / "clip_features")["layer_stats"]
    widths = [2 * d for d in encoder.layer_dims()]
    classes = sorted(set(ls.emotion.tolist()))
    y = np.array([classes.index(e) for e in ls.emotion])
    names = ["probe"] + [f"{'MLP ' + str(c['hidden']) if c['hidden'] else 'linear'}, lr {c['lr']:g}, {c['steps']} steps"
                         for c in GRID]
    scores: dict[str, list[float]] = {n: [] for n in names}
    n_fit_rows = n_val_rows = 0
    for f in plan.folds:
        speakers = sorted(set(ls.speaker[f.train_idx].tolist()))
        fit, val = split_speakers(speakers, cfg.crossval.val_speakers, int(cfg.seed) + f.repeat)
        fi = f.train_idx[np.isin(ls.speaker[f.train_idx], sorted(fit))]
        vi = f.train_idx[np.isin(ls.speaker[f.train_idx], sorted(val))]
        sc = StandardScaler().fit(X[fi])
        pred = LogisticRegression(C=1.0, max_iter=5000).fit(sc.transform(X[fi]), y[fi]).predict(sc.transform(X[vi]))
        scores["probe"].append(unweighted_accuracy(y[vi], pred))
        n_fit_rows, n_val_rows = n_fit_rows + len(fi), n_val_rows + len(vi)
        for name, c in zip(names[1:], GRID):
            scores[name].append(unweighted_accuracy(y[vi], train_head(X[fi], y[fi], X[vi], widths, len(classes),
                                                                       seed=f.repeat, **c)))
        print(f.name, " ".join(f"{100 * v[-1]:.1f}" for v in scores.values()), flush=True)
    ratio = n_val_rows / n_fit_rows
    rows = []
    for name in names:
        cmp = paired_comparison(scores[name], scores["probe"], test_train_ratio=ratio) if name != "probe" else None
        rows.append({"head": name, "val_ua": float(np.mean(scores[name])), "per_fold": scores[name],
                     "vs_probe": cmp})
    command = "python scripts/ser_head_validation.py " + " ".join(args.overrides) + f" --out {args.out}"
    lines = [f"# ser_finetune's head on frozen GE2E layer statistics vs the linear probe, validation speakers only",
             "", f"`{command}`", "",
             f"{len(plan.folds)} folds of crossval.py's plan; fitted on each fold's fit speakers, scored on its "
             f"{cfg.crossval.val_speakers} validation speakers (no test speaker is read).", "",
             "| head | validation UA % | − probe | p (corrected t) | wins / losses |", "|---|---:|---:|---:|---|"]
    for r in rows:
        d = np.asarray(r["per_fold"]) - np.asarray(scores["probe"])
        p = r["vs_probe"]["corrected_t"]["p_value"] if r["vs_probe"] and r["vs_probe"].get("corrected_t") else None
        lines.append(f"| {r['head']} | {100 * r['val_ua']:.1f} | {100 * d.mean():+.1f} | "
                     f"{'' if p is None else f'{p:.3g}'} | {int((d > 0).sum())} / {int((d < 0).sum())} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "comparison.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1, default=float) + "\n")
    print("\n".join(lines))
    return {"rows": rows}


if __name__ == "__main__":
    main()
