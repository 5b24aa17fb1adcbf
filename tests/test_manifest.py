from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from datamodules.manifest import (
    ExpectedCountWarning, build_manifest, format_summary, load_manifest, load_summary, manifest_paths, probe_file,
)
from datamodules.records import read_jsonl
from tests.fixtures_corpora import SHARED_CORPORA, build_ravdess, build_voxceleb, ravdess_name, write_wav


@pytest.fixture()
def broken_tree(tmp_path):
    root = tmp_path / "clips"
    write_wav(root / "happy" / "spk1" / "ok.wav", n=1600, sr=16000)
    write_wav(root / "sad" / "spk1" / "ok2.wav", n=800, sr=8000)
    (root / "sad" / "spk2").mkdir(parents=True)
    (root / "sad" / "spk2" / "empty.wav").write_bytes(b"")
    (root / "sad" / "spk2" / "zeros.wav").write_bytes(bytes(2048))
    (root / "sad" / "spk2" / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    (root / "happy" / "spk2").mkdir()
    sf.write(str(root / "happy" / "spk2" / "silent.wav"), np.zeros(400, dtype="float32"), 16000, subtype="PCM_16")
    return root


def test_probe_reasons(broken_tree):
    base = broken_tree
    assert probe_file(base / "happy" / "spk1" / "ok.wav")[0] == (0.1, 16000, 1)
    assert probe_file(base / "sad" / "spk2" / "empty.wav") == (None, "empty file (0 bytes)")
    assert probe_file(base / "sad" / "spk2" / "zeros.wav")[1].startswith("all-zero header")
    assert probe_file(base / "sad" / "spk2" / "garbage.wav") == (None, "unreadable audio (.wav)")
    assert probe_file(base / "nope.wav") == (None, "missing audio file")
    assert probe_file(base / "happy" / "spk2" / "silent.wav")[0] is not None
    assert probe_file(base / "happy" / "spk2" / "silent.wav", check_silence=True) == (None, "silent audio (all samples zero)")


def test_build_probe_skips_summary_and_cache(broken_tree, tmp_path, capsys):
    cache = tmp_path / "cache"
    recs = build_manifest("folders", broken_tree, cache, check_silence=True, num_workers=2, progress=False)
    assert sorted(r.utt_id for r in recs) == ["happy/spk1/ok", "sad/spk1/ok2"]
    by_id = {r.utt_id: r for r in recs}
    assert (by_id["sad/spk1/ok2"].duration, by_id["sad/spk1/ok2"].sample_rate) == (0.1, 8000)
    out = capsys.readouterr().out
    assert "SKIPPED 4 item(s)" in out and "empty.wav" in out and "silent audio" in out
    assert "happy" in out and "hours: 0.00" in out

    jsonl, summary_path = manifest_paths("folders", broken_tree, cache, check_silence=True)
    assert read_jsonl(jsonl) == recs
    assert load_manifest("folders", broken_tree, cache, check_silence=True) == recs
    with pytest.raises(FileNotFoundError, match="call build_manifest"):
        load_manifest("folders", broken_tree, cache, check_silence=True, emotion_regex="x(y)")
    summary = json.loads(summary_path.read_text())
    assert summary["skipped_counts"] == {"empty file (0 bytes)": 1, "all-zero header (corrupt or truncated file)": 1,
                                         "unreadable audio (.wav)": 1, "silent audio (all samples zero)": 1}
    assert summary["per_emotion"] == {"happy": 1, "sad": 1} and summary["num_speakers"] == 1

    # The cache is reused as long as root and options match: a file removed since is still listed.
    (broken_tree / "sad" / "spk1" / "ok2.wav").unlink()
    again = build_manifest("folders", broken_tree, cache, check_silence=True, progress=False)
    assert again == recs and "(cached)" in capsys.readouterr().out
    # Different options -> different cache file, fresh parse.
    fresh = build_manifest("folders", broken_tree, cache, check_silence=False, progress=False, verbose=False)
    assert sorted(r.utt_id for r in fresh) == ["happy/spk1/ok", "happy/spk2/silent"]
    assert manifest_paths("folders", broken_tree, cache, check_silence=False)[0] != jsonl
    refreshed = build_manifest("folders", broken_tree, cache, check_silence=True, refresh=True, verbose=False,
                               progress=False)
    assert [r.utt_id for r in refreshed] == ["happy/spk1/ok"]
    assert load_summary("folders", broken_tree, cache, check_silence=True)["num_clips"] == 1


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
