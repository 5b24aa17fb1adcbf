"""How fast the backbones turn audio into utterance embeddings on CPU, in one run.

(a) DeepTalk (random weights: speed does not depend on them) at 16 kHz and DeepTalk's 8 kHz,
    float32 and bf16 autocast, on 1 and 2 threads: x real time and achieved GFLOP/s
    (analytic FLOPs of the windows actually embedded / wall time).
(b) backbone=ge2e beside Resemblyzer's own `VoiceEncoder.embed_utterance` on the same
    preprocessed EmoDB files (synthetic tones when ../shared is absent), same thread count, and
    the cosine between the two embeddings of every file.

Times are best-of-`--repeats` passes over the same clips after one warm-up call (oneDNN builds its
kernels on first use). Both wall and process CPU time are reported: on a shared machine the wall
figure is what a user sees, CPU time is closer to what the code costs. Decoding and resampling
are not timed. Writes a markdown section to `--out` and prints it.

    python scripts/benchmark_extraction.py --out benchmarks/extraction.md
    python scripts/benchmark_extraction.py --max-files 100 --threads 1 --repeats 1   # quick look
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.audio import load_audio
from lightning_modules.backbones import (
    DeepTalkBackbone,
    GE2EBackbone,
    flops_per_second_of_audio,
)
from lightning_modules.clip_embedding import embed_clips

EMODB = ROOT.parent / "shared" / "corpora" / "emodb" / "wav"


@dataclass
class Row:
    backbone: str
    implementation: str
    sample_rate: int
    precision: str
    threads: int
    audio_s: float
    wall_s: float
    cpu_s: float
    gflop: float | None  # FLOPs of the windows actually embedded (overlap included)

    def cells(self) -> list[str]:
        gflops = f"{self.gflop / self.wall_s:.1f}" if self.gflop else "–"
        return [self.backbone, self.implementation, f"{self.sample_rate // 1000} kHz", self.precision, str(self.threads),
                f"{self.audio_s:.0f}", f"{self.wall_s:.2f}", f"**{self.audio_s / self.wall_s:.0f}×**",
                f"{self.audio_s / self.cpu_s:.0f}×", gflops]


def machine_description() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name", platform.processor() or "unknown")
    if "cpu family" in info:
        cpu += f" (family {info['cpu family']}, model {info.get('model', '?')}, stepping {info.get('stepping', '?')})"
    flags = set(info.get("flags", "").split())
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "n/a"
    onednn = next((w for w in torch.__config__.show().split() if w.startswith(("v3", "v2"))), "?")
    return {"CPU": cpu, "logical CPUs": str(os.cpu_count()), "ISA flags": isa,
            "torch": f"{torch.__version__} (ATen CPU capability {torch.backends.cpu.get_cpu_capability()}, oneDNN {onednn})",
            "python": platform.python_version(), "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall, cpu) seconds, each the minimum over `repeats` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def synthetic_clips(n: int, sample_rate: int, seed: int = 0) -> list[torch.Tensor]:
    """Harmonic tones with noise, 1.5-3.5 s: a stand-in corpus when ../shared is absent."""
    g = torch.Generator().manual_seed(seed)
    clips = []
    for _ in range(n):
        length = int(sample_rate * (1.5 + 2.0 * torch.rand(1, generator=g).item()))
        t = torch.arange(length) / sample_rate
        f0 = 100 + 150 * torch.rand(1, generator=g)
        clips.append(0.1 * sum(torch.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 5)) + 0.005 * torch.randn(length, generator=g))
    return clips


def embed_dataset(model: torch.nn.Module, clips: list[torch.Tensor], batch_size: int, bf16: bool) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return torch.cat([embed_clips(model, clips[i : i + batch_size]).values for i in range(0, len(clips), batch_size)])


def bench_deeptalk(files: list[Path], rates: list[int], threads: list[int], precisions: list[str], repeats: int,
                   batch_size: int, n_synthetic: int) -> list[Row]:
    rows = []
    for sr in rates:
        clips = [load_audio(f, sr) for f in files] if files else synthetic_clips(n_synthetic, sr)
        torch.manual_seed(0)
        model = DeepTalkBackbone(sample_rate=sr).eval()
        win = model.window_samples()[0]
        windows = sum(len(model.split_windows(c)[0]) for c in clips)
        gflop = windows * win / sr * flops_per_second_of_audio(model) / 1e9
        audio_s = sum(len(c) for c in clips) / sr
        # The plain formulation (conv1d per frame + F.selu, what training runs) under the same conditions.
        plain = DeepTalkBackbone(sample_rate=sr).eval()
        plain.load_state_dict(model.state_dict())
        plain.filterbank.forward = plain.filterbank.reference
        for precision in precisions:
            for n in threads:
                torch.set_num_threads(n)
                for name, m in (("fast inference path", model), ("plain reference path", plain)):
                    if name.startswith("plain") and n != 1:
                        continue
                    embed_dataset(m, clips[:4], batch_size, precision == "bf16")  # warm-up
                    bf16 = precision == "bf16"
                    wall, cpu = best_time(lambda m=m, c=clips, bf16=bf16: embed_dataset(m, c, batch_size, bf16), repeats)
                    rows.append(Row("deeptalk", name, sr, precision, n, audio_s, wall, cpu, gflop))
                    print(f"  deeptalk {name} {sr} Hz {precision} {n} thread(s): {audio_s / wall:.1f}x real time "
                          f"({audio_s / cpu:.1f}x per CPU-second)", flush=True)
    return rows


def bench_ge2e(files: list[Path], all_files: list[Path], threads: list[int], repeats: int, batch_size: int,
               n_synthetic: int) -> tuple[list[Row], dict[str, float] | None]:
    """Timing on `files`; the cosine check on `all_files` (every EmoDB file when present)."""
    try:
        from resemblyzer import VoiceEncoder, preprocess_wav
    except ImportError:
        print("  resemblyzer not importable: GE2E rows skipped", flush=True)
        return [], None
    if all_files:
        wavs = [preprocess_wav(f) for f in all_files]  # Resemblyzer's own load + resample + normalise + VAD trim
    else:
        wavs = [preprocess_wav(c.numpy(), source_sr=16000) for c in synthetic_clips(n_synthetic, 16000)]
    clips = [torch.from_numpy(np.ascontiguousarray(w)) for w in wavs]
    ours, theirs = GE2EBackbone().eval(), VoiceEncoder("cpu", verbose=False)
    emb_theirs = np.stack([theirs.embed_utterance(w) for w in wavs])
    cosine: dict[str, float] = {"files": len(wavs)}
    # Default module (re-applies the -30 dBFS increase-only normalisation) and the exact mirror of
    # embed_utterance on already-preprocessed audio (normalize_volume=False).
    for key, model in (("default", ours), ("no_renorm", GE2EBackbone(normalize_volume=False).eval())):
        cos = (embed_dataset(model, clips, batch_size, False).numpy() * emb_theirs).sum(1)
        cosine[f"{key}_min"], cosine[f"{key}_mean"] = float(cos.min()), float(cos.mean())

    timed = len(files) if files else len(wavs)
    wavs, clips = wavs[:timed], clips[:timed]
    audio_s = sum(len(w) for w in wavs) / 16000
    windows = sum(len(ours.partial_slices(len(w))) for w in wavs)
    gflop = windows * ours.window_seconds * flops_per_second_of_audio(ours) / 1e9
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        embed_dataset(ours, clips[:4], batch_size, False)
        theirs.embed_utterance(wavs[0])
        wall, cpu = best_time(lambda: embed_dataset(ours, clips, batch_size, False), repeats)
        rows.append(Row("ge2e", f"ours (batches of {batch_size} clips)", 16000, "fp32", n, audio_s, wall, cpu, gflop))
        wall, cpu = best_time(lambda: [theirs.embed_utterance(w) for w in wavs], repeats)
        rows.append(Row("ge2e", "resemblyzer embed_utterance", 16000, "fp32", n, audio_s, wall, cpu, gflop))
        print(f"  ge2e {n} thread(s): ours {rows[-2].audio_s / rows[-2].wall_s:.1f}x, "
              f"resemblyzer {rows[-1].audio_s / rows[-1].wall_s:.1f}x real time", flush=True)
    return rows, cosine


def render(machine: dict[str, str], rows: list[Row], cosine: dict[str, float] | None, source: str, command: str) -> str:
    head = ["backbone", "implementation", "rate", "precision", "threads", "audio (s)", "wall (s)",
            "× real time (wall)", "× real time per CPU-second", "GFLOP/s (wall)"]
    lines = ["## Extraction speed (CPU)", "", f"Command: `{command}`", "", f"Timed audio: {source}", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += [f"- load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    if cosine:
        lines += ["", (f"GE2E vs Resemblyzer `embed_utterance(preprocess_wav(path))` over {cosine['files']:.0f} files: "
                       f"cosine min {cosine['default_min']:.6f}, mean {cosine['default_mean']:.6f} with the default "
                       f"module; min {cosine['no_renorm_min']:.7f}, mean {cosine['no_renorm_mean']:.7f} with "
                       "normalize_volume=false (preprocess_wav already normalised; re-normalising moves clips whose "
                       "VAD-trimmed audio ended below -30 dBFS).")]
    lines += ["", ("GFLOP/s counts the analytic FLOPs of every window embedded (window overlap included; "
                   "GE2E: LSTM + mel projection only).")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="markdown file to write the results to")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--deeptalk-rates", type=int, nargs="+", default=[16000, 8000])
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per configuration; the best is kept")
    ap.add_argument("--max-files", type=int, default=0, help="time on the first N EmoDB files (0: all 535); the GE2E cosine check always uses all")
    ap.add_argument("--batch-size", type=int, default=64, help="clips per embed_clips call")
    ap.add_argument("--synthetic-clips", type=int, default=200, help="clips to synthesise when EmoDB is absent")
    ap.add_argument("--skip-ge2e", action="store_true")
    ap.add_argument("--skip-deeptalk", action="store_true")
    args = ap.parse_args(argv)

    command = "python scripts/benchmark_extraction.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    all_files = sorted(EMODB.glob("*.wav")) if EMODB.is_dir() else []
    files = all_files[: args.max_files] if args.max_files else all_files
    source = (f"{len(files)} EmoDB files from {EMODB} (22.05 kHz, resampled)" if files
              else f"{args.synthetic_clips} synthetic tone clips (EmoDB not found at {EMODB})")
    machine = machine_description()
    print(f"{machine['CPU']}; {source}", flush=True)
    rows: list[Row] = []
    if not args.skip_deeptalk:
        rows += bench_deeptalk(files, args.deeptalk_rates, args.threads, args.precisions, args.repeats,
                               args.batch_size, args.synthetic_clips)
    cosine = None
    if not args.skip_ge2e:
        ge2e_rows, cosine = bench_ge2e(files, all_files, args.threads, args.repeats, args.batch_size, args.synthetic_clips)
        rows += ge2e_rows
    text = render(machine, rows, cosine, source, command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
