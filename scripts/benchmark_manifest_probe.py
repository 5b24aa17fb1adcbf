"""What the manifest's audio-quality probe costs: a full build with the checks (every file decoded) against
the header-only probe (`data.quality.enabled=false`), on real corpora.

  python scripts/benchmark_manifest_probe.py --repeats 3 ../shared/corpora/emodb:emodb ../shared/corpora/ased:ased

Each build is a fresh parse + probe (`refresh=True`) into a temporary cache, alternating the two modes
so that a change in machine load hits both alike. Prints a Markdown table and the machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.manifest import build_manifest  # noqa: E402
from scripts._bench_common import machine_description  # noqa: E402

MODES = {"quality checks (default)": None, "header only (quality.enabled=false)": {"enabled": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpora", nargs="+", help="ROOT:CORPUS pairs, e.g. ../shared/corpora/ased:ased")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="probe threads (default: the manifest's)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for item in args.corpora:
            root, _, corpus = item.rpartition(":")
            times: dict[str, list[float]] = {m: [] for m in MODES}
            n = hours = 0
            for _ in range(args.repeats):
                for mode, quality in MODES.items():
                    start = time.perf_counter()
                    recs = build_manifest(corpus, root, cache, quality=quality, num_workers=args.workers,
                                          refresh=True, verbose=False, progress=False)
                    times[mode].append(time.perf_counter() - start)
                    n, hours = len(recs), sum(r.duration for r in recs) / 3600
            for mode, t in times.items():
                med = statistics.median(t)
                rows.append(f"| {corpus} | {n} | {hours:.2f} | {mode} | {med:.2f} ({min(t):.2f}–{max(t):.2f}) "
                            f"| {n / med:.0f} | {hours * 3600 / med:.0f}× |")
    print("| corpus | clips | hours | probe | build s, median (min–max) | files/s | × real time |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{args.repeats} builds per mode; machine: {machine_description()}")


if __name__ == "__main__":
    main()
