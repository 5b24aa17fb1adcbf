"""Head fitting time against training-set size on synthetic 256-d embeddings (4 classes).

Shows where the exact RBF SVC stops being affordable and what the Nystroem + LinearSVC switch
(evaluation.heads.SVMHead above `nystroem_threshold`) costs instead. Prints a markdown table.

    python scripts/benchmark_heads.py --out bench_heads.md
    python scripts/benchmark_heads.py --sizes 500 1000 2000 --max-exact 2000   # quick look
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.embeddings_io import synthetic_set  # noqa: E402
from evaluation.heads import LinearProbeHead, SVMHead  # noqa: E402
from evaluation.metrics import compute_metrics  # noqa: E402

CLASSES = ("angry", "happy", "neutral", "sad")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import sklearn

    load = " / ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
            f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, load average {load}")


def timed_fit(head, X, y, X_test, y_test) -> tuple[float, float]:
    """(fit seconds, test UA) so speed is never reported for a model that learned nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        head.fit(X, y)
        seconds = time.perf_counter() - t0
    return seconds, compute_metrics(y_test, head.predict(X_test), CLASSES)["ua"]


def main(argv=None) -> int:
    logging.getLogger("evaluation.heads").setLevel(logging.ERROR)  # the Nystroem notice, once per fit
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 5000, 10000, 20000, 40000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--separation", type=float, default=0.12,
                   help="class-mean scale; 0.12 gives SER-like overlap (UA ~0.5-0.65), so many support vectors")
    p.add_argument("--max-exact", type=int, default=20000, help="largest size fitted with the exact SVC")
    p.add_argument("--max-linear-svc", type=int, default=2000, help="largest size fitted with Nystroem + LinearSVC")
    p.add_argument("--budget", type=float, default=45.0,
                   help="stop growing a method's size once one of its fits took longer than this (seconds)")
    p.add_argument("--min-nystroem", type=int, default=2000, help="smallest size fitted with Nystroem")
    p.add_argument("--components", type=int, default=2000, help="Nystroem components")
    p.add_argument("--blas-threads", type=int, default=1, help="BLAS threads (run_evaluation's default is 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = p.parse_args(argv)

    n_test = 2000
    clips = 100
    n_max = max(args.sizes) + n_test
    data = synthetic_set(n_speakers=-(-n_max // clips), clips_per_speaker=clips, classes=CLASSES, dim=args.dim,
                         separation=args.separation, speaker_scale=1.0, seed=args.seed)
    X, y = data.embeddings, data.emotion
    X_test, y_test = X[-n_test:], y[-n_test:]  # last speakers: disjoint from every training prefix
    comps = args.components
    methods = {  # name: (head factory, smallest size, largest size)
        "exact RBF SVC": (lambda: SVMHead(nystroem_threshold=10**12), 0, args.max_exact),
        f"Nystroem({comps}) + ridge": (
            lambda: SVMHead(nystroem_threshold=0, nystroem_components=comps), args.min_nystroem, 10**12),
        f"Nystroem({comps}) + LinearSVC": (
            lambda: SVMHead(nystroem_threshold=0, nystroem_components=comps, nystroem_solver="linear_svc"),
            args.min_nystroem, args.max_linear_svc),
        "linear probe (logreg)": (lambda: LinearProbeHead(), 0, 10**12),
    }
    header = machine()
    print(f"machine: {header}", flush=True)
    lines = [
        f"Head fit time in seconds (held-out UA in brackets) vs training rows: {args.dim}-d synthetic L2-normalised "
        f"embeddings, 4 classes, separation {args.separation}, SVM C=1000 gamma=0.1, {args.blas_threads} BLAS thread(s); "
        f"UA on {n_test} rows of unseen speakers. '-' = outside the method's size range, 'skipped' = a smaller "
        f"size already took > {args.budget:.0f} s.",
        "", f"Machine: {header}", "",
        "| train rows | " + " | ".join(methods) + " |",
        "|---:|" + "---:|" * len(methods),
    ]
    over_budget: set[str] = set()
    t_start = time.perf_counter()
    with threadpool_limits(limits=args.blas_threads):
        for n in sorted(args.sizes):
            cells = []
            for name, (factory, lo, hi) in methods.items():
                if not lo <= n <= hi:
                    cells.append("-")
                elif name in over_budget:
                    cells.append("skipped")
                else:
                    seconds, ua = timed_fit(factory(), X[:n], y[:n], X_test, y_test)
                    if seconds > args.budget:
                        over_budget.add(name)
                    cells.append(f"{seconds:.2f} ({ua:.3f})")
            row = f"| {n} | " + " | ".join(cells) + " |"
            print(row, flush=True)
            lines.append(row)
    lines += ["", f"Total {time.perf_counter() - t_start:.0f} s; load average at the end: "
                  f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())}"]
    table = "\n".join(lines)
    print("\n" + table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
