"""Does DeepTalk learn speakers from a random init? Held-out EER before/after the default training.

Runs the default `python train.py` configuration (DeepTalk, synthetic corpus, GE2E loss, the filterbank at
30x the learning rate, 15 epochs) under loss/init/learning-rate variants, with the same seeds and data, and
prints validation-speaker EER before and after training plus the init's embedding spread (mean pairwise
cosine of different clips: 1.0 = collapsed).

    python scripts/deeptalk_from_scratch.py --seeds 12345 1 2 3      # the loss x filterbank-rate variants
    python scripts/deeptalk_from_scratch.py --epochs 3 --variants paper_init+batch_hard "default (ge2e+filterbank_30x)"
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts._bench_common import machine_description  # noqa: E402

TRIPLET = ["model.loss=triplet"]
BEFORE_ISSUE_20 = ["model.backbone_lr_scales.filterbank=1", "model.warmup_steps=0"]  # one lr, no warm-up
VARIANTS = {
    # the init and loss settings before the init fix: GST default init, batch-hard triplet, margin 0.2
    "paper_init+batch_hard": [*TRIPLET, *BEFORE_ISSUE_20, "+backbone.gst_paper_init=true",
                              "+backbone.gst_normalize_query=false", "+backbone.gst_token_init_std=0.5",
                              "model.miner=batch_hard", "model.margin=0.2", "model.lr=0.001"],
    "paper_init+batch_all": [*TRIPLET, *BEFORE_ISSUE_20, "+backbone.gst_paper_init=true",
                             "+backbone.gst_normalize_query=false", "+backbone.gst_token_init_std=0.5"],
    "scaled_init+batch_hard": [*TRIPLET, *BEFORE_ISSUE_20, "model.miner=batch_hard", "model.margin=0.2",
                               "model.lr=0.001"],
    # the default before issue 20 (with its 3 epochs: --epochs 3), then the loss and the filterbank's rate
    "batch_all_triplet+filterbank_1x": [*TRIPLET, *BEFORE_ISSUE_20],
    "batch_all_triplet+filterbank_30x": TRIPLET,
    "ge2e+filterbank_1x": BEFORE_ISSUE_20,
    "default (ge2e+filterbank_30x)": [],
}
DEFAULT_VARIANTS = ["batch_all_triplet+filterbank_1x", "batch_all_triplet+filterbank_30x", "ge2e+filterbank_1x",
                    "default (ge2e+filterbank_30x)"]


def spread(model, datamodule) -> float:
    from lightning_modules.clip_embedding import embed_records

    e = embed_records(model, datamodule, datamodule.val_records[:48])
    import numpy as np

    sim = e @ e.T
    return float(sim[~np.eye(len(e), dtype=bool)].mean())


def run(overrides: list[str], seed: int, epochs: int | None, out: Path) -> dict:
    from hydra.utils import instantiate

    from utils.compose import compose_config
    from tasks.train import build_model

    budget = [] if epochs is None else [f"trainer.max_epochs={epochs}"]
    cfg = compose_config("train", [f"seed={seed}", *budget, "callbacks.model_summary=null",
                                   "callbacks.progress_bar=null", *overrides], output_dir=out)
    import lightning as L

    L.seed_everything(seed, workers=True)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = build_model(cfg)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    before = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/eer"]
    cos0 = spread(model, datamodule)
    trainer.fit(model, datamodule=datamodule)
    after = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/eer"]
    return {"eer_before": before, "eer_after": after, "init_cos": cos0, "cos_after": spread(model, datamodule)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's (trainer.max_epochs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[12345])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--out", default="logs/deeptalk_from_scratch")
    args = ap.parse_args()
    from utils.console import quiet_console

    quiet_console()
    print(machine_description())
    print("| variant | seed | EER before | EER after | mean cos at init | after | s |\n|---|---|---|---|---|---|---|")
    for name in args.variants:
        for seed in args.seeds:
            start = time.perf_counter()
            r = run(VARIANTS[name], seed, args.epochs, Path(args.out) / name.split()[0] / str(seed))
            print(f"| {name} | {seed} | {r['eer_before']:.3f} | {r['eer_after']:.3f} | {r['init_cos']:.3f} | "
                  f"{r['cos_after']:.3f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
