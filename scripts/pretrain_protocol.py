"""Does emotion-label-free pretraining help SER on unseen speakers? Frozen start vs pretrained, per fold.

For every speaker-independent fold (`evaluation.protocols.make_folds`, k-fold over speakers):
1. pretrain the encoder with the configured objective (e.g. experiment=contrastive_mtl) on the audio
   of the fold's training speakers (every clip, every emotion, no emotion label read in training):
   `data.speakers` restricts the datamodule to those speakers, and `--val-speakers` of THEM are held
   out as validation speakers, whose labels the emotion probe (`val/probe_ua`) reads to select the
   checkpoint; the fold's test speakers are never seen, not even for model selection;
2. embed the 4-class clips of every speaker with the frozen start and with the selected checkpoint;
3. fit the classifier head (default: the paper's SVM) on the training speakers' embeddings and
   score the held-out speakers (`evaluation.run_heads.run_evaluation` on that fold's split).
Prints UA/WA of both side by side (mean ± std over folds) and writes json + markdown.

    python scripts/pretrain_protocol.py experiment=contrastive_mtl data=emodb backbone=ge2e
    python scripts/pretrain_protocol.py experiment=contrastive_mtl data=emodb backbone=ge2e trainer.max_epochs=10 --folds 0 1
    python scripts/pretrain_protocol.py experiment=contrastive_mtl data=emodb --repeats 5   # 5 x 5 folds, paired test

With `--repeats R` the k-fold assignment is drawn with seeds seed .. seed+R-1 (R x k pretrainings);
the summary gives mean ± std over folds x repeats, the corrected 95% interval and a paired test of
pretrained vs frozen on identical folds (evaluation.statistics). Results are written after every
fold, so an interrupted run keeps what it finished.

Positional `key=value` arguments are Hydra overrides of configs/train.yaml.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from callbacks.intra_speaker_clustering import IntraSpeakerClustering  # noqa: E402
from lightning_modules.clip_embedding import embed_records  # noqa: E402
from lightning_modules.embedding_module import load_embedding_module  # noqa: E402
from cluster_analysis import build_datamodule, load_encoder, select_records  # noqa: E402
from utils.compose import compose_config  # noqa: E402
from evaluation.embeddings_io import EmbeddingSet  # noqa: E402
from evaluation.protocols import make_folds  # noqa: E402
from evaluation.statistics import corrected_t_interval, paired_comparison  # noqa: E402
from evaluation.run_heads import run_evaluation  # noqa: E402

log = logging.getLogger("pretrain_protocol")


def fold_config(overrides: list[str], out_dir: Path, train_speakers: list[str], val_speakers: float | int = 0.25):
    """The run's config restricted to the fold's training speakers, `val_speakers` of which (a fraction
    or a count) become its validation speakers: the experiment's checkpoint monitor (val/probe_ua for
    emotion objectives) then selects on speakers of the training side only. No interactive output."""
    cfg = compose_config("train.yaml", overrides, out_dir)
    with open_dict(cfg):
        cfg.data.speakers = list(train_speakers)
        cfg.data.val_speakers = val_speakers
        for name in ("progress_bar", "model_summary"):
            cfg.callbacks.pop(name, None)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        cfg.logger = None
    return cfg


def score(emb_set: EmbeddingSet, test_speakers, head: str, head_kwargs: dict, seed: int) -> dict:
    res = run_evaluation(emb_set, heads=[head], protocol="speakers", test_speakers=list(test_speakers), seed=seed,
                         head_kwargs={head: head_kwargs} if head_kwargs else None, out_dir=None, verbose=False)
    return {"ua": res[head]["ua"], "wa": res[head]["wa"], "macro_f1": res[head]["macro_f1"]}


def summarize(folds: list[dict], key: str) -> dict:
    out = {}
    ratio = float(np.mean([f["n_test"] / f["n_train"] for f in folds])) if folds and "n_test" in folds[0] else None
    for metric in ("ua", "wa", "macro_f1"):
        v = np.array([f[key][metric] for f in folds])
        out[metric], out[f"{metric}_std"] = float(v.mean()), float(v.std())
        if ratio is not None and len(v) > 1:
            out[f"{metric}_interval"] = corrected_t_interval(v, ratio, bounds=(0.0, 1.0))
    return out


def compare(folds: list[dict]) -> dict | None:
    """Pretrained vs frozen UA on the same folds (A = pretrained)."""
    if len(folds) < 2:
        return None
    ratio = float(np.mean([f["n_test"] / f["n_train"] for f in folds]))
    return paired_comparison([f["pretrained"]["ua"] for f in folds], [f["frozen"]["ua"] for f in folds], ratio)


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"### Pretraining protocol: {s['corpus']}, {s['n_folds']}-fold speaker-independent, head={s['head']}",
             "", f"`python scripts/pretrain_protocol.py {' '.join(s['overrides'])}" +
             (f" --folds {' '.join(map(str, s['folds_run']))}" if s["folds_run"] != list(range(s["n_folds"])) else "") +
             (f" --repeats {s['repeats']}" if s.get("repeats", 1) > 1 else "") + "`", "",
             f"{len(result['folds'])} fold results (folds x repeats). Mean ± std; 95% interval: "
             "t over folds x repeats with the Nadeau-Bengio corrected variance.", "",
             "| encoder | UA | UA 95% interval | WA | macro-F1 |", "|---|---:|---|---:|---:|"]
    for key, name in (("frozen", "frozen start"), ("pretrained", "pretrained")):
        m = result[key]
        iv = m.get("ua_interval")
        iv_s = f"[{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]" if iv else "n/a"
        lines.append(f"| {name} | {100 * m['ua']:.1f} ± {100 * m['ua_std']:.1f} | {iv_s} | {100 * m['wa']:.1f} ± "
                     f"{100 * m['wa_std']:.1f} | {100 * m['macro_f1']:.1f} ± {100 * m['macro_f1_std']:.1f} |")
    c = result.get("comparison")
    if c:
        ct = c.get("corrected_t") or {}
        lines += ["", f"Paired, pretrained − frozen UA over {c['n']} folds: {100 * c['mean_difference']:+.1f} points "
                      f"(corrected t 95% [{100 * ct.get('low', float('nan')):+.1f}, {100 * ct.get('high', float('nan')):+.1f}], "
                      f"p = {ct.get('p_value', float('nan')):.3f}; Wilcoxon p = {c['wilcoxon']['p_value']:.3f}; "
                      f"wins {c['wins_a']} / losses {c['wins_b']} / ties {c['ties']}): {c['verdict']}."]
    lines += ["", "| repeat | fold | test speakers | frozen UA | pretrained UA | frozen WA | pretrained WA | cluster purity "
                  "(first → last, monitoring) | minutes |", "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for f in result["folds"]:
        pur = f.get("cluster_purity") or []
        pur_s = f"{pur[0]:.3f} → {pur[-1]:.3f}" if pur else "n/a"
        lines.append(f"| {f.get('repeat', 0)} | {f['fold']} | {', '.join(f['test_speakers'])} | {100 * f['frozen']['ua']:.1f} | "
                     f"{100 * f['pretrained']['ua']:.1f} | {100 * f['frozen']['wa']:.1f} | "
                     f"{100 * f['pretrained']['wa']:.1f} | {pur_s} | {f['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=contrastive_mtl data=emodb backbone=ge2e")
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--folds", type=int, nargs="*", default=None, help="run only these fold indices (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="fold assignment and head seed")
    ap.add_argument("--repeats", type=int, default=1, help="repeated k-fold: fold seeds seed .. seed+repeats-1")
    ap.add_argument("--label-set", choices=("four", "all"), default="four", help="evaluation classes")
    ap.add_argument("--head", default="svm", help="evaluation head (evaluation.heads.make_head name)")
    ap.add_argument("--head-kwargs", default="{}", help='json, e.g. \'{"C": 10}\'')
    ap.add_argument("--batch-size", type=int, default=32, help="utterances per embedding batch")
    ap.add_argument("--val-speakers", type=float, default=0.25,
                    help="validation speakers carved out of each fold's training speakers (fraction < 1, or a count)")
    ap.add_argument("--out", default=None, help="output folder (default: logs/pretrain_protocol/<corpus>)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    head_kwargs = json.loads(args.head_kwargs)

    probe = compose_config("train.yaml", list(args.overrides) + ["data.val_speakers=0"], ROOT / "logs" / "pretrain_protocol")
    out = Path(args.out or ROOT / "logs" / "pretrain_protocol" / str(probe.data.corpus))
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_config("train.yaml", list(args.overrides) + ["data.val_speakers=0"], out)
    dm = build_datamodule(cfg)
    records, emotions = select_records(dm.train_records, args.label_set)
    speakers = np.array([r.speaker for r in records])
    utt = np.array([r.utt_id for r in records])

    t0 = time.perf_counter()
    frozen_module = load_encoder(cfg, cfg.model.get("init_from"))
    frozen = EmbeddingSet(embed_records(frozen_module, dm, records, args.batch_size), np.array(emotions), speakers,
                          utt_id=utt)
    del frozen_module
    log.info("frozen-start embeddings of %d clips in %.1fs", len(records), time.perf_counter() - t0)
    if args.repeats < 1:
        raise SystemExit(f"--repeats={args.repeats}: expected at least 1")
    plans = [make_folds(frozen, "kfold", n_folds=args.n_folds, seed=args.seed + r) for r in range(args.repeats)]
    folds = plans[0]
    run_idx = list(range(len(folds))) if args.folds is None else sorted(set(args.folds))
    bad = [k for k in run_idx if not 0 <= k < len(folds)]
    if not run_idx or bad:
        raise SystemExit(f"--folds {args.folds}: expected fold indices in 0..{len(folds) - 1}")

    from utils.training import train

    per_fold = []
    for r, k in [(r, k) for r in range(args.repeats) for k in run_idx]:
        fold = plans[r][k]
        t_fold = time.perf_counter()
        train_speakers = sorted(set(speakers[fold.train_idx].tolist()))
        n_val = int(args.val_speakers) if args.val_speakers >= 1 else args.val_speakers
        fcfg = fold_config(list(args.overrides), out / (f"repeat{r}_fold{k}" if args.repeats > 1 else f"fold{k}"),
                           train_speakers, n_val)
        metrics, objs = train(fcfg)
        val_speakers = list(objs["datamodule"].val_speakers)
        if set(val_speakers) & set(fold.test_speakers):  # data.speakers makes this impossible; never let it pass
            raise RuntimeError(f"fold {k}: validation speakers {val_speakers} overlap the test speakers")
        log.info("fold %d: pretrained on %s, validated on %s, testing on %s", k,
                 sorted(set(train_speakers) - set(val_speakers)), val_speakers, list(fold.test_speakers))
        best = metrics.get("best_ckpt_path") or ""
        selector = objs["trainer"].checkpoint_callback
        best_score = getattr(selector, "best_model_score", None) if best else None
        model = load_embedding_module(best) if best else objs["model"].cpu()
        pre = EmbeddingSet(embed_records(model, dm, records, args.batch_size), np.array(emotions), speakers, utt_id=utt)
        clustering = [cb for cb in objs["trainer"].callbacks if isinstance(cb, IntraSpeakerClustering)]
        purity = [r.monitor.get("purity") for r in clustering[0].history] if clustering else []
        entry = {"repeat": r, "fold": k, "fold_seed": args.seed + r, "test_speakers": list(fold.test_speakers),
                 "train_speakers": train_speakers, "n_train": int(len(fold.train_idx)), "n_test": int(len(fold.test_idx)),
                 "val_speakers": val_speakers, "selected_checkpoint": best or "last epoch",
                 "selected_on": getattr(selector, "monitor", None) if best else None,
                 "selected_score": None if best_score is None else float(best_score),
                 "frozen": score(frozen, fold.test_speakers, args.head, head_kwargs, args.seed + r),
                 "pretrained": score(pre, fold.test_speakers, args.head, head_kwargs, args.seed + r),
                 "cluster_purity": [p for p in purity if p is not None],
                 "seconds": time.perf_counter() - t_fold}
        per_fold.append(entry)
        log.info("repeat %d fold %d: UA frozen %.3f -> pretrained %.3f (WA %.3f -> %.3f), %.1f min", r, k,
                 entry["frozen"]["ua"], entry["pretrained"]["ua"], entry["frozen"]["wa"], entry["pretrained"]["wa"],
                 entry["seconds"] / 60)
        del model, objs
        result = write_result(args, cfg, folds, run_idx, records, head_kwargs, per_fold, out)
    table = markdown(result)
    print(table)
    print(f"wrote {out}/pretrain_protocol.json and pretrain_protocol.md")
    return result


def write_result(args, cfg, folds, run_idx, records, head_kwargs, per_fold, out: Path) -> dict:
    result = {"settings": {"overrides": list(args.overrides), "corpus": str(cfg.data.corpus), "n_folds": len(folds),
                           "folds_run": run_idx, "repeats": args.repeats, "seed": args.seed,
                           "label_set": args.label_set, "head": args.head, "head_kwargs": head_kwargs,
                           "n_clips_evaluated": len(records)},
              "frozen": summarize(per_fold, "frozen"), "pretrained": summarize(per_fold, "pretrained"),
              "comparison": compare(per_fold), "folds": per_fold}
    (out / "pretrain_protocol.json").write_text(json.dumps(result, indent=2))
    (out / "pretrain_protocol.md").write_text(markdown(result) + "\n")
    return result


if __name__ == "__main__":
    main()
