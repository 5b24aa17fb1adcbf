"""Build (once) and cache the clip list of a corpus: parse, probe every file, summarise, check counts.

`build_manifest` is meant to run in ONE process (a LightningDataModule's `prepare_data`); other
ranks then read the cached JSONL. The cache file name hashes the corpus, the resolved root and the
parser/probe/quality options, so changing any of them builds a new manifest instead of reusing a
stale one. Every clip that is not in the manifest is named in the summary with its reason.

The probe decodes every file once: duration, rate and channels, plus the audio-quality checks of
`datamodules.audio_quality` (silence, near-silence, NaN/Inf, too short after trimming, clipping)
with the configured action per category. Multi-channel files (downmixed when read) and files at a
rate other than the corpus's usual one are counted and named in the summary too.
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
from typing import Any, NamedTuple, Optional

import numpy as np
import soundfile as sf
import torch

from datamodules.audio import AudioDecodeError, audio_info, resolve_audio_path
from datamodules.audio_quality import (
    ClipQuality, QualityPolicy, QualityTally, disabled_summary, assess_clip, format_quality,
)
from datamodules.corpora import get_parser
from datamodules.corpora.base import check_expected_counts
from datamodules.records import ClipRecord, read_jsonl, write_jsonl

MANIFEST_VERSION = 2  # 2: quality checks, multichannel / sample-rate reports
MAX_STORED_SKIPS_PER_REASON = 1000  # the summary json keeps this many names per reason (all are counted)


class ExpectedCountWarning(UserWarning):
    """A full corpus does not have the size its publication reports: labels or audio are missing."""


class Probe(NamedTuple):
    info: Optional[tuple[float, int, int]]  # (duration seconds, sample rate, channels) of a usable file
    reason: Optional[str]  # why the file is unusable (None when usable or only flagged)
    quality: Optional[ClipQuality]  # None when quality is not checked or the file does not decode


def _policy(quality: Any) -> Optional[QualityPolicy]:
    return QualityPolicy.from_config(quality)


def _options_material(corpus: str, root: str | Path, probe_audio: bool, quality: Any, parser_options: dict) -> dict:
    policy = _policy(quality) if probe_audio else None
    return {"version": MANIFEST_VERSION, "corpus": corpus, "root": str(Path(root).expanduser().resolve()),
            "probe_audio": probe_audio, "quality": policy.to_dict() if policy else None, "options": parser_options}


def manifest_paths(corpus: str, root: str | Path, cache_dir: str | Path, probe_audio: bool = True,
                   quality: Any = None, **parser_options: Any) -> tuple[Path, Path]:
    """(records .jsonl, summary .json) paths for these arguments; the name hashes root + options + quality policy."""
    material = _options_material(corpus, root, probe_audio, quality, parser_options)
    digest = hashlib.sha1(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:12]
    base = Path(cache_dir).expanduser() / f"{corpus}-{digest}"
    return base.with_suffix(".jsonl"), base.with_suffix(".summary.json")


def probe_file(path: str | Path, policy: Optional[QualityPolicy] = None) -> Probe:
    """Probe one file: a reason when it cannot be used at all, else its info and (with a policy) its quality.

    Without a policy only the header is read; with one the file is decoded once, whatever its extension
    says (libsndfile reads the format from the content), and assessed by `assess_clip`.
    """
    p = resolve_audio_path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return Probe(None, "missing audio file", None)
    if size == 0:
        return Probe(None, "empty file (0 bytes)", None)
    with open(p, "rb") as f:
        head = f.read(64)
    if not any(head):
        return Probe(None, "all-zero header (corrupt or truncated file)", None)
    if policy is None:
        try:
            duration, sr, channels = audio_info(p)
        except AudioDecodeError:
            return Probe(None, f"unreadable audio ({p.suffix.lower() or 'no extension'})", None)
        if duration <= 0:
            return Probe(None, "no audio frames", None)
        return Probe((duration, sr, channels), None, None)
    try:
        f = sf.SoundFile(str(p))
    except Exception:  # soundfile raises several types for files it does not recognise
        return Probe(None, f"unreadable audio ({p.suffix.lower() or 'no extension'})", None)
    try:
        with f:
            sr, channels = f.samplerate, f.channels
            data = f.read(dtype="float32", always_2d=True)
    except Exception:  # a valid header over a corrupt payload
        return Probe(None, "undecodable audio data", None)
    if len(data) == 0:
        return Probe(None, "no audio frames", None)
    return Probe((len(data) / sr, sr, channels), None, assess_clip(data, sr, policy))


def probe_records(records: list[ClipRecord], num_workers: Optional[int] = None, quality: Any = None,
                  progress: bool = True) -> tuple[list[ClipRecord], list[tuple[str, str]]]:
    """Fill duration/sample_rate; return (usable records, [(path, reason)] for the rest). Order is kept.

    Every file is decoded and assessed under `quality` (a QualityPolicy or its config mapping; None = the
    defaults, `{"enabled": False}` = header only); a clip whose action is `error` raises AudioQualityError
    after all files were probed, naming every offender. `probe_records_with_tally` also returns the counts.
    """
    kept, skipped, _ = probe_records_with_tally(records, num_workers, quality, progress)
    return kept, skipped


def probe_records_with_tally(records: list[ClipRecord], num_workers: Optional[int] = None, quality: Any = None,
                             progress: bool = True, context: str = "manifest",
                             ) -> tuple[list[ClipRecord], list[tuple[str, str]], Optional[QualityTally]]:
    policy = _policy(quality)
    tally = QualityTally(policy) if policy is not None else None
    workers = num_workers if num_workers is not None else min(16, 4 * (os.cpu_count() or 1))
    paths = [r.path for r in records]
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pool is the parallelism: torch's own threads made each clip's trim 30x slower
    try:
        if workers <= 1:
            results = list(_progress(map(lambda p: probe_file(p, policy), paths), len(paths), progress))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:  # libsndfile, numpy and torch release the GIL
                results = list(_progress(pool.map(lambda p: probe_file(p, policy), paths), len(paths), progress))
    finally:
        torch.set_num_threads(torch_threads)
    kept, skipped = [], []
    for rec, probe in zip(records, results, strict=True):
        if probe.info is None:
            skipped.append((rec.path, probe.reason))
            continue
        duration, sr, channels = probe.info
        extra = dict(rec.extra)
        if channels != 1:
            extra["channels"] = channels
        q = probe.quality
        if q is not None and tally is not None:
            tally.add(rec.path, q)
            if q.action == "skip":
                skipped.append((rec.path, policy.reason(q.category)))
                continue
            if q.flags:
                extra["quality_flags"] = list(q.flags)
        kept.append(replace(rec, duration=round(duration, 4), sample_rate=sr, extra=extra))
    if tally is not None:
        tally.raise_for_errors(context)
    return kept, skipped, tally


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc="probing audio", unit="file", mininterval=1.0)


def _channels_and_rates(records: list[ClipRecord]) -> dict:
    """Multi-channel files (downmixed when read) and files at a rate other than the corpus's usual one."""
    multi = [r for r in records if int(r.extra.get("channels", 1)) > 1]
    rates = Counter(r.sample_rate for r in records if r.sample_rate is not None)
    outliers: dict[str, list[str]] = {}
    if len(rates) > 1:
        usual = rates.most_common(1)[0][0]
        for r in records:
            if r.sample_rate is not None and r.sample_rate != usual:
                names = outliers.setdefault(str(r.sample_rate), [])
                if len(names) < MAX_STORED_SKIPS_PER_REASON:
                    names.append(r.path)
    return {
        "multichannel_counts": dict(Counter(str(r.extra["channels"]) for r in multi).most_common()),
        "multichannel": [r.path for r in multi[:MAX_STORED_SKIPS_PER_REASON]],
        "usual_sample_rate": rates.most_common(1)[0][0] if rates else None,
        "sample_rate_outliers": dict(sorted(outliers.items(), key=lambda kv: int(kv[0]))),
    }


def summarize(records: list[ClipRecord], skipped: list[tuple[str, str]], warnings_: list[str],
              expected_counts: dict[str, int], material: Optional[dict] = None,
              quality: Optional[QualityTally] = None) -> dict:
    per_speaker = Counter(r.speaker for r in records)
    durations = [r.duration for r in records if r.duration is not None]
    by_reason: dict[str, list[str]] = defaultdict(list)
    for item, reason in skipped:
        if len(by_reason[reason]) < MAX_STORED_SKIPS_PER_REASON:
            by_reason[reason].append(item)
    def counts(values) -> dict:
        return dict(Counter("-" if v is None else str(v) for v in values).most_common())

    quality_summary = quality.summary() if quality is not None else disabled_summary()
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
        # every flagged clip by its decisive category, whatever the action (skip, keep): {} when not checked
        "quality_counts": dict(quality_summary["counts"]),
        "quality": quality_summary,
        **_channels_and_rates(records),
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


def _names(names: list[str], count: int, max_names: int) -> str:
    return ", ".join(names[:max_names]) + (" ..." if count > min(len(names), max_names) else "")


def format_summary(summary: dict, max_names: int = 5, max_speakers: int = 40) -> str:
    """Plain-text report: sizes per label/4-class/split/session/speaker, hours, audio quality, channels and
    rates, skips by reason with names."""
    m = summary.get("manifest", {})
    n = summary["num_clips"]
    hours = summary["total_hours"]
    lines = [f"manifest {m.get('corpus', '?')} @ {m.get('root', '?')}",
             f"  clips: {n}   speakers: {summary['num_speakers']}   hours: "
             + (f"{hours:.2f}" if hours is not None else "n/a (audio not probed)")]
    if summary["sample_rates"] and list(summary["sample_rates"]) != ["-"]:
        lines.append("  sample rates: " + ", ".join(f"{k} Hz x {v}" for k, v in summary["sample_rates"].items()))
    outliers = summary.get("sample_rate_outliers") or {}
    if outliers:
        n_out = sum(int(summary["sample_rates"].get(k, len(v))) for k, v in outliers.items())
        lines.append(f"  unusual sample rates: {n_out} file(s) not at the usual {summary['usual_sample_rate']} Hz "
                     "(resampled when read):")
        for rate, names in outliers.items():
            lines.append(f"    {rate} Hz x {summary['sample_rates'].get(rate, len(names))}: "
                         f"{_names(names, int(summary['sample_rates'].get(rate, len(names))), max_names)}")
    multi = summary.get("multichannel_counts") or {}
    if multi:
        total = sum(multi.values())
        lines.append(f"  downmixed to mono: {total} multi-channel file(s) ("
                     + ", ".join(f"{k} ch x {v}" for k, v in multi.items()) + "): "
                     + _names(summary.get("multichannel", []), total, max_names))
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
    if "quality" in summary:
        lines += format_quality(summary["quality"], max_names)
    skipped = summary["skipped_counts"]
    if skipped:
        lines.append(f"  SKIPPED {sum(skipped.values())} item(s):")
        for reason, count in skipped.items():
            names = summary["skipped"].get(reason, [])
            lines.append(f"    {count:>6}  {reason}: {_names(names, count, max_names)}")
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
                   num_workers: Optional[int] = None, quality: Any = None, refresh: bool = False,
                   verbose: bool = True, progress: bool = True, **parser_options: Any) -> list[ClipRecord]:
    """Parse `corpus` at `root`, probe its audio and cache the records; reuse the cache when present.

    Call from a single process. `quality` is the audio-quality policy (`data.quality`: a mapping or a
    QualityPolicy; None = the defaults, `{enabled: false}` = header-only probe, no checks); a category
    whose action is `error` raises AudioQualityError naming the files, and nothing is cached. `refresh`
    rebuilds even when a cache exists. Returns only usable records; the summary (`manifest_paths(...)[1]`)
    lists everything left out and every clip kept with a quality flag.
    """
    jsonl, summary_path = manifest_paths(corpus, root, cache_dir, probe_audio, quality, **parser_options)
    if not refresh and jsonl.is_file() and summary_path.is_file():  # summary is written last: both => complete
        summary = json.loads(summary_path.read_text())
        records = read_jsonl(jsonl)
        _report(summary, verbose, cached=True)
        return records

    parse = get_parser(corpus)
    result = parse(root, **parser_options)
    records, skipped = result.records, list(result.skipped)
    tally = None
    if probe_audio:
        records, probe_skips, tally = probe_records_with_tally(records, num_workers, quality, progress,
                                                               context=f"{corpus} manifest ({root})")
        skipped += probe_skips
    material = _options_material(corpus, root, probe_audio, quality, parser_options)
    summary = summarize(records, skipped, result.warnings, result.expected_counts, material, tally)
    write_jsonl(records, jsonl)
    tmp = summary_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    tmp.replace(summary_path)
    _report(summary, verbose, cached=False)
    return records


def load_summary(corpus: str, root: str | Path, cache_dir: str | Path, probe_audio: bool = True,
                 quality: Any = None, **parser_options: Any) -> dict:
    """The summary json of a built manifest (raises FileNotFoundError naming the path when not built)."""
    path = manifest_paths(corpus, root, cache_dir, probe_audio, quality, **parser_options)[1]
    if not path.is_file():
        raise FileNotFoundError(f"no manifest summary at {path}; run build_manifest first")
    return json.loads(path.read_text())


def load_manifest(corpus: str, root: str | Path, cache_dir: str | Path, probe_audio: bool = True,
                  quality: Any = None, **parser_options: Any) -> list[ClipRecord]:
    """Read a manifest built earlier (e.g. in `prepare_data` on rank 0) without ever parsing or probing."""
    jsonl, summary_path = manifest_paths(corpus, root, cache_dir, probe_audio, quality, **parser_options)
    if not (jsonl.is_file() and summary_path.is_file()):
        raise FileNotFoundError(f"no complete manifest at {jsonl} (+ {summary_path.name}); call build_manifest with "
                                "the same corpus, root, options and data.quality first")
    return read_jsonl(jsonl)
