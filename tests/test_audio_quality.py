"""`check_clip` / `assess_clip`: the one decision every entry point (manifest, shards, predict) uses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.audio_quality import (
    CATEGORIES, AudioQualityError, QualityPolicy, QualityTally, assess_clip, check_clip,
)

SR = 16000


def _speech(seconds: float = 1.0, amplitude: float = 0.1, seed: int = 0) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype("float32")


def test_each_category_on_its_own():
    assert check_clip(_speech(), SR) is None
    nan = _speech()
    nan[5] = np.inf
    assert check_clip(nan, SR) == "nan_inf"
    assert check_clip(np.zeros(SR, dtype="float32"), SR) == "digital_silence"
    assert check_clip(_speech(amplitude=1e-4), SR) == "near_silence"  # about -80 dBFS
    assert check_clip(_speech(amplitude=3e-3), SR) is None  # about -50 dBFS: quiet speech is kept
    assert check_clip(_speech(0.1), SR) == "too_short"
    clipped = np.clip(_speech(amplitude=0.5), -1, 1)  # about 5% of the samples at full scale
    assert check_clip(clipped, SR) == "clipping"
    assert check_clip(np.clip(_speech(amplitude=0.25), -1, 1), SR) is None  # a few peaks (<0.1%) are not clipping


def test_trimming_is_the_training_trim():
    # 0.1 s of speech inside 2 s of digital silence: long as a file, too short once trimmed
    padded = np.concatenate([np.zeros(SR), _speech(0.1), np.zeros(SR)]).astype("float32")
    quality = assess_clip(padded, SR)
    assert quality.category == "too_short" and quality.trimmed_seconds == pytest.approx(0.1, abs=0.021)
    assert quality.active_dbfs == pytest.approx(-20, abs=1.5)  # level of the speech, not diluted by the padding


def test_several_flags_the_strongest_action_decides():
    short_and_clipped = np.clip(_speech(0.1, amplitude=2.0), -1, 1)
    default = assess_clip(short_and_clipped, SR)
    assert default.flags == ("too_short", "clipping") and (default.category, default.action) == ("too_short", "skip")
    policy = QualityPolicy(actions={"too_short": "keep", "clipping": "skip"})
    assert (assess_clip(short_and_clipped, SR, policy).category, assess_clip(short_and_clipped, SR, policy).action) == (
        "clipping", "skip")
    everything_kept = QualityPolicy(actions={c: "keep" for c in CATEGORIES})
    kept = assess_clip(short_and_clipped, SR, everything_kept)
    assert kept.category == "too_short" and kept.usable  # ties go to the more severe category


def test_accepts_torch_and_channels_last():
    stereo = np.stack([_speech(), np.zeros(SR, dtype="float32")], axis=1)  # one dead channel: still speech
    assert check_clip(stereo, SR) is None
    assert check_clip(torch.from_numpy(_speech(amplitude=1e-4)), SR) == "near_silence"
    with pytest.raises(ValueError, match="shape"):
        check_clip(np.zeros((2, 3, 4)), SR)


def test_tally_counts_names_and_raises():
    policy = QualityPolicy(actions={"digital_silence": "error"})
    tally = QualityTally(policy)
    tally.add("a.wav", assess_clip(np.zeros(SR), SR, policy))
    tally.add("b.wav", assess_clip(_speech(0.1), SR, policy))
    tally.add("c.wav", assess_clip(_speech(), SR, policy))
    assert tally.counts == {"nan_inf": 0, "digital_silence": 1, "near_silence": 0, "too_short": 1, "clipping": 0}
    assert tally.skipped == [("b.wav", "too_short: shorter than 0.25 s after trimming silence")]
    with pytest.raises(AudioQualityError, match=r"1 clip\(s\) digital_silence.*a\.wav"):
        tally.raise_for_errors("predict")
