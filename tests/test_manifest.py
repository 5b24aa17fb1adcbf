from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from datamodules.audio_quality import AudioQualityError, QualityPolicy
from datamodules.manifest import (
    ExpectedCountWarning, build_manifest, format_summary, load_manifest, load_summary, manifest_paths, probe_file,
)
from datamodules.records import read_jsonl
from tests.fixtures_corpora import SHARED_CORPORA, build_ravdess, build_voxceleb, ravdess_name, write_wav


@pytest.fixture()
def broken_tree(tmp_path):
    root = tmp_path / "clips"
    write_wav(root / "happy" / "spk1" / "ok.wav", n=8000, sr=16000)
    write_wav(root / "sad" / "spk1" / "ok2.wav", n=4000, sr=8000)
    (root / "sad" / "spk2").mkdir(parents=True)
    (root / "sad" / "spk2" / "empty.wav").write_bytes(b"")
    (root / "sad" / "spk2" / "zeros.wav").write_bytes(bytes(2048))
    (root / "sad" / "spk2" / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    (root / "happy" / "spk2").mkdir()
    sf.write(str(root / "happy" / "spk2" / "silent.wav"), np.zeros(8000, dtype="float32"), 16000, subtype="PCM_16")
    return root


def test_probe_reasons(broken_tree):
    base = broken_tree
    assert probe_file(base / "happy" / "spk1" / "ok.wav").info == (0.5, 16000, 1)
    assert probe_file(base / "sad" / "spk2" / "empty.wav") == (None, "empty file (0 bytes)", None)
    assert probe_file(base / "sad" / "spk2" / "zeros.wav").reason.startswith("all-zero header")
    assert probe_file(base / "sad" / "spk2" / "garbage.wav") == (None, "unreadable audio (.wav)", None)
    assert probe_file(base / "nope.wav") == (None, "missing audio file", None)
    header_only = probe_file(base / "happy" / "spk2" / "silent.wav")
    assert header_only.info == (0.5, 16000, 1) and header_only.quality is None
    checked = probe_file(base / "happy" / "spk2" / "silent.wav", QualityPolicy())
    assert checked.info == (0.5, 16000, 1) and checked.quality.category == "digital_silence"
    assert checked.quality.action == "skip"
    assert probe_file(base / "happy" / "spk1" / "ok.wav", QualityPolicy()).quality.category is None


def test_build_probe_skips_summary_and_cache(broken_tree, tmp_path, capsys):
    cache = tmp_path / "cache"
    recs = build_manifest("folders", broken_tree, cache, num_workers=2, progress=False)
    assert sorted(r.utt_id for r in recs) == ["happy/spk1/ok", "sad/spk1/ok2"]
    by_id = {r.utt_id: r for r in recs}
    assert (by_id["sad/spk1/ok2"].duration, by_id["sad/spk1/ok2"].sample_rate) == (0.5, 8000)
    out = capsys.readouterr().out
    assert "SKIPPED 4 item(s)" in out and "empty.wav" in out and "digital_silence: all samples zero" in out
    assert "happy" in out and "hours: 0.00" in out

    jsonl, summary_path = manifest_paths("folders", broken_tree, cache)
    assert read_jsonl(jsonl) == recs
    assert load_manifest("folders", broken_tree, cache) == recs
    with pytest.raises(FileNotFoundError, match="call build_manifest"):
        load_manifest("folders", broken_tree, cache, emotion_regex="x(y)")
    summary = json.loads(summary_path.read_text())
    assert summary["skipped_counts"] == {"empty file (0 bytes)": 1, "all-zero header (corrupt or truncated file)": 1,
                                         "unreadable audio (.wav)": 1, "digital_silence: all samples zero": 1}
    assert summary["per_emotion"] == {"happy": 1, "sad": 1} and summary["num_speakers"] == 1
    assert summary["quality_counts"]["digital_silence"] == 1

    # The cache is reused as long as root and options match: a file removed since is still listed.
    (broken_tree / "sad" / "spk1" / "ok2.wav").unlink()
    again = build_manifest("folders", broken_tree, cache, progress=False)
    assert again == recs and "(cached)" in capsys.readouterr().out
    # Different options -> different cache file, fresh parse; quality checks off = the old header-only probe.
    off = {"enabled": False}
    fresh = build_manifest("folders", broken_tree, cache, quality=off, progress=False, verbose=False)
    assert sorted(r.utt_id for r in fresh) == ["happy/spk1/ok", "happy/spk2/silent"]
    assert manifest_paths("folders", broken_tree, cache, quality=off)[0] != jsonl
    assert load_summary("folders", broken_tree, cache, quality=off)["quality"]["checked"] is False
    assert "audio quality: not checked" in format_summary(load_summary("folders", broken_tree, cache, quality=off))
    refreshed = build_manifest("folders", broken_tree, cache, refresh=True, verbose=False, progress=False)
    assert [r.utt_id for r in refreshed] == ["happy/spk1/ok"]
    assert load_summary("folders", broken_tree, cache)["num_clips"] == 1


def _quiet_tree(root):
    """Two clean clips and one at about -66 dBFS (near-silent under the default -60 dBFS)."""
    write_wav(root / "happy" / "s1" / "loud.wav", n=8000)
    write_wav(root / "sad" / "s1" / "loud2.wav", n=8000, seed=1)
    quiet = (5e-4 * np.random.default_rng(2).standard_normal(8000)).astype("float32")
    (root / "sad" / "s2").mkdir(parents=True)
    sf.write(str(root / "sad" / "s2" / "quiet.wav"), quiet, 16000, subtype="PCM_16")
    return root


def test_quality_policy_is_part_of_the_cache_key(tmp_path):
    root = _quiet_tree(tmp_path / "c")
    cache = tmp_path / "cache"
    default = build_manifest("folders", root, cache, progress=False, verbose=False)
    assert sorted(r.utt_id for r in default) == ["happy/s1/loud", "sad/s1/loud2"]
    # a lower threshold rebuilds (a new cache file) and keeps the quiet clip
    lenient = {"near_silence_dbfs": -80.0}
    assert manifest_paths("folders", root, cache, quality=lenient) != manifest_paths("folders", root, cache)
    assert len(build_manifest("folders", root, cache, quality=lenient, progress=False, verbose=False)) == 3
    # so does an action: keep-but-report puts the clip in the manifest with its flag, and names it
    keep = {"actions": {"near_silence": "keep"}}
    kept = build_manifest("folders", root, cache, quality=keep, progress=False, verbose=False)
    quiet = next(r for r in kept if r.utt_id == "sad/s2/quiet")
    assert quiet.extra["quality_flags"] == ["near_silence"]
    summary = load_summary("folders", root, cache, quality=keep)
    assert summary["quality"]["kept"] == {"near_silence": [quiet.path]} and summary["skipped_counts"] == {}
    assert summary["quality_counts"]["near_silence"] == 1
    # an explicit config equal to the defaults shares the default cache file
    assert manifest_paths("folders", root, cache, quality=QualityPolicy().to_dict()) == manifest_paths(
        "folders", root, cache)


def test_error_action_names_the_file_and_caches_nothing(tmp_path):
    root = _quiet_tree(tmp_path / "c")
    cache = tmp_path / "cache"
    strict = {"actions": {"near_silence": "error"}}
    expected = r"data\.quality\.actions\.near_silence=error: .*quiet\.wav \(active level -66"
    with pytest.raises(AudioQualityError, match=expected):
        build_manifest("folders", root, cache, quality=strict, progress=False, verbose=False)
    assert not cache.exists() or not any(cache.glob("*.jsonl"))


def test_bad_quality_config_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.quality.actions.near_silence='drop'"):
        QualityPolicy.from_config({"actions": {"near_silence": "drop"}})
    with pytest.raises(ValueError, match="data.quality.actions.silence: unknown category"):
        QualityPolicy.from_config({"actions": {"silence": "skip"}})
    with pytest.raises(ValueError, match="data.quality.min_secs: unknown key"):
        QualityPolicy.from_config({"min_secs": 1})
    with pytest.raises(ValueError, match="near_silence_dbfs"):
        QualityPolicy.from_config({"near_silence_dbfs": 10})


def test_expected_count_warning_and_stereo(tmp_path, capsys):
    files = [dict(emotion=1, actor=1), dict(emotion=5, actor=2), dict(channel=2, emotion=3, actor=2)]
    stereo = ravdess_name(emotion=5, actor=2)
    root = build_ravdess(tmp_path / "rav", files, stereo=[stereo])
    with pytest.warns(ExpectedCountWarning, match="total: expected 1440, found 2"):
        recs = build_manifest("ravdess", root, tmp_path / "cache", progress=False)
    assert {r.sample_rate for r in recs} == {48000}
    assert next(r for r in recs if r.utt_id == stereo[:-4]).extra["channels"] == 2
    out = capsys.readouterr().out
    assert "COUNT MISMATCH total: expected 1440, found 2" in out and "song" in out
    with pytest.warns(ExpectedCountWarning):  # the warning repeats when the cache is reused
        build_manifest("ravdess", root, tmp_path / "cache", progress=False, verbose=False)
    # parser options go into the cache key
    with pytest.warns(ExpectedCountWarning, match="expected 2452, found 3"):
        assert len(build_manifest("ravdess", root, tmp_path / "cache", include_song=True, verbose=False,
                                  progress=False)) == 3


def test_m4a_without_conversion_is_reported(tmp_path):
    root = build_voxceleb(tmp_path / "vox", ["id10001/yt/00001"], m4a_only=["id00012/yt2/00001"])
    recs = build_manifest("voxceleb", root, tmp_path / "cache", verbose=False, progress=False)
    assert [r.utt_id for r in recs] == ["id10001/yt/00001"]
    summary = load_summary("voxceleb", root, tmp_path / "cache")
    assert summary["skipped_counts"] == {"unreadable audio (.m4a)": 1}
    assert "unreadable audio (.m4a)" in format_summary(summary)


def test_real_emodb_manifest(tmp_path):
    emodb = SHARED_CORPORA / "emodb"
    if not emodb.is_dir():
        pytest.skip(f"{emodb} not available")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExpectedCountWarning)  # the full real corpus matches its published size
        recs = build_manifest("emodb", emodb, tmp_path / "cache", verbose=False, progress=False)
    assert len(recs) == 535
    assert {r.sample_rate for r in recs} == {22050}
    summary = load_summary("emodb", emodb, tmp_path / "cache")
    assert summary["total_hours"] == pytest.approx(sum(r.duration for r in recs) / 3600, abs=1e-3)
    assert summary["count_problems"] == [] and summary["per_emotion4"]["-"] == 535 - 339
    # every quality category counted: the copy's zero-padded endings are trimmed, no clip is flagged
    assert summary["quality_counts"] == {"nan_inf": 0, "digital_silence": 0, "near_silence": 0, "too_short": 0,
                                         "clipping": 0}
    assert summary["skipped_counts"] == {} and summary["multichannel_counts"] == {}
