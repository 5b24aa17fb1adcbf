"""Training throughput of an experiment on this machine: clips/s and seconds of audio per second, fp32 vs bf16.

  python scripts/benchmark_training.py --steps 20 --out bench_training.md [hydra overrides ...]

Runs the objective's real training_step (forward, loss, backward, optimiser step) on batches from
the datamodule, pre-loaded so that only the model is timed; both precisions in one run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from scripts._bench_common import machine_description  # noqa: E402
from utils.compose import compose_config  # noqa: E402
from tasks.train import build_model  # noqa: E402


def time_steps(model, batches, precision: str) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else torch.autocast("cpu", enabled=False)
    # one warm-up step (oneDNN primitive creation), then the timed ones
    for i, batch in enumerate([batches[0]] + batches):
        if i == 1:
            start = time.perf_counter()
        with ctx:
            loss = model.training_step(batch, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args, overrides = ap.parse_known_args()
    torch.set_num_threads(args.threads)
    overrides = overrides or ["experiment=triplet_speaker"]
    cfg = compose_config("train.yaml", overrides, tempfile.mkdtemp())
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    batches = []
    while len(batches) < args.steps:
        try:
            batches.append(next(it))
        except StopIteration:
            it = iter(dm.train_dataloader())
    model = build_model(cfg)
    model.log = lambda *a, **k: None  # no trainer attached
    clip_s = batches[0]["wav"].shape[1] / cfg.data.sample_rate
    n_clips = sum(len(b["wav"]) for b in batches)
    rows = []
    for precision in ("32-true", "bf16-mixed"):
        t = time_steps(model, batches, precision)
        rows.append(f"| {precision} | {args.threads} | {len(batches)} × {len(batches[0]['wav'])} | {clip_s:.2f} | "
                    f"{n_clips / t:.1f} | {n_clips * clip_s / t:.1f} |")
    text = "\n".join([
        f"Command: `python scripts/benchmark_training.py --steps {args.steps} --threads {args.threads} {' '.join(overrides)}`",
        "", f"Machine: {machine_description()}", "",
        "| precision | threads | steps × batch | crop (s) | clips/s | audio s/s |", "|---|---|---|---|---|---|", *rows])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
