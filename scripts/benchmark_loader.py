"""Data-loader throughput from files and from tar shards, beside how fast the model consumes clips.

  python scripts/benchmark_loader.py --workers 2 --epochs 2 --out bench_loader.md [hydra overrides ...]

Also samples the resident memory (RSS) of each loader worker through the epochs: it must stay
flat (no per-clip growth), or long runs on large corpora die of memory.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from scripts._bench_common import machine_description  # noqa: E402
from utils.compose import compose_config  # noqa: E402


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def worker_rss_sampler(stop: threading.Event, samples: list) -> None:
    import multiprocessing

    while not stop.is_set():
        samples.append([rss_mib(p.pid) for p in multiprocessing.active_children()])
        time.sleep(0.5)


def run_loader(dm, epochs: int) -> tuple[float, int, list]:
    loader = dm.train_dataloader()
    samples, stop = [], threading.Event()
    th = threading.Thread(target=worker_rss_sampler, args=(stop, samples), daemon=True)
    th.start()
    n, start = 0, time.perf_counter()
    for epoch in range(epochs):
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        for batch in loader:
            n += len(batch["wav"])
    elapsed = time.perf_counter() - start
    stop.set(), th.join()
    return elapsed, n, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model-steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args, overrides = ap.parse_known_args()
    tmp = tempfile.mkdtemp()
    rows = []
    for fmt in ("files", "shards"):
        extra = [f"data.num_workers={args.workers}", f"data.format={fmt}"]
        if fmt == "shards":
            extra += [f"data.shards_dir={tmp}/shards", "data.clips_per_shard=64"]
        cfg = compose_config("train.yaml", overrides + extra, tmp)
        dm = instantiate(cfg.data, _convert_="all")
        dm.prepare_data()
        dm.setup("fit")
        elapsed, n, samples = run_loader(dm, args.epochs)
        rss = [max(s) for s in samples if s]
        first, last = (rss[len(rss) // 10] if rss else 0), (rss[-1] if rss else 0)
        rows.append((fmt, n / elapsed, first, last))

    # How fast the model eats clips (forward + backward + step), same batches, one process.
    from scripts.benchmark_training import time_steps
    from tasks.train import build_model

    cfg = compose_config("train.yaml", overrides + ["data.num_workers=0"], tmp)
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(args.model_steps)]
    model = build_model(cfg)
    model.log = lambda *a, **k: None
    t = time_steps(model, batches, "32-true")
    model_rate = sum(len(b["wav"]) for b in batches) / t

    lines = [f"Command: `python scripts/benchmark_loader.py --workers {args.workers} --epochs {args.epochs} {' '.join(overrides)}`",
             "", f"Machine: {machine_description()}", "",
             "| source | workers | clips/s delivered | × model consumption (CPU, fp32) | worker RSS early → end (MiB) |",
             "|---|---|---|---|---|"]
    for fmt, rate, first, last in rows:
        lines.append(f"| {fmt} | {args.workers} | {rate:.0f} | {rate / model_rate:.1f}× | {first:.0f} → {last:.0f} |")
    lines.append(f"| model (training step) | - | {model_rate:.1f} | 1× | - |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
