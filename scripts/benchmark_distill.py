"""Training throughput of the distillation objective: small default vs emotion2vec-base preset, fp32 vs bf16-mixed.

  python scripts/benchmark_distill.py --steps 3 --out bench_distill.md
  python scripts/benchmark_distill.py --presets distill --clips 32 --steps 5 [hydra overrides ...]

Each (preset, precision) runs in its own process so that its peak memory (max RSS, which never goes
down) is its own: the real `training_step` (front end once per clip, teacher forward, `clone_batch`
masked student passes, both losses), backward, AdamW step and the EMA update, on random waveforms of
the preset's crop length (the arithmetic does not depend on the audio). One warm-up step, then the
timed ones. Throughput is seconds of audio per second of wall time (each clip counted once, not per
clone).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRECISIONS = ("32-true", "bf16-mixed")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(preset: str, precision: str, steps: int, clips: int | None, threads: int, overrides: list[str]) -> dict:
    import torch

    from utils.compose import compose_config
    from tasks.train import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = compose_config("train.yaml", [f"experiment={preset}", *overrides], tempfile.mkdtemp())
    model = build_model(cfg)
    model.train()
    model.log = lambda *a, **k: None  # no trainer attached
    n_clips = clips or int(cfg.data.n_speakers) * int(cfg.data.n_per_speaker)
    crop = float(cfg.data.crop_seconds)
    wav = torch.randn(n_clips, int(round(crop * model.backbone.sample_rate))) * 0.1
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rss_built = rss_mib()
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed"
                else torch.autocast("cpu", enabled=False))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        with autocast:
            loss = model.training_step({"wav": wav}, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.ema_step()
        times.append(time.perf_counter() - start)
    timed = sum(times[1:])
    return {"preset": preset, "precision": precision, "threads": threads, "steps": steps, "clips": n_clips,
            "crop_seconds": crop, "clone_batch": int(model.hparams.clone_batch),
            "student_params_m": sum(p.numel() for p in model.backbone.parameters()) / 1e6,
            "front_end": type(model.backbone.front_end).__name__,
            "seconds_per_step": timed / steps, "audio_seconds_per_second": n_clips * crop * steps / timed,
            "rss_after_build_mib": rss_built,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_loss": float(loss.detach())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["distill", "distill_base"], help="experiment configs")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--clips", type=int, nargs="+", default=None,
                    help="clips per batch for each preset (default: the preset's P x K)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", nargs=2, metavar=("PRESET", "PRECISION"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-clips", type=int, default=None, help=argparse.SUPPRESS)
    args, overrides = ap.parse_known_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.worker_clips, args.threads, overrides)))
        return
    if args.clips and len(args.clips) not in (1, len(args.presets)):
        raise SystemExit(f"--clips: give one value or one per preset ({len(args.presets)})")
    from scripts._bench_common import machine_description

    machine = machine_description()
    rows = []
    for i, preset in enumerate(args.presets):
        clips = (args.clips[i] if len(args.clips) > 1 else args.clips[0]) if args.clips else None
        for precision in PRECISIONS:
            cmd = [sys.executable, __file__, "--worker", preset, precision, "--steps", str(args.steps),
                   "--threads", str(args.threads), *(["--worker-clips", str(clips)] if clips else []), *overrides]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PROJECT_ROOT": str(ROOT)})
            if proc.returncode:
                raise SystemExit(f"{preset} {precision} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{preset} {precision}: {r['audio_seconds_per_second']:.2f} audio s/s, {r['seconds_per_step']:.1f} s/step, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    command = " ".join(["python scripts/benchmark_distill.py", f"--presets {' '.join(args.presets)}",
                        f"--steps {args.steps}", f"--threads {args.threads}",
                        *([f"--clips {' '.join(map(str, args.clips))}"] if args.clips else []), *overrides])
    lines = [f"Command: `{command}`", "", f"Machine: {machine}", "",
             "| preset | front end | student params | precision | threads | clips × crop × clones | s / step | "
             "audio s / s | RSS after build → peak (MiB) |", "|---|---|---:|---|---:|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['front_end']} | {r['student_params_m']:.1f} M | {r['precision']} | {r['threads']} | "
                     f"{r['clips']} × {r['crop_seconds']:.1f} s × {r['clone_batch']} | {r['seconds_per_step']:.2f} | "
                     f"{r['audio_seconds_per_second']:.2f} | {r['rss_after_build_mib']:.0f} → {r['peak_rss_mib']:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
