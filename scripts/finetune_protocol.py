"""Supervised SER training, scored fold by fold on speakers it never met (experiment=ser_finetune).

For every speaker-independent fold (`evaluation.protocols.plan_folds`: speaker k-fold, optionally
repeated with seeds seed, seed + 1, ...):
1. (optional, `--pretrain experiment=...`) label-free pretraining of the encoder on the audio of the
   fold's training speakers (the Ulgen et al. pipeline: contrastive pretraining, then SER training);
   its checkpoint is selected on validation speakers drawn from the training side;
2. `ser_finetune` on the fold's training speakers (`data.speakers`), early-stopped and checkpointed on
   the UA of `--val-speakers` of them (validation speakers, never tested), warm-started from step 1's
   checkpoint if there was one;
3. the selected checkpoint predicts the held-out test speakers' clips (`predict_proba` on whole clips).
Nothing is learned from a test speaker's audio or labels: the checkpoint's `seen_speakers` is checked
against the fold's test speakers. Baselines on identical folds (`--baseline-heads linear svm`): the
heads of evaluate.py on the frozen encoder's features (`--baseline-features embedding | layer_stats`),
with a paired test per baseline (evaluation.statistics.paired_comparison over fold UAs).

Writes to `--out` (default logs/finetune_protocol/<corpus>): per fold `<fold>/metrics.json`,
`metrics.csv`, `confusion_ser_finetune.png`, `predictions.csv` (test clips) and the run's checkpoints;
over all folds `metrics.json`, `metrics.csv` and `confusion_*.png` in evaluate.py's schema (head
`ser_finetune`, plus `frozen_<head>` baselines), `comparison.json` and `finetune_protocol.md`.
A fold whose `<fold>/fold_result.json` exists is read back instead of retrained (`--no-resume` redoes it).

    python scripts/finetune_protocol.py experiment=ser_finetune data=emodb data.root=/data/emodb --baseline-heads linear
    python scripts/finetune_protocol.py experiment=ser_finetune data=emodb data.root=/data/emodb model.freeze=all --repeats 5
    python scripts/finetune_protocol.py experiment=ser_finetune data=emodb data.root=/data/emodb \\
        --pretrain experiment=contrastive_mtl trainer.max_epochs=5        # Ulgen et al.: pretrain, then fine-tune

Positional `key=value` arguments are Hydra overrides of configs/train.yaml for the SER training; the
`--pretrain` overrides get the same data overrides (`data=...`, `data.*`) added in front.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from evaluation.embeddings_io import EmbeddingSet  # noqa: E402
from evaluation.metrics import SCALARS, compute_metrics  # noqa: E402
from evaluation.protocols import FoldPlan, plan_folds  # noqa: E402
from evaluation.report import plot_confusion, print_table, write_metrics_csv, write_metrics_json  # noqa: E402
from evaluation.run_heads import _summarize_head, _test_train_ratio, run_evaluation  # noqa: E402
from evaluation.statistics import INTERVAL_METHOD, paired_comparison  # noqa: E402
from utils.compose import compose_config  # noqa: E402

log = logging.getLogger("finetune_protocol")
HEAD = "ser_finetune"
SER_TARGET = "lightning_modules.ser_finetune.SERFinetuneModule"


def fold_config(overrides: list[str], out_dir: Path, train_speakers: list[str], val_speakers: float | int):
    """configs/train.yaml with `overrides`, restricted to the fold's training speakers, `val_speakers` of
    which validate (scripts/pretrain_protocol.py's rule), quiet, no logger."""
    from pretrain_protocol import fold_config as restrict

    return restrict(overrides, out_dir, train_speakers, val_speakers)


def data_overrides(overrides: list[str]) -> list[str]:
    """The corpus choice of the SER overrides, for the pretraining run of the same fold."""
    keys = [(o, o.split("=", 1)[0].lstrip("+~")) for o in overrides]
    return [o for o, k in keys if k in ("data", "paths.data_dir")
            or (k.startswith("data.") and k not in ("data.classes", "data._target_"))]


def load_corpus(overrides: list[str], out: Path):
    """The labelled clips (EmotionDataModule, no validation split) and the class order."""
    from hydra.utils import instantiate

    cfg = compose_config("train.yaml", list(overrides) + ["data.val_speakers=0"], out)
    if cfg.model.get("_target_") != SER_TARGET:
        raise SystemExit(f"finetune_protocol trains {SER_TARGET}; got model._target_={cfg.model.get('_target_')} "
                         "(pass experiment=ser_finetune)")
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    return cfg, dm


def label_set(dm) -> EmbeddingSet:
    """An EmbeddingSet without features (folds are planned on labels and speakers only)."""
    names = np.asarray(dm.class_names)[dm.train_emotion_ids]
    return EmbeddingSet(np.zeros((len(dm.train_records), 1), np.float32), names,
                        np.array([r.speaker for r in dm.train_records]),
                        utt_id=np.array([r.utt_id for r in dm.train_records]))


def frozen_features(cfg, dm, features: str, batch_size: int) -> np.ndarray:
    """The frozen start encoder's features of every clip (the baseline the fine-tuning must beat)."""
    from cluster_analysis import load_encoder

    from lightning_modules.clip_embedding import CLIP_OUTPUTS, embed_records

    module = load_encoder(cfg, cfg.model.get("init_from")).eval()
    if features in CLIP_OUTPUTS:
        return embed_records(module, dm, dm.train_records, batch_size, output=features)
    if features != "layer_stats" or not hasattr(module.backbone, "layer_stats_utterances"):
        raise SystemExit(f"--baseline-features {features}: expected one of {sorted(CLIP_OUTPUTS)} or layer_stats")
    parts = []
    with torch.no_grad():
        for batch in dm.utterance_loader(dm.train_records, batch_size):
            parts.append(module.backbone.layer_stats_utterances(batch["wavs"])[0].float())
    return torch.cat(parts).numpy()


def test_probabilities(module, dm, records, batch_size: int) -> np.ndarray:
    module = module.eval()
    out = []
    with torch.no_grad():
        for batch in dm.utterance_loader(records, batch_size):
            out.append(module.predict_proba(batch["wavs"]).float().cpu())
    return torch.cat(out).numpy()


def write_predictions(path: Path, records, true, probs, classes) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker", "true", "predicted", *(f"p_{c}" for c in classes)])
        for r, t, p in zip(records, true, probs, strict=True):
            w.writerow([r.path, r.speaker, t, classes[int(p.argmax())], *(f"{v:.6f}" for v in p)])


def results_block(plan: FoldPlan, entries: list[dict], classes: list[str], counts: dict, settings: dict,
                  data: dict) -> dict:
    """evaluate.py's metrics.json schema for the head `ser_finetune` over `entries` (one per fold run)."""
    folds = [f for f in plan.folds if f.name in {e["name"] for e in entries}]
    ratio = _test_train_ratio(folds)
    protocol = {**plan.describe(), "n_folds": len(folds), "seed": settings["seed"],
                "fold_seeds": [settings["seed"] + r for r in range(plan.repeats)], "balancing": "class_weight (loss)",
                "class_order": classes, "counts": counts, "n_rows": int(sum(counts.values())),
                "n_speakers": settings["n_speakers"], "heads": [HEAD], "training": settings,
                "interval": {"confidence": 0.95, "method": INTERVAL_METHOD, "test_train_ratio": ratio,
                             "n_scores": len(folds)},
                "transductive": False, "leakage": {"status": "clean", "checked": "checkpoint seen_speakers vs test"},
                "labels": [], "evaluation": "speaker-independent", "folds": [f.describe() for f in folds]}
    return {"protocol": protocol, "data": data, HEAD: {**_summarize_head(entries, classes, plan, ratio),
                                                       "folds": entries}}


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_metrics_json(results, out / "metrics.json")
    write_metrics_csv(results, out / "metrics.csv")
    for name in [k for k in results if k not in ("protocol", "data")]:
        plot_confusion(results[name]["confusion"], results[name]["labels"], out / f"confusion_{name}.png",
                       title=f"{name} ({results['protocol']['name']}, {results['protocol']['n_folds']} fold(s), summed)")


def best_checkpoint(metrics: dict, objs: dict) -> tuple[str, float | None]:
    best = metrics.get("best_ckpt_path") or ""
    score = getattr(objs["trainer"].checkpoint_callback, "best_model_score", None) if best else None
    return best, None if score is None else float(score)


def run_fold(k: int, fold, args, ds: EmbeddingSet, dm, classes: list[str], out: Path) -> dict:
    from lightning_modules.embedding_module import load_embedding_module
    from utils.training import train

    fold_dir = out / fold.name
    cached = fold_dir / "fold_result.json"
    if cached.exists() and args.resume:
        log.info("fold %s: read back from %s", fold.name, cached)
        return json.loads(cached.read_text())
    t0 = time.perf_counter()
    shutil.rmtree(fold_dir / "checkpoints", ignore_errors=True)  # a retrained fold starts clean
    train_speakers = sorted(set(ds.speaker[fold.train_idx].tolist()))
    n_val = int(args.val_speakers) if args.val_speakers >= 1 else args.val_speakers
    overrides = list(args.overrides)
    entry: dict = {}
    if args.pretrain:
        pre_cfg = fold_config(data_overrides(overrides) + list(args.pretrain), fold_dir / "pretrain", train_speakers, n_val)
        pre_metrics, pre_objs = train(pre_cfg)
        pre_best, pre_score = best_checkpoint(pre_metrics, pre_objs)
        if not pre_best:
            pre_best = str(fold_dir / "pretrain" / "checkpoints" / "last.ckpt")
        entry["pretrained_checkpoint"], entry["pretrain_selected_score"] = pre_best, pre_score
        overrides.append(f"model.init_from={pre_best}")
        del pre_objs
    cfg = fold_config(overrides, fold_dir, train_speakers, n_val)
    with open_dict(cfg):
        cfg.seed = int(cfg.seed) + fold.repeat  # repeats differ in the fold assignment and the training seed
    metrics, objs = train(cfg)
    val_speakers = list(objs["datamodule"].val_speakers)
    best, score = best_checkpoint(metrics, objs)
    if best:
        module = load_embedding_module(best)
        seen = set(torch.load(best, map_location="cpu", weights_only=True).get("seen_speakers") or [])
    else:  # no validation speakers: the last weights
        module, seen = objs["model"].cpu(), set(objs["model"].seen_speakers)
    leaked = sorted(seen & set(fold.test_speakers))
    if leaked:
        raise RuntimeError(f"fold {fold.name}: the checkpoint has seen test speaker(s) {leaked} (seen_speakers; a "
                           "model.init_from trained on them?); this would not be a speaker-independent score")
    test_records = [dm.train_records[i] for i in fold.test_idx]
    probs = test_probabilities(module, dm, test_records, args.batch_size)
    true = ds.emotion[fold.test_idx]
    pred = np.asarray(classes)[probs.argmax(1)]
    m = compute_metrics(true, pred, classes)
    m.pop("n")
    fold_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(fold_dir / "predictions.csv", test_records, true, probs, classes)
    trainer = objs["trainer"]
    entry = {**fold.describe(), "n_fit": int(sum(1 for r in objs["datamodule"].train_records)), **m,
             "train_speakers": sorted(set(train_speakers) - set(val_speakers)), "val_speakers": val_speakers,
             "selected_checkpoint": best or "last epoch", "selected_on": "val/ua" if best else None,
             "selected_score": score, "epochs_run": int(trainer.current_epoch),
             "stopped_early": any(getattr(cb, "stopped_epoch", 0) > 0 for cb in trainer.callbacks),
             "layer_weights": module.layer_weight_table(),
             "seconds": round(time.perf_counter() - t0, 1), **entry}
    cached.write_text(json.dumps(entry, indent=2))
    log.info("fold %s: test UA %.3f WA %.3f (val UA %s, %d epochs, %.1f min)", fold.name, entry["ua"], entry["wa"],
             score, entry["epochs_run"], entry["seconds"] / 60)
    del module, objs
    return entry


def markdown(result: dict, comparisons: dict, command: str) -> str:
    p = result["protocol"]
    lines = [f"### SER fine-tuning, {p['training']['corpus']}: {p['n_folds']} speaker-independent folds "
             f"({p.get('folds_per_repeat', p['n_folds'])} folds x {p['repeats']} repeats)", "", f"`{command}`", "",
             "| model | UA % | UA 95% CI | WA % | macro-F1 % |", "|---|---:|---:|---:|---:|"]
    for name in [k for k in result if k not in ("protocol", "data")]:
        r = result[name]
        ci = r.get("ua_ci95")
        lines.append(f"| {name} | {100 * r['ua']:.1f} ± {100 * r['ua_std']:.1f} | "
                     f"{f'[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]' if ci else 'n/a'} | {100 * r['wa']:.1f} ± "
                     f"{100 * r['wa_std']:.1f} | {100 * r['macro_f1']:.1f} |")
    lines += ["", "| fold | test speakers | " + " | ".join(f"{n} UA" for n in result if n not in ("protocol", "data"))
              + " | epochs | val UA | minutes |", "|---|---|" + "---:|" * (len(result) - 2) + "---:|---:|---:|"]
    names = [k for k in result if k not in ("protocol", "data")]
    for i, f in enumerate(result[HEAD]["folds"]):
        uas = " | ".join(f"{100 * result[n]['folds'][i]['ua']:.1f}" for n in names)
        val = f"{100 * f['selected_score']:.1f}" if f.get("selected_score") is not None else "n/a"
        lines.append(f"| {f['name']} | {', '.join(f['test_speakers'])} | {uas} | {f['epochs_run']} | {val} | "
                     f"{f['seconds'] / 60:.1f} |")
    for name, c in comparisons.items():
        t = c.get("corrected_t") or {}
        lines += ["", f"{HEAD} vs {name} (UA, paired over {c['n']} folds): mean difference "
                      f"{100 * c['mean_difference']:+.1f} points, corrected t p = {t.get('p_value', float('nan')):.3f}, "
                      f"wins {c['wins_a']}/{c['n']}; {c['verdict']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=ser_finetune data=emodb data.root=...")
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="k-fold repeats (seeds seed, seed + 1, ...)")
    ap.add_argument("--folds", nargs="*", default=None, help="run only these folds (names such as fold0, r1.fold3)")
    ap.add_argument("--seed", type=int, default=0, help="fold assignment seed (as evaluate.py's eval.seed)")
    ap.add_argument("--val-speakers", type=float, default=2,
                    help="validation speakers carved out of each fold's training speakers (a count >= 1, or a fraction)")
    ap.add_argument("--pretrain", nargs="+", default=None, metavar="OVERRIDE",
                    help="label-free pretraining per fold first, e.g. --pretrain experiment=contrastive_mtl")
    ap.add_argument("--baseline-heads", nargs="*", default=[], help="evaluate.py heads on the frozen encoder, same folds")
    ap.add_argument("--baseline-features", default="embedding", help="embedding | layer_stats (frozen features)")
    ap.add_argument("--batch-size", type=int, default=16, help="clips per prediction batch")
    ap.add_argument("--no-resume", dest="resume", action="store_false", help="retrain folds that have a result")
    ap.add_argument("--out", default=None, help="output folder (default: logs/finetune_protocol/<corpus>)")
    args = ap.parse_args(argv)
    if args.pretrain and args.pretrain[0] == "--":
        args.pretrain = args.pretrain[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    probe = compose_config("train.yaml", list(args.overrides), ROOT / "logs" / "finetune_protocol")
    out = Path(args.out or ROOT / "logs" / "finetune_protocol" / str(probe.data.corpus))
    out.mkdir(parents=True, exist_ok=True)
    cfg, dm = load_corpus(list(args.overrides), out)
    classes = dm.class_names
    ds = label_set(dm)
    plan = plan_folds(ds, "kfold", n_folds=args.n_folds, seed=args.seed, repeats=args.repeats)
    run = [f for f in plan.folds if args.folds is None or f.name in set(args.folds)]
    if not run:
        raise SystemExit(f"--folds {args.folds}: no such fold (folds: {[f.name for f in plan.folds]})")

    entries = [run_fold(k, fold, args, ds, dm, classes, out) for k, fold in enumerate(run)]
    counts = Counter(ds.emotion.tolist())
    settings = {"overrides": list(args.overrides), "pretrain": args.pretrain, "corpus": str(cfg.data.corpus),
                "seed": args.seed, "val_speakers": args.val_speakers, "n_speakers": int(len(np.unique(ds.speaker))),
                "folds_run": [f.name for f in run]}
    data = {"n_labelled_clips": len(dm.train_records), "left_out_without_label": int(dm.n_unlabelled),
            "left_out_by_evaluation": dict(plan.left_out), "n_rows_evaluated": len(ds)}
    counts_d = {c: int(counts[c]) for c in classes}
    for entry, fold in zip(entries, run):  # per fold: the same files as the whole run
        write_results(results_block(plan, [entry], classes, counts_d, settings, data), out / fold.name)
    result = results_block(plan, entries, classes, counts_d, settings, data)

    comparisons = {}
    if args.baseline_heads:
        feats = frozen_features(cfg, dm, args.baseline_features, args.batch_size)
        base = run_evaluation(EmbeddingSet(feats, ds.emotion, ds.speaker, utt_id=ds.utt_id),
                              heads=list(args.baseline_heads), plan=FoldPlan(plan.protocol, plan.requested, run,
                                                                             repeats=1),
                              seed=args.seed, class_order=classes, out_dir=None, verbose=False)
        ratio = result["protocol"]["interval"]["test_train_ratio"]
        for h in args.baseline_heads:
            name = f"frozen_{args.baseline_features}_{h}"
            result[name] = base[h]
            if len(entries) >= 2:
                comparisons[name] = paired_comparison([e["ua"] for e in entries], [f["ua"] for f in base[h]["folds"]],
                                                      test_train_ratio=ratio)
        result["protocol"]["heads"] = [k for k in result if k not in ("protocol", "data")]
    write_results(result, out)
    (out / "comparison.json").write_text(json.dumps(comparisons, indent=2) + "\n")
    command = "python scripts/finetune_protocol.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(result, comparisons, command)
    (out / "finetune_protocol.md").write_text(table + "\n")
    print_table(result, title=f"ser_finetune, {len(run)} speaker-independent fold(s)")
    print(table)
    print(f"wrote {out}/metrics.json, metrics.csv, confusion_*.png, comparison.json, finetune_protocol.md")
    return result


if __name__ == "__main__":
    main()
