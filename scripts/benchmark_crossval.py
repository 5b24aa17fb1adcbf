"""The cost of crossval.py's frozen work, as ratios measured in one run (BENCHMARKS.md, "crossval.py").

    python scripts/benchmark_crossval.py data=emodb data.root=/data/emodb

1. `extraction`: one pass of the pretrained GE2E over the evaluated clips (the final embedding, nothing cached);
   `extraction_probe_features`: one pass computing what the default probes read (the embedding and every
   layer's statistics together, `features=auto`), nothing cached.
2. `baseline`: what crossval.py spends on the frozen GE2E baseline over every fold of eval.n_folds x eval.repeats
   (default 5 x 5): its clip features from an empty cache (`baseline_features`: one pass for the embedding and
   the layer statistics, then read back) and both default probes fitted and scored on every fold
   (`baseline_probes`). Goal: <= 1.3 x `extraction` (the frozen work alone: `baseline_features`; the probes'
   fitting is not frozen work, and on a corpus as small as EmoDB it outweighs a whole extraction pass).
3. `forward`: the full encoder (GE2E, every layer) over one fold's training clips, whole, no gradient.
4. `ser_finetune freeze=all` and `freeze=partial` epochs on that fold (training and validation, the frozen
   prefix store built before the first epoch and not counted), an epoch being one pass over the fold's training
   clips (`data.batches_per_epoch=null`; the experiment's default epoch is 20 steps): goals <= 0.1 x and
   <= 2 x `forward`.
Everything runs in this process, one after the other; fresh cache folders under --work.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from utils.compose import compose_config


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--work", default="logs/benchmark_crossval")
    ap.add_argument("--epochs", type=int, default=4, help="epochs timed per freezing mode (the first one is left out)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from callbacks.epoch_timer import EpochTimer
    from lightning_modules.backbones.ge2e import GE2EBackbone
    from lightning_modules.clip_embedding import embed_clips
    from tasks.crossval import plan_of, restrict, score_probes
    from tasks.train import train

    overrides = ["experiment=ser_finetune", *args.overrides, f"paths.data_dir={work / 'data'}",
                 f"paths.log_dir={work / 'logs'}"]
    if Path("data/manifests").is_dir():  # the corpus manifest, built before (its audio checks are not measured here)
        shutil.copytree(Path("data/manifests"), work / "data" / "manifests")
    cfg = compose_config("crossval.yaml", overrides, work / "run")
    dm, records, label_set, plan, _ = plan_of(cfg)
    out = {"clips": len(records), "folds": len(plan.folds), "threads": torch.get_num_threads()}
    ge2e = GE2EBackbone().eval()
    list(dm.utterance_loader(records, 16))  # a first read warms the page cache; every timing below decodes

    t0 = time.perf_counter()
    for b in dm.utterance_loader(records, 16):
        embed_clips(ge2e, b["wavs"], "embedding")
    out["extraction_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()  # the pass the probes need: the embedding and every layer's statistics together
    for b in dm.utterance_loader(records, 16):
        embed_clips(ge2e, b["wavs"], "auto")
    out["extraction_probe_features_s"] = time.perf_counter() - t0

    ctx = {"dm": dm, "records": records, "label_set": label_set, "eval": cfg.eval, "seed": int(cfg.seed),
           "classes": list(cfg.eval.classes), "cache_dir": work / "clip_features", "batch_size": 16}
    probes = [dict(p) for p in cfg.crossval.probes]
    from lightning_modules.clip_feature_cache import clip_features

    t0 = time.perf_counter()  # the frozen work of the baseline: every clip's features, once (then read back)
    clip_features(ge2e, dm, records, [p["features"] for p in probes], ctx["cache_dir"], 16)
    out["baseline_features_s"] = time.perf_counter() - t0
    for fold in plan.folds:
        score_probes("baseline", ge2e, ctx, fold, probes)
    out["baseline_s"] = time.perf_counter() - t0
    out["baseline_probes_s"] = out["baseline_s"] - out["baseline_features_s"]
    out["baseline_over_extraction"] = out["baseline_s"] / out["extraction_s"]
    out["baseline_features_over_extraction"] = out["baseline_features_s"] / out["extraction_s"]
    out["baseline_over_probe_features_pass"] = out["baseline_s"] / out["extraction_probe_features_s"]
    out["baseline_features_over_probe_features_pass"] = out["baseline_features_s"] / out["extraction_probe_features_s"]

    fold = plan.folds[0]
    train_speakers = sorted(set(label_set.speaker[fold.train_idx].tolist()))
    train_records = [r for r in records if r.speaker in set(train_speakers)]
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in dm.utterance_loader(train_records, 16):
            for w in b["wavs"]:
                ge2e.layers(w.reshape(1, -1))
    out["forward_s"] = time.perf_counter() - t0
    out["forward_clips"] = len(train_records)

    for mode in ("all", "partial"):
        fc = restrict(cfg, work / f"train_{mode}", train_speakers, 2, int(cfg.seed))
        from omegaconf import open_dict

        with open_dict(fc):
            fc.model.freeze = mode
            fc.trainer.max_epochs = args.epochs
            fc.trainer.min_epochs = 1
            fc.data.batches_per_epoch = None  # an epoch = one pass over the fold's training clips, as `forward`
            fc.callbacks.pop("early_stopping", None)
            fc.callbacks.epoch_timer = {"_target_": "callbacks.epoch_timer.EpochTimer"}
        _, objs = train(fc)
        timer = next(cb for cb in objs["trainer"].callbacks if isinstance(cb, EpochTimer))
        per_epoch = float(np.median(timer.seconds[1:] or timer.seconds))
        out[f"epoch_{mode}_s"] = per_epoch
        out[f"epoch_{mode}_over_forward"] = per_epoch / out["forward_s"]
        out[f"epoch_{mode}_all_s"] = timer.seconds
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
