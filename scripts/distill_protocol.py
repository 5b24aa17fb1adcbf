"""Distilled vs randomly initialised context encoder vs its frozen front end, fold by fold, paired.

For every speaker-independent fold (`evaluation.protocols.make_folds`, k-fold over speakers):
1. distil (experiment=distill, or any distillation config) on the audio of the fold's training
   speakers only: no emotion label is read in training; `--val-speakers` of those speakers are held
   out for the checkpoint monitor (`val/probe_ua`), so the fold's test speakers are never seen;
2. embed the clips of every speaker with three encoders: the front end alone (e.g. the frozen
   pretrained GE2E model), the context encoder at its random initialisation (the exact weights the
   fold's distillation started from) and the distilled context encoder (the selected checkpoint);
3. fit each head on the training speakers' embeddings and score the fold's test speakers.
Then per head, the paired comparison over folds (`evaluation.statistics.paired_comparison`:
corrected resampled t-test, Wilcoxon, bootstrap interval) of distilled vs random init and of
distilled vs the front end.

    python scripts/distill_protocol.py experiment=distill data=emodb data.root=/work/shared/corpora/emodb
    python scripts/distill_protocol.py experiment=distill data=emodb data.root=... trainer.max_epochs=4 --folds 0 1
    python scripts/distill_protocol.py <same overrides and options> --merge run0/distill_protocol.json run1/...

Folds can run in separate processes (`--folds k` each, e.g. in parallel) and be combined with `--merge`:
the folds and each fold's run are deterministic, so the merged report is the one a single process
writes. A frozen front end's frames are computed once and shared by the encoders compared
(`FrozenFrontEndCache`). A fold with fewer distillation speakers than `data.n_speakers` batches
all of them (logged).

Positional `key=value` arguments are Hydra overrides of configs/train.yaml.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
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

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from cluster_analysis import build_datamodule, load_encoder, select_records  # noqa: E402
from datamodules.speaker_datamodule import split_speakers  # noqa: E402
from evaluation.embeddings_io import EmbeddingSet  # noqa: E402
from evaluation.protocols import make_folds  # noqa: E402
from evaluation.run_heads import run_evaluation  # noqa: E402
from evaluation.statistics import paired_comparison  # noqa: E402
from lightning_modules.clip_embedding import embed_records  # noqa: E402
from lightning_modules.embedding_module import load_embedding_module  # noqa: E402
from pretrain_protocol import fold_config  # noqa: E402
from utils.compose import compose_config  # noqa: E402

log = logging.getLogger("distill_protocol")
ENCODERS = ("front_end", "random_init", "distilled")
METRICS = ("ua", "wa", "macro_f1")


class StartSnapshot(L.Callback):
    """Keeps the student's weights as training starts: the random initialisation the run distils from."""

    def __init__(self):
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}


class FrozenFrontEndCache:
    """Memoises a frozen front end's frames by the exact input: the random-init and distilled encoders of
    every fold embed the same windows through the same frozen front end (e.g. pretrained GE2E), so it runs
    once per window batch instead of twice per fold. Keyed by a fingerprint of the front end's weights too,
    so a front end that differs (or was trained) never reads another's frames."""

    def __init__(self):
        self.store: dict[tuple, torch.Tensor] = {}
        self.hits = self.misses = 0

    @staticmethod
    def _digest(t: torch.Tensor) -> str:
        return hashlib.blake2b(t.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()

    def attach(self, module) -> None:
        backbone = getattr(module, "backbone", module)
        if not getattr(backbone, "freeze_front_end", False):
            return  # a trained front end differs between the encoders: nothing to share
        front = backbone.front_end
        weights = hashlib.blake2b(digest_size=16)
        for name, value in sorted(front.state_dict().items()):
            weights.update(name.encode())
            weights.update(self._digest(value.float()).encode())
        fingerprint, compute = weights.hexdigest(), front.frames

        def frames(wav: torch.Tensor) -> torch.Tensor:
            key = (fingerprint, tuple(wav.shape), str(wav.dtype), self._digest(wav))
            if key in self.store:
                self.hits += 1
            else:
                self.misses += 1
                self.store[key] = compute(wav).detach()
            return self.store[key]

        front.frames = frames  # an instance attribute: this module only


def score(emb_set: EmbeddingSet, test_speakers, heads: list[str], seed: int) -> dict:
    res = run_evaluation(emb_set, heads=heads, protocol="speakers", test_speakers=list(test_speakers), seed=seed,
                         out_dir=None, verbose=False)
    return {h: {m: float(res[h][m]) for m in METRICS} for h in heads}


def markdown(result: dict) -> str:
    s = result["settings"]
    cmd = " ".join(["python scripts/distill_protocol.py", *s["overrides"], *s.get("options", [])])
    if s.get("merged_from"):
        cmd += f" --folds k (one process per fold k in {s['folds_run']}), merged with --merge"
    elif s["folds_run"] != list(range(s["n_folds"])):
        cmd += f" --folds {' '.join(map(str, s['folds_run']))}"
    lines = [f"### Distillation protocol: {s['corpus']}, {s['n_folds']}-fold speaker-independent "
             f"({len(s['folds_run'])} fold(s) run)", "", f"`{cmd}`", "",
             "| head | encoder | UA | WA | macro-F1 |", "|---|---|---:|---:|---:|"]
    for head in s["heads"]:
        for enc in ENCODERS:
            m = result["summary"][head][enc]
            lines.append(f"| {head} | {enc.replace('_', ' ')} | " + " | ".join(
                f"{100 * m[k]:.1f} ± {100 * m[k + '_std']:.1f}" for k in METRICS) + " |")
    if result["comparisons"]:
        lines += ["", "| head | UA comparison | mean difference | 95% CI (corrected t) | p corrected t | p Wilcoxon | "
                      "wins | verdict |", "|---|---|---:|---|---:|---:|---|---|"]
        for head, by_pair in result["comparisons"].items():
            for pair, c in by_pair.items():
                t = c.get("corrected_t")
                lines.append(f"| {head} | {pair.replace('_', ' ')} | {100 * c['mean_difference']:+.1f} | "
                             + (f"[{100 * t['low']:+.1f}, {100 * t['high']:+.1f}] | {t['p_value']:.3g}" if t else "n/a | n/a")
                             + f" | {c['wilcoxon']['p_value']:.3g} | {c['wins_a']} / {c['wins_b']} | {c['verdict']} |")
    lines += ["", "| fold | test speakers | " + " | ".join(f"{h} UA {e.replace('_', ' ')}" for h in s["heads"] for e in ENCODERS)
              + " | steps | frame loss, first 3 → last 3 steps | utterance loss | EMA decay | minutes |",
              "|---|---|" + "---:|" * (len(s["heads"]) * 3) + "---:|---|---|---|---:|"]
    for f in result["folds"]:
        ua = " | ".join(f"{100 * f['scores'][e][h]['ua']:.1f}" for h in s["heads"] for e in ENCODERS)
        rows = f.get("loss_history") or []
        decay = f"{rows[0]['ema_decay']:.5f} → {rows[-1]['ema_decay']:.5f}" if rows and "ema_decay" in rows[0] else "n/a"
        lines.append(f"| {f['fold']} | {', '.join(f['test_speakers'])} | {ua} | {len(rows)} | {first_last(rows, 'frame_loss')} | "
                     f"{first_last(rows, 'utterance_loss')} | {decay} | {f['seconds'] / 60:.1f} |")
    return "\n".join(lines)


class LossHistory(L.Callback):
    """Per optimiser step: both losses and the EMA decay (a one-epoch run still shows whether they fall)."""

    KEYS = ("train/frame_loss", "train/utterance_loss", "train/ema_decay")

    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = trainer.callback_metrics
        self.rows.append({k.split("/")[1]: float(m[k]) for k in self.KEYS if k in m})


def first_last(rows: list[dict], key: str, n: int = 3) -> str:
    v = [r[key] for r in rows if key in r]
    return f"{np.mean(v[:n]):.3f} → {np.mean(v[-n:]):.3f}" if v else "n/a"


def settings_of(args, cfg) -> dict:
    return {"overrides": list(args.overrides), "options": options_of(args), "corpus": str(cfg.data.corpus),
            "n_folds": args.n_folds, "seed": args.seed, "label_set": args.label_set, "heads": list(args.heads),
            "val_speakers": args.val_speakers}


def options_of(args) -> list[str]:
    """The protocol options that differ from their defaults (so the printed command reproduces the run)."""
    out = []
    for flag, value, default in (("--n-folds", args.n_folds, 5), ("--seed", args.seed, 0),
                                 ("--label-set", args.label_set, "four"), ("--val-speakers", args.val_speakers, 0.25)):
        if value != default:
            out += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if list(args.heads) != ["svm", "linear"]:
        out += ["--heads", *args.heads]
    return out


def assemble(per_fold: list[dict], settings: dict) -> dict:
    """Per-head summary over the folds run and the paired comparisons (needs >= 2 folds)."""
    heads = settings["heads"]
    per_fold = sorted(per_fold, key=lambda f: f["fold"])
    summary = {h: {e: {**{m: float(np.mean([f["scores"][e][h][m] for f in per_fold])) for m in METRICS},
                       **{f"{m}_std": float(np.std([f["scores"][e][h][m] for f in per_fold])) for m in METRICS}}
                   for e in ENCODERS} for h in heads}
    comparisons = {}
    if len(per_fold) >= 2:
        ratio = float(np.mean([f["test_train_ratio"] for f in per_fold]))
        for h in heads:
            comparisons[h] = {f"distilled_vs_{b}": paired_comparison(
                [f["scores"]["distilled"][h]["ua"] for f in per_fold], [f["scores"][b][h]["ua"] for f in per_fold],
                test_train_ratio=ratio) for b in ("random_init", "front_end")}
    settings = {**settings, "folds_run": [f["fold"] for f in per_fold]}
    return {"settings": settings, "summary": summary, "comparisons": comparisons, "folds": per_fold}


def merge(paths: list[str], settings: dict) -> dict:
    """Folds run in separate processes (`--folds k` each; the folds and every fold's run are deterministic,
    so they are the folds one process would have run), read from their partial or final JSON files."""
    per_fold: dict[int, dict] = {}
    for p in paths:
        data = json.loads(Path(p).read_text())
        for f in data["folds"] if isinstance(data, dict) else data:
            if f["fold"] in per_fold:
                raise SystemExit(f"--merge: fold {f['fold']} appears twice (again in {p})")
            per_fold[f["fold"]] = f
    return assemble(list(per_fold.values()), {**settings, "merged_from": list(paths)})


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=distill data=emodb data.root=...")
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--folds", type=int, nargs="*", default=None, help="run only these fold indices (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="fold assignment and head seed")
    ap.add_argument("--label-set", choices=("four", "all"), default="four", help="evaluation classes")
    ap.add_argument("--heads", nargs="+", default=["svm", "linear"], help="evaluation heads")
    ap.add_argument("--batch-size", type=int, default=32, help="utterances per embedding batch")
    ap.add_argument("--val-speakers", type=float, default=0.25,
                    help="validation speakers carved out of each fold's training speakers (fraction < 1, or a count)")
    ap.add_argument("--out", default=None, help="output folder (default: logs/distill_protocol/<corpus>)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="no training: combine the folds of earlier runs (partial or final JSON files) into one report")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.merge:
        cfg = compose_config("train.yaml", list(args.overrides), ROOT / "logs" / "distill_protocol")
        out = Path(args.out or ROOT / "logs" / "distill_protocol" / str(cfg.data.corpus))
        out.mkdir(parents=True, exist_ok=True)
        result = merge(args.merge, settings_of(args, cfg))
        return write_report(result, out)

    base = list(args.overrides) + ["data.val_speakers=0"]
    probe = compose_config("train.yaml", base, ROOT / "logs" / "distill_protocol")
    out = Path(args.out or ROOT / "logs" / "distill_protocol" / str(probe.data.corpus))
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_config("train.yaml", base, out)
    if "distillation" not in str(cfg.model._target_):
        raise SystemExit(f"model._target_={cfg.model._target_}: this protocol compares distillation runs "
                         "(experiment=distill); use scripts/pretrain_protocol.py for other objectives")
    dm = build_datamodule(cfg)
    records, emotions = select_records(dm.train_records, args.label_set)
    speakers = np.array([r.speaker for r in records])
    utt, labels = np.array([r.utt_id for r in records]), np.array(emotions)

    cache = FrozenFrontEndCache()

    def embed(module) -> EmbeddingSet:
        cache.attach(module)
        return EmbeddingSet(embed_records(module.cpu().eval(), dm, records, args.batch_size), labels, speakers, utt_id=utt)

    t0 = time.perf_counter()
    front = embed(load_encoder(cfg, None))  # the front end as configured (e.g. pretrained GE2E), no training
    log.info("front-end embeddings of %d clips in %.1fs", len(records), time.perf_counter() - t0)
    folds = make_folds(front, "kfold", n_folds=args.n_folds, seed=args.seed)
    run_idx = list(range(len(folds))) if args.folds is None else sorted(set(args.folds))

    from utils.training import train

    per_fold = []
    for k in run_idx:
        fold, t_fold = folds[k], time.perf_counter()
        train_speakers = sorted(set(speakers[fold.train_idx].tolist()))
        n_val = int(args.val_speakers) if args.val_speakers >= 1 else args.val_speakers
        fcfg = fold_config(list(args.overrides), out / f"fold{k}", train_speakers, n_val)
        n_distil = len(split_speakers(train_speakers, n_val, int(fcfg.data.get("seed", 0)))[0])
        with open_dict(fcfg):
            if int(fcfg.data.n_speakers) > n_distil:  # a fold with more test speakers has fewer to batch from
                log.info("fold %d: data.n_speakers %d -> %d (the fold's distillation speakers)", k,
                         int(fcfg.data.n_speakers), n_distil)
                fcfg.data.n_speakers = n_distil
            fcfg.callbacks.start_snapshot = {"_target_": "scripts.distill_protocol.StartSnapshot"}
            fcfg.callbacks.loss_history = {"_target_": "scripts.distill_protocol.LossHistory"}
        metrics, objs = train(fcfg)
        val_speakers = list(objs["datamodule"].val_speakers)
        seen = set(val_speakers) | {r.speaker for r in objs["datamodule"].train_records}
        if seen & set(fold.test_speakers):  # data.speakers makes this impossible; never let it pass
            raise RuntimeError(f"fold {k}: speakers {sorted(seen & set(fold.test_speakers))} were distilled on "
                               "and are test speakers")
        snap = next(cb for cb in objs["trainer"].callbacks if type(cb).__name__ == "StartSnapshot")
        history = next(cb for cb in objs["trainer"].callbacks if type(cb).__name__ == "LossHistory")
        best = metrics.get("best_ckpt_path") or ""
        distilled = load_embedding_module(best) if best else objs["model"].cpu()
        start = copy.deepcopy(distilled)
        start.load_state_dict(snap.state)
        sets = {"front_end": front, "random_init": embed(start), "distilled": embed(distilled)}
        entry = {"fold": k, "test_speakers": list(fold.test_speakers), "train_speakers": train_speakers,
                 "val_speakers": val_speakers, "selected_checkpoint": best or "last epoch",
                 "scores": {e: score(s, fold.test_speakers, args.heads, args.seed) for e, s in sets.items()},
                 "loss_history": history.rows, "test_train_ratio": len(fold.test_idx) / len(fold.train_idx),
                 "seconds": time.perf_counter() - t_fold}
        per_fold.append(entry)
        log.info("front-end frame cache: %d hits, %d misses", cache.hits, cache.misses)
        log.info("fold %d: %s, %.1f min", k, {e: {h: round(v[h]["ua"], 3) for h in args.heads}
                                               for e, v in entry["scores"].items()}, entry["seconds"] / 60)
        (out / "distill_protocol.partial.json").write_text(json.dumps(per_fold, indent=2))
        del distilled, start, objs

    result = assemble(per_fold, {**settings_of(args, cfg), "n_folds": len(folds), "n_clips_evaluated": len(records)})
    return write_report(result, out)


def write_report(result: dict, out: Path) -> dict:
    table = markdown(result)
    print(table)
    (out / "distill_protocol.json").write_text(json.dumps(result, indent=2))
    (out / "distill_protocol.md").write_text(table + "\n")
    print(f"wrote {out}/distill_protocol.json and distill_protocol.md")
    return result


if __name__ == "__main__":
    main()
