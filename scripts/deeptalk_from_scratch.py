"""Does DeepTalk learn speakers from a random init? Held-out EER before/after the default training.

Runs the default `python train.py` configuration (triplet, DeepTalk, synthetic corpus, 3 epochs) under
init/miner variants, with the same seed and data, and prints validation-speaker EER before and after
training plus the init's embedding spread (mean pairwise cosine of different clips: 1.0 = collapsed).

    python scripts/deeptalk_from_scratch.py                       # the variants below
    python scripts/deeptalk_from_scratch.py --epochs 6 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts._bench_common import machine_description  # noqa: E402

VARIANTS = {
    # the init and loss settings before the fix: GST default init, batch-hard triplet, margin 0.2
    "paper_init+batch_hard": ["+backbone.gst_paper_init=true", "+backbone.gst_normalize_query=false",
                              "+backbone.gst_token_init_std=0.5", "model.miner=batch_hard", "model.margin=0.2",
                              "model.lr=0.001"],
    "paper_init+batch_all": ["+backbone.gst_paper_init=true", "+backbone.gst_normalize_query=false",
                             "+backbone.gst_token_init_std=0.5"],
    "scaled_init+batch_hard": ["model.miner=batch_hard", "model.margin=0.2", "model.lr=0.001"],
    "default (scaled_init+batch_all)": [],
}


def spread(model, datamodule) -> float:
    from lightning_modules.clip_embedding import embed_records

    e = embed_records(model, datamodule, datamodule.val_records[:48])
    import numpy as np

    sim = e @ e.T
    return float(sim[~np.eye(len(e), dtype=bool)].mean())


def run(overrides: list[str], seed: int, epochs: int, out: Path) -> dict:
    from hydra.utils import instantiate

    from utils.compose import compose_config
    from tasks.train import build_model

    cfg = compose_config("train", [f"seed={seed}", f"trainer.max_epochs={epochs}", "callbacks.model_summary=null",
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
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[12345])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--out", default="logs/deeptalk_from_scratch")
    args = ap.parse_args()
    from utils.console import quiet_console

    quiet_console()
    print(machine_description())
    print("| variant | seed | EER before | EER after | mean cos at init | after |\n|---|---|---|---|---|---|")
    for name in args.variants:
        for seed in args.seeds:
            r = run(VARIANTS[name], seed, args.epochs, Path(args.out) / name.split()[0] / str(seed))
            print(f"| {name} | {seed} | {r['eer_before']:.3f} | {r['eer_after']:.3f} | {r['init_cos']:.3f} | "
                  f"{r['cos_after']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
