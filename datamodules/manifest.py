"""Build (once) and cache the clip list of a corpus: parse, probe every file, summarise, check counts.

`build_manifest` is meant to run in ONE process (a LightningDataModule's `prepare_data`); other
ranks then read the cached JSONL. The cache file name hashes the corpus, the resolved root and the
parser/probe options, so changing any of them builds a new manifest instead of reusing a stale one.
Every clip that is not in the manifest is named in the summary with its reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import soundfile as sf

from datamodules.audio import AudioDecodeError, audio_info, resolve_audio_path
from datamodules.corpora import get_parser
from datamodules.corpora.base import check_expected_counts
from datamodules.records import ClipRecord, read_jsonl, write_jsonl

MANIFEST_VERSION = 1
MAX_STORED_SKIPS_PER_REASON = 1000  # the summary json keeps this many names per reason (all are counted)


class ExpectedCountWarning(UserWarning):
    """A full corpus does not have the size its publication reports: labels or audio are missing."""


def _options_material(corpus: str, root: str | Path, probe_audio: bool, check_silence: bool,
                      parser_options: dict) -> dict:
    return {"version": MANIFEST_VERSION, "corpus": corpus, "root": str(Path(root).expanduser().resolve()),
            "probe_audio": probe_audio, "check_silence": check_silence, "options": parser_options}


def manifest_paths(corpus: str, root: str | Path, cache_dir: str | Path, probe_audio: bool = True,
                   check_silence: bool = False, **parser_options: Any) -> tuple[Path, Path]:
    """(records .jsonl, summary .json) paths for these arguments; the name hashes root + options."""
    material = _options_material(corpus, root, probe_audio, check_silence, parser_options)
    digest = hashlib.sha1(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:12]
    base = Path(cache_dir).expanduser() / f"{corpus}-{digest}"
    return base.with_suffix(".jsonl"), base.with_suffix(".summary.json")


def probe_file(path: str | Path, check_silence: bool = False) -> tuple[Optional[tuple[float, int, int]], Optional[str]]:
    """((duration, sample_rate, channels), None) for a usable file, else (None, reason)."""
    p = resolve_audio_path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return None, "missing audio file"
    if size == 0:
        return None, "empty file (0 bytes)"
    with open(p, "rb") as f:
        head = f.read(64)
    if not any(head):
        return None, "all-zero header (corrupt or truncated file)"
    try:
        duration, sr, channels = audio_info(p)
    except AudioDecodeError:
        return None, f"unreadable audio ({p.suffix.lower() or 'no extension'})"
    if duration <= 0:
        return None, "no audio frames"
    if check_silence:
        try:
            data = sf.read(str(p), dtype="float32", always_2d=True)[0]
        except Exception:  # libsndfile raises several types for corrupt payloads
            return None, "undecodable audio data"
        if not np.any(data):
            return None, "silent audio (all samples zero)"
    return (duration, sr, channels), None


def probe_records(records: list[ClipRecord], num_workers: Optional[int] = None, check_silence: bool = False,
                  progress: bool = True) -> tuple[list[ClipRecord], list[tuple[str, str]]]:
    """Fill duration/sample_rate; return (usable records, [(path, reason)] for the rest). Order is kept."""
    workers = num_workers if num_workers is not None else min(16, 4 * (os.cpu_count() or 1))
    paths = [r.path for r in records]
    if workers <= 1:
        results = map(lambda p: probe_file(p, check_silence), paths)
        results = list(_progress(results, len(paths), progress))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # header reads are I/O bound; libsndfile drops the GIL
            results = list(_progress(pool.map(lambda p: probe_file(p, check_silence), paths), len(paths), progress))
    kept, skipped = [], []
    for rec, (info, reason) in zip(records, results, strict=True):
        if info is None:
            skipped.append((rec.path, reason))
            continue
        duration, sr, channels = info
        extra = dict(rec.extra, channels=channels) if channels != 1 else rec.extra
        kept.append(replace(rec, duration=round(duration, 4), sample_rate=sr, extra=extra))
    return kept, skipped


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc="probing audio", unit="file", mininterval=1.0)


def summarize(records: list[ClipRecord], skipped: list[tuple[str, str]], warnings_: list[str],
              expected_counts: dict[str, int], material: Optional[dict] = None) -> dict:
    per_speaker = Counter(r.speaker for r in records)
    durations = [r.duration for r in records if r.duration is not None]
    by_reason: dict[str, list[str]] = defaultdict(list)
    for item, reason in skipped:
        if len(by_reason[reason]) < MAX_STORED_SKIPS_PER_REASON:
            by_reason[reason].append(item)
    def counts(values) -> dict:
        return dict(Counter("-" if v is None else str(v) for v in values).most_common())

    return {
        "manifest": material or {},
        "num_clips": len(records),
        "total_hours": round(sum(durations) / 3600, 4) if durations else None,
        "probed": len(durations) == len(records) and bool(records),
        "per_emotion": counts(r.emotion for r in records),
        "per_emotion4": counts(r.emotion4 for r in records),
        "per_split": counts(r.split for r in records),
        "per_session": counts(r.session for r in records),
        "per_gender": counts(r.gender for r in records),
        "sample_rates": counts(r.sample_rate for r in records),
        "num_speakers": len(per_speaker),
        "per_speaker": dict(sorted(per_speaker.items())),
        "skipped_counts": dict(Counter(reason for _, reason in skipped).most_common()),
        "skipped": dict(by_reason),
        "warnings": list(warnings_),
        "expected_counts": dict(expected_counts),
        "count_problems": check_expected_counts(records, expected_counts),
    }


def _table(title: str, counts: dict, total: int) -> list[str]:
    if not counts or list(counts) == ["-"]:
        return []
    width = max(len(k) for k in counts)
    lines = [f"  {title}:"]
    for k, n in counts.items():
        lines.append(f"    {k:<{width}}  {n:>8}  {100 * n / max(total, 1):5.1f}%")
    return lines


def format_summary(summary: dict, max_names: int = 5, max_speakers: int = 40) -> str:
    """Plain-text report: sizes per label/4-class/split/session/speaker, hours, skips by reason with names."""
    m = summary.get("manifest", {})
    n = summary["num_clips"]
    hours = summary["total_hours"]
    lines = [f"manifest {m.get('corpus', '?')} @ {m.get('root', '?')}",
             f"  clips: {n}   speakers: {summary['num_speakers']}   hours: "
             + (f"{hours:.2f}" if hours is not None else "n/a (audio not probed)")]
    if summary["sample_rates"] and list(summary["sample_rates"]) != ["-"]:
        lines.append("  sample rates: " + ", ".join(f"{k} Hz x {v}" for k, v in summary["sample_rates"].items()))
    for key, title in (("per_emotion", "emotion"), ("per_emotion4", "4-class (- = outside the set)"),
                       ("per_split", "split"), ("per_session", "session"), ("per_gender", "gender")):
        lines += _table(title, summary[key], n)
    spk = summary["per_speaker"]
    if spk:
        if len(spk) <= max_speakers:
            lines += _table("speaker", spk, n)
        else:
            sizes = sorted(spk.values())
            lines.append(f"  clips per speaker: min {sizes[0]}, median {statistics.median(sizes):g}, max {sizes[-1]} "
                         f"over {len(sizes)} speakers")
    skipped = summary["skipped_counts"]
    if skipped:
        lines.append(f"  SKIPPED {sum(skipped.values())} item(s):")
        for reason, count in skipped.items():
            names = summary["skipped"].get(reason, [])[:max_names]
            more = " ..." if count > len(names) else ""
            lines.append(f"    {count:>6}  {reason}: {', '.join(names)}{more}")
    for w in summary["warnings"]:
        lines.append(f"  warning: {w}")
    for problem in summary["count_problems"]:
        lines.append(f"  !!! COUNT MISMATCH {problem}")
    return "\n".join(lines)


def _report(summary: dict, verbose: bool, cached: bool) -> None:
    if verbose:
        print(("(cached) " if cached else "") + format_summary(summary), flush=True)
    problems = summary["count_problems"]
    if problems:
        corpus = summary.get("manifest", {}).get("corpus", "?")
        warnings.warn(
            f"{corpus}: the corpus does not match its published size — "
            + "; ".join(problems)
            + ". If this is meant to be the full corpus, labels or audio are missing (see the skipped list).",
            ExpectedCountWarning, stacklevel=3,
        )


def build_manifest(corpus: str, root: str | Path, cache_dir: str | Path, probe_audio: bool = True,
                   num_workers: Optional[int] = None, check_silence: bool = False, refresh: bool = False,
                   verbose: bool = True, progress: bool = True, **parser_options: Any) -> list[ClipRecord]:
    """Parse `corpus` at `root`, probe its audio and cache the records; reuse the cache when present.

    Call from a single process. `check_silence` decodes every file to find all-zero clips (slow on big
    corpora); `refresh` rebuilds even when a cache exists. Returns only usable records; the summary
    (`manifest_paths(...)[1]`) lists everything left out.
    """
    jsonl, summary_path = manifest_paths(corpus, root, cache_dir, probe_audio, check_silence, **parser_options)
    if not refresh and jsonl.is_file() and summary_path.is_file():  # summary is written last: both => complete
        summary = json.loads(summary_path.read_text())
        records = read_jsonl(jsonl)
        _report(summary, verbose, cached=True)
        return records

    parse = get_parser(corpus)
    result = parse(root, **parser_options)
    records, skipped = result.records, list(result.skipped)
    if probe_audio:
        records, probe_skips = probe_records(records, num_workers, check_silence, progress)
        skipped += probe_skips
    material = _options_material(corpus, root, probe_audio, check_silence, parser_options)
    summary = summarize(records, skipped, result.warnings, result.expected_counts, material)
    write_jsonl(records, jsonl)
    tmp = summary_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    tmp.replace(summary_path)
    _report(summary, verbose, cached=False)
    return records


def load_summary(corpus: str, root: str | Path, cache_dir: str | Path, probe_audio: bool = True,
                 check_silence: bool = False, **parser_options: Any) -> dict:
    """The summary json of a built manifest (raises FileNotFoundError naming the path when not built)."""
    path = manifest_paths(corpus, root, cache_dir, probe_audio, check_silence, **parser_options)[1]
    if not path.is_file():
        raise FileNotFoundError(f"no manifest summary at {path}; run build_manifest first")
    return json.loads(path.read_text())


def load_manifest(corpus: str, root: str | Path, cache_dir: str | Path, probe_audio: bool = True,
                  check_silence: bool = False, **parser_options: Any) -> list[ClipRecord]:
    """Read a manifest built earlier (e.g. in `prepare_data` on rank 0) without ever parsing or probing."""
    jsonl, summary_path = manifest_paths(corpus, root, cache_dir, probe_audio, check_silence, **parser_options)
    if not (jsonl.is_file() and summary_path.is_file()):
        raise FileNotFoundError(f"no complete manifest at {jsonl} (+ {summary_path.name}); call build_manifest with "
                                "the same corpus, root and options first")
    return read_jsonl(jsonl)
