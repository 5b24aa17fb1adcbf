"""Audio-quality checks: a clip that carries no speech has no emotion, so it never reaches a head or a
loss unannounced.

One function decides for every entry point (manifest probe, shard reader, a future predict.py):

    from datamodules.audio_quality import QualityPolicy, assess_clip, check_clip

    policy = QualityPolicy.from_config(cfg.data.get("quality"))   # or QualityPolicy() for the defaults
    category = check_clip(samples, sample_rate, policy)            # None = clean
    quality = assess_clip(samples, sample_rate, policy)            # the same, with measurements
    if quality.action == "error": raise AudioQualityError(...)      # or let a QualityTally do it
    if quality.action == "skip": ...count it, report it, do not embed it...

`samples` is the decoded signal before resampling or trimming: shape (frames,) or (frames, channels)
as soundfile returns it, numpy or torch. For a file on disk, `datamodules.manifest.probe_file(path,
policy)` decodes it once and returns (info, unusable-file reason, quality). A run that screens many
clips (e.g. predict.py) feeds each result to a `QualityTally(policy)`, calls `raise_for_errors(...)`
and prints `report(...)`, so that what was skipped is counted and named as in the manifest report.
Categories, most severe first:

- `nan_inf`: NaN or Inf samples (float files only; nothing downstream survives them)
- `digital_silence`: every sample is exactly zero
- `near_silence`: the RMS of the trimmed clip is below `near_silence_dbfs`
- `too_short`: shorter than `min_seconds` once leading/trailing silence is trimmed, with the trimming
  training uses (`datamodules.audio.trim_silence`)
- `clipping`: more than `clipping_fraction` of the samples sit at full scale

A clip can raise several flags; its `category` is the one whose action is strongest (error > skip >
keep), ties going to the more severe. `QualityTally` counts clips by category and action, names them
and turns `error` actions into one `AudioQualityError` listing every offender.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch

from datamodules.audio import trim_silence

CATEGORIES = ("nan_inf", "digital_silence", "near_silence", "too_short", "clipping")
ACTIONS = ("skip", "keep", "error")
DEFAULT_ACTIONS = {"nan_inf": "skip", "digital_silence": "skip", "near_silence": "skip", "too_short": "skip",
                   "clipping": "keep"}
# |sample| at or above this counts as full scale: 16-bit full scale reads back as 32767/32768 = 0.99997.
FULL_SCALE = 0.999
_ACTION_STRENGTH = {"keep": 0, "skip": 1, "error": 2}
MAX_NAMES = 1000  # names kept per category (all are counted)


class AudioQualityError(ValueError):
    """A clip fell in a category whose configured action is `error`."""


@dataclass(frozen=True)
class QualityPolicy:
    """Thresholds and what to do per category; `data.quality` in the configs (a manifest cache-key part)."""

    near_silence_dbfs: float = -60.0
    clipping_fraction: float = 0.001
    min_seconds: float = 0.25
    actions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))

    def __post_init__(self) -> None:
        key = "data.quality"
        if not (isinstance(self.near_silence_dbfs, (int, float)) and self.near_silence_dbfs < 0):
            raise ValueError(f"{key}.near_silence_dbfs={self.near_silence_dbfs!r}: expected a negative dBFS level, "
                             "e.g. -60")
        if not (isinstance(self.clipping_fraction, (int, float)) and 0 <= self.clipping_fraction <= 1):
            raise ValueError(f"{key}.clipping_fraction={self.clipping_fraction!r}: expected a fraction of samples "
                             "in [0, 1], e.g. 0.001")
        if not (isinstance(self.min_seconds, (int, float)) and self.min_seconds >= 0):
            raise ValueError(f"{key}.min_seconds={self.min_seconds!r}: expected seconds >= 0")
        unknown = sorted(set(self.actions) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"{key}.actions.{unknown[0]}: unknown category; valid categories: {', '.join(CATEGORIES)}")
        for cat, action in self.actions.items():
            if action not in ACTIONS:
                raise ValueError(f"{key}.actions.{cat}={action!r}: expected one of {', '.join(ACTIONS)}")
        object.__setattr__(self, "actions", {c: self.actions.get(c, DEFAULT_ACTIONS[c]) for c in CATEGORIES})

    @classmethod
    def from_config(cls, cfg: Any = None) -> Optional["QualityPolicy"]:
        """None -> the defaults; `{enabled: false}` -> None (no checks); a mapping of the fields otherwise."""
        if cfg is None:
            return cls()
        if isinstance(cfg, QualityPolicy):
            return cfg
        if not isinstance(cfg, Mapping):
            try:  # an OmegaConf DictConfig
                from omegaconf import DictConfig, OmegaConf

                if isinstance(cfg, DictConfig):
                    cfg = OmegaConf.to_container(cfg, resolve=True)
            except ImportError:
                pass
        if not isinstance(cfg, Mapping):
            raise ValueError(f"data.quality={cfg!r}: expected a mapping with keys enabled, near_silence_dbfs, "
                             "clipping_fraction, min_seconds, actions")
        cfg = dict(cfg)
        enabled = cfg.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ValueError(f"data.quality.enabled={enabled!r}: expected true or false")
        valid = {"near_silence_dbfs", "clipping_fraction", "min_seconds", "actions"}
        unknown = sorted(set(cfg) - valid)
        if unknown:
            raise ValueError(f"data.quality.{unknown[0]}: unknown key; valid keys: enabled, {', '.join(sorted(valid))}")
        if not enabled:
            return None
        if "actions" in cfg and not isinstance(cfg["actions"], Mapping):
            raise ValueError(f"data.quality.actions={cfg['actions']!r}: expected a mapping category -> skip/keep/error")
        return cls(**cfg)

    def to_dict(self) -> dict:
        return {"near_silence_dbfs": float(self.near_silence_dbfs), "clipping_fraction": float(self.clipping_fraction),
                "min_seconds": float(self.min_seconds), "actions": dict(self.actions)}

    def action(self, category: Optional[str]) -> str:
        return "keep" if category is None else self.actions[category]

    def describe(self, category: str) -> str:
        """The reason text of a category, with this policy's threshold in it."""
        return {
            "nan_inf": "NaN or Inf samples",
            "digital_silence": "all samples zero",
            "near_silence": f"active level below {self.near_silence_dbfs:g} dBFS",
            "too_short": f"shorter than {self.min_seconds:g} s after trimming silence",
            "clipping": f"more than {100 * self.clipping_fraction:g}% of samples at full scale",
        }[category]

    def reason(self, category: str) -> str:
        return f"{category}: {self.describe(category)}"


@dataclass(frozen=True)
class ClipQuality:
    flags: tuple[str, ...]  # every category that applies, most severe first
    category: Optional[str]  # the decisive one (None = clean)
    action: str  # what the policy does with it: keep / skip / error
    active_dbfs: Optional[float] = None  # RMS level of the trimmed clip
    trimmed_seconds: Optional[float] = None
    clipped_fraction: Optional[float] = None

    @property
    def usable(self) -> bool:
        return self.action == "keep"

    def detail(self) -> str:
        parts = []
        if self.active_dbfs is not None:
            parts.append(f"active level {self.active_dbfs:.1f} dBFS")
        if self.trimmed_seconds is not None:
            parts.append(f"{self.trimmed_seconds:.3f} s after trimming")
        if self.clipped_fraction:
            parts.append(f"{100 * self.clipped_fraction:.2f}% of samples at full scale")
        return ", ".join(parts)


def _as_frames_channels(samples: Any) -> np.ndarray:
    x = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"assess_clip: expected samples of shape (frames,) or (frames, channels), got {x.shape}")
    return x.astype(np.float32, copy=False)


def assess_clip(samples: Any, sample_rate: int, policy: Optional[QualityPolicy] = None) -> ClipQuality:
    """Flags, decisive category, action and measurements of one decoded clip (see the module docstring)."""
    policy = policy or QualityPolicy()
    x = _as_frames_channels(samples)
    if not np.isfinite(x).all():
        return _decide(("nan_inf",), policy)
    if x.size == 0 or not np.any(x):
        return _decide(("digital_silence",), policy, trimmed_seconds=0.0)
    clipped = float(np.count_nonzero(np.abs(x) >= FULL_SCALE)) / x.size
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    trimmed = trim_silence(torch.from_numpy(np.ascontiguousarray(mono)), sample_rate).numpy()
    seconds = trimmed.shape[-1] / sample_rate
    power = float(np.mean(np.square(trimmed, dtype=np.float64))) if trimmed.size else 0.0
    dbfs = 10 * math.log10(power) if power > 0 else -math.inf
    flags = []
    if dbfs < policy.near_silence_dbfs:
        flags.append("near_silence")
    if seconds < policy.min_seconds:
        flags.append("too_short")
    if clipped > policy.clipping_fraction:
        flags.append("clipping")
    return _decide(tuple(flags), policy, active_dbfs=round(dbfs, 2) if math.isfinite(dbfs) else dbfs,
                   trimmed_seconds=round(seconds, 4), clipped_fraction=round(clipped, 6))


def _decide(flags: tuple[str, ...], policy: QualityPolicy, **measures: Any) -> ClipQuality:
    if not flags:
        return ClipQuality(flags=(), category=None, action="keep", **measures)
    category = max(flags, key=lambda c: (_ACTION_STRENGTH[policy.action(c)], -CATEGORIES.index(c)))
    return ClipQuality(flags=flags, category=category, action=policy.action(category), **measures)


def check_clip(samples: Any, sample_rate: int, policy: Optional[QualityPolicy] = None) -> Optional[str]:
    """The decisive quality category of a clip, or None when it is clean; `policy.action(...)` says what to do."""
    return assess_clip(samples, sample_rate, policy).category


class QualityTally:
    """Counts and names clips by quality category and action, for one manifest, shard pass or prediction run."""

    def __init__(self, policy: QualityPolicy):
        self.policy = policy
        self.counts = {c: 0 for c in CATEGORIES}
        self.by_action: dict[str, dict[str, list[str]]] = {a: {} for a in ACTIONS}
        self.details: dict[str, str] = {}

    def add(self, name: str, quality: ClipQuality) -> None:
        if quality.category is None:
            return
        self.counts[quality.category] += 1
        names = self.by_action[quality.action].setdefault(quality.category, [])
        if len(names) < MAX_NAMES:
            names.append(str(name))
            self.details[str(name)] = quality.detail()

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(name, reason) of every skipped clip (up to MAX_NAMES per category)."""
        return [(n, self.policy.reason(c)) for c, names in self.by_action["skip"].items() for n in names]

    def raise_for_errors(self, context: str) -> None:
        errors = self.by_action["error"]
        if not errors:
            return
        lines = []
        for cat, names in errors.items():
            shown = ", ".join(f"{n} ({self.details.get(n, '')})" for n in names[:10])
            more = f" and {self.counts[cat] - 10} more" if self.counts[cat] > 10 else ""
            lines.append(f"{self.counts[cat]} clip(s) {self.policy.reason(cat)} with data.quality.actions.{cat}=error: "
                         f"{shown}{more}")
        raise AudioQualityError(f"{context}: " + "; ".join(lines) + ". Set the action to skip (left out, counted and "
                                "named in the report) or keep (used, and reported), or fix the files.")

    def report(self, context: str, max_names: int = 5) -> Optional[str]:
        """One line naming what was skipped and what was kept with a flag; None when every clip was clean."""
        parts = []
        for action, verb in (("skip", "skipped"), ("keep", "kept")):
            groups = self.by_action[action]
            if not groups:
                continue
            n = sum(self.counts[c] for c in groups)
            listed = "; ".join(f"{c} x{self.counts[c]}: {', '.join(names[:max_names])}"
                               + (" ..." if self.counts[c] > max_names else "") for c, names in groups.items())
            parts.append(f"{verb} {n} {'flagged ' if action == 'keep' else ''}clip(s) ({listed})")
        return f"{context}: " + "; ".join(parts) if parts else None

    def summary(self) -> dict:
        return {"checked": True, "policy": self.policy.to_dict(), "counts": dict(self.counts),
                "skipped": {c: list(n) for c, n in self.by_action["skip"].items()},
                "kept": {c: list(n) for c, n in self.by_action["keep"].items()}}


def disabled_summary() -> dict:
    return {"checked": False, "policy": None, "counts": {}, "skipped": {}, "kept": {}}


def format_quality(quality: dict, max_names: int = 5) -> list[str]:
    """Report lines of a `QualityTally.summary()` (as stored in the manifest summary)."""
    if not quality.get("checked"):
        return ["  audio quality: not checked (data.quality.enabled=false or audio not probed)"]
    policy = QualityPolicy(**quality["policy"])
    lines = [f"  audio quality (near-silence < {policy.near_silence_dbfs:g} dBFS, clipping > "
             f"{100 * policy.clipping_fraction:g}% of samples, min {policy.min_seconds:g} s after trimming):"]
    width = max(len(c) for c in CATEGORIES)
    for cat in CATEGORIES:
        n = quality["counts"].get(cat, 0)
        action = policy.action(cat)
        names = quality.get("skipped", {}).get(cat, []) + quality.get("kept", {}).get(cat, [])
        shown = ", ".join(names[:max_names]) + (" ..." if n > max_names else "")
        verb = {"skip": "skipped", "keep": "kept", "error": "error"}[action] if n else action
        lines.append(f"    {cat:<{width}}  {n:>6}  {verb:<7}  {shown}".rstrip())
    return lines
