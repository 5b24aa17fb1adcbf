"""Bad-input matrix: a folder corpus with one planted file of every kind users ship by accident.

For each stage (prepare = the manifest, train = a fast dev run through `tasks.train.train`,
evaluate = `tasks.evaluate.evaluate` with the pretrained GE2E, its metrics.json data block) the test
checks that every planted file lands in its expected category of the report, with the expected
counts, that nothing reaches training unannounced, and that nothing crashes.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from datamodules.manifest import build_manifest, format_summary, load_summary
from tests.conftest import make_cfg

SR = 16000
GOOD_SPEAKERS = [f"spk{i}" for i in range(6)]
EMOTIONS = ("happy", "sad")


def _noise(seconds: float, sr: int = SR, amplitude: float = 0.1, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = amplitude * rng.standard_normal((int(seconds * sr), channels))
    return data.astype("float32") if channels > 1 else data[:, 0].astype("float32")


def _png_bytes() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import image

    buf = io.BytesIO()
    image.imsave(buf, np.random.default_rng(0).random((8, 8)), format="png")
    return buf.getvalue()


# name -> (expected manifest outcome, how the file is written); the outcome is a skipped-reason prefix,
# "kept", or "kept:<flag>" for a clip kept but reported.
def _plant(root) -> dict[str, str]:
    bad = root / "sad" / "spk0"
    bad.mkdir(parents=True, exist_ok=True)
    t = np.arange(SR) / SR
    planted = {
        "empty.wav": "empty file (0 bytes)",
        "random_bytes.wav": "unreadable audio (.wav)",
        "all_zero.wav": "digital_silence",
        "near_silent.wav": "near_silence",
        "clipped.wav": "kept:clipping",
        "nan_samples.wav": "nan_inf",
        "short.wav": "too_short",
        "stereo_48k.wav": "kept",
        "hires_96k.wav": "kept",
        "flac_inside.wav": "kept",
        "picture.wav": "unreadable audio (.wav)",
        "notes.txt": "not an audio file (.txt)",
    }
    (bad / "empty.wav").write_bytes(b"")
    (bad / "random_bytes.wav").write_bytes(np.random.default_rng(1).integers(1, 255, 4096, dtype=np.uint8).tobytes())
    sf.write(str(bad / "all_zero.wav"), np.zeros(2 * SR, dtype="float32"), SR, subtype="PCM_16")
    sf.write(str(bad / "near_silent.wav"), _noise(1.0, amplitude=1e-4, seed=2), SR, subtype="PCM_16")
    sf.write(str(bad / "clipped.wav"), np.clip(3 * np.sin(2 * np.pi * 220 * t), -1, 1).astype("float32"), SR,
             subtype="PCM_16")
    nan = _noise(1.0, seed=3)
    nan[100:110] = np.nan
    sf.write(str(bad / "nan_samples.wav"), nan, SR, subtype="FLOAT")
    sf.write(str(bad / "short.wav"), _noise(0.05, seed=4), SR, subtype="PCM_16")
    sf.write(str(bad / "stereo_48k.wav"), _noise(1.0, sr=48000, channels=2, seed=5), 48000, subtype="PCM_16")
    sf.write(str(bad / "hires_96k.wav"), _noise(1.0, sr=96000, seed=6), 96000, subtype="PCM_16")
    sf.write(str(bad / "flac_inside.wav"), _noise(1.0, seed=7), SR, format="FLAC", subtype="PCM_16")
    (bad / "picture.wav").write_bytes(_png_bytes())
    (bad / "notes.txt").write_text("recording notes, not audio\n")
    return planted


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "corpus"
    for s, spk in enumerate(GOOD_SPEAKERS):
        for e, emo in enumerate(EMOTIONS):
            path = root / emo / spk / f"good{e}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), _noise(1.0, seed=100 + 10 * s + e), SR, subtype="PCM_16")
    return root, _plant(root)


def _skip_reasons(summary: dict) -> dict[str, str]:
    """file name -> reason for every skipped item."""
    return {name.rsplit("/", 1)[-1]: reason for reason, names in summary["skipped"].items() for name in names}


def _check_report(summary: dict, planted: dict[str, str], kept_paths: list[str]) -> None:
    reasons = _skip_reasons(summary)
    kept = {p.rsplit("/", 1)[-1] for p in kept_paths}
    for name, outcome in planted.items():
        if outcome.startswith("kept"):
            assert name in kept, f"{name} should be kept"
            assert name not in reasons
        else:
            assert name not in kept, f"{name} reached the manifest"
            assert reasons.get(name, "").startswith(outcome), (name, reasons.get(name))
    assert summary["quality_counts"] == {"nan_inf": 1, "digital_silence": 1, "near_silence": 1, "too_short": 1,
                                         "clipping": 1}
    assert summary["quality"]["kept"] == {"clipping": [p for p in kept_paths if p.endswith("clipped.wav")]}
    assert summary["skipped_counts"] == {
        "unreadable audio (.wav)": 2, "empty file (0 bytes)": 1, "not an audio file (.txt)": 1,
        "digital_silence: all samples zero": 1,
        "near_silence: active level below -60 dBFS": 1,
        "nan_inf: NaN or Inf samples": 1,
        "too_short: shorter than 0.25 s after trimming silence": 1,
    }
    assert summary["num_clips"] == 2 * len(GOOD_SPEAKERS) + 4
    assert summary["multichannel_counts"] == {"2": 1}
    assert [p.rsplit("/", 1)[-1] for p in summary["multichannel"]] == ["stereo_48k.wav"]
    assert {k: [p.rsplit("/", 1)[-1] for p in v] for k, v in summary["sample_rate_outliers"].items()} == {
        "48000": ["stereo_48k.wav"], "96000": ["hires_96k.wav"]}


def test_prepare_stage_reports_every_planted_file(corpus, tmp_path, capsys):
    root, planted = corpus
    records = build_manifest("folders", root, tmp_path / "cache", num_workers=2, progress=False)
    summary = load_summary("folders", root, tmp_path / "cache")
    _check_report(summary, planted, [r.path for r in records])
    printed = capsys.readouterr().out
    assert printed == format_summary(summary) + "\n"
    for needle in ("digital_silence", "near_silence", "nan_inf", "too_short", "clipping", "all_zero.wav",
                   "near_silent.wav", "nan_samples.wav", "short.wav", "clipped.wav", "picture.wav", "notes.txt",
                   "downmixed to mono: 1 multi-channel file", "stereo_48k.wav", "hires_96k.wav", "96000 Hz"):
        assert needle in printed, needle
    # the kept clipped clip carries its flag, so later stages can filter on it
    clipped = next(r for r in records if r.path.endswith("clipped.wav"))
    assert clipped.extra["quality_flags"] == ["clipping"]


def test_train_stage_fast_dev_run_sees_only_clean_clips(corpus, tmp_path):
    from tasks.train import train

    root, planted = corpus
    cfg = make_cfg("train.yaml", tmp_path / "run", [
        "data=folders", f"data.root={root}", "debug=fdr", "data.n_speakers=4", "data.n_per_speaker=2",
        "data.crop_seconds=1.0", "data.val_speakers=2", "data.num_workers=0"], tmp_path / "data")
    metrics, objs = train(cfg)
    assert np.isfinite(metrics["train/loss"])
    dm = objs["datamodule"]
    used = [r.path for r in dm.train_records + dm.val_records]
    h = dm.hparams
    summary = load_summary("folders", root, h.cache_dir, quality=h.quality, **h.corpus_options)
    _check_report(summary, planted, used)
    assert json.loads(json.dumps(summary))["quality"]["policy"]["actions"]["clipping"] == "keep"


def test_evaluate_stage_pretrained_ge2e_reports_the_counts_in_metrics_json(corpus, tmp_path):
    from tasks.evaluate import evaluate

    root, planted = corpus
    out = tmp_path / "eval"
    cfg = make_cfg("evaluate.yaml", out, [
        "backbone=ge2e", "data=folders", f"data.root={root}", "data.num_workers=0", "eval.n_folds=2",
        "eval.repeats=1", "eval.heads=[linear]", "eval.classes=[happy,sad]", "eval.verification_analysis=false"],
        tmp_path / "data")
    evaluate(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    data = metrics["data"]
    assert data["num_clips"] == 2 * len(GOOD_SPEAKERS) + 4
    assert data["quality_counts"] == {"nan_inf": 1, "digital_silence": 1, "near_silence": 1, "too_short": 1,
                                      "clipping": 1}
    assert data["skipped_counts"]["digital_silence: all samples zero"] == 1
    assert data["skipped_counts"]["not an audio file (.txt)"] == 1
    assert data["multichannel_counts"] == {"2": 1}
    assert sorted(data["sample_rate_outliers"]) == ["48000", "96000"]
    embedded = np.load(out / "embeddings.npz", allow_pickle=False)
    assert len(embedded["utt_id"]) == data["num_clips"]  # only the clips the report kept were embedded
