"""Audio that enters through shards (no manifest probe) passes the same quality checks, and the shard
writer takes any format libsndfile decodes, whatever the file's extension says."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from datamodules.audio_quality import AudioQualityError
from datamodules.records import ClipRecord
from datamodules.shards import ShardDataset, read_index, write_shards

SR = 16000


def _record(path, i: int) -> ClipRecord:
    return ClipRecord(path=str(path), speaker=f"t:{i % 2}", corpus="t", utt_id=f"u{i}", emotion="sad")


@pytest.fixture()
def shard_dir(tmp_path):
    """Shards written straight from records (as a user with a hand-made record list would), no manifest probe."""
    rng = np.random.default_rng(0)
    files = {
        "good.wav": (0.1 * rng.standard_normal(SR)).astype("float32"),
        "silent.wav": np.zeros(SR, dtype="float32"),
        "short.wav": (0.1 * rng.standard_normal(SR // 50)).astype("float32"),
        "good2.wav": (0.1 * rng.standard_normal(SR)).astype("float32"),
    }
    records = []
    for i, (name, data) in enumerate(files.items()):
        sf.write(str(tmp_path / name), data, SR, subtype="PCM_16")
        records.append(_record(tmp_path / name, i))
    write_shards(records, tmp_path / "shards", clips_per_shard=2, progress=False)
    return tmp_path / "shards"


def test_reader_skips_counts_and_names_bad_clips(shard_dir):
    ds = ShardDataset(shard_dir, sample_rate=SR, rank=0, world_size=1)
    with pytest.warns(UserWarning, match=r"skipped 2 clip\(s\).*digital_silence.*silent.wav.*too_short"):
        items = list(ds)
    assert [rec.utt_id for rec, _ in items] == ["u0", "u3"]
    assert ds.quality_counts == {"nan_inf": 0, "digital_silence": 1, "near_silence": 0, "too_short": 1, "clipping": 0}


def test_reader_policy_keep_and_error(shard_dir):
    keep = ShardDataset(shard_dir, sample_rate=SR, rank=0, world_size=1,
                        quality={"actions": {"digital_silence": "keep", "too_short": "keep"}})
    with pytest.warns(UserWarning, match="kept 2 flagged clip"):
        assert len(list(keep)) == 4
    error = ShardDataset(shard_dir, sample_rate=SR, rank=0, world_size=1, quality={"actions": {"too_short": "error"}})
    with pytest.raises(AudioQualityError, match=r"too_short.*data.quality.actions.too_short=error"):
        list(error)
    off = ShardDataset(shard_dir, sample_rate=SR, rank=0, world_size=1, quality={"enabled": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(off)) == 4


def test_writer_takes_any_decodable_format_whatever_the_extension(tmp_path):
    data = (0.1 * np.random.default_rng(1).standard_normal(SR)).astype("float32")
    aiff = tmp_path / "clip.aiff"
    sf.write(str(aiff), data, SR, format="AIFF", subtype="PCM_16")
    flac_named_wav = tmp_path / "clip.wav"
    sf.write(str(flac_named_wav), data, SR, format="FLAC", subtype="PCM_16")
    fake = tmp_path / "fake.flac"
    fake.write_bytes(b"definitely not audio" * 20)
    with pytest.warns(UserWarning, match="1 clip"):
        write_shards([_record(aiff, 0), _record(flac_named_wav, 1), _record(fake, 2)], tmp_path / "s", progress=False)
    index = read_index(tmp_path / "s")
    assert index["num_clips"] == 2
    assert [p for p, _ in index["skipped"]] == [str(fake)] and "fake.flac" in index["skipped"][0][1]
    wavs = [wav for _, wav in ShardDataset(tmp_path / "s", sample_rate=SR, rank=0, world_size=1)]
    assert len(wavs) == 2 and all(np.allclose(w.numpy(), data, atol=1e-4) for w in wavs)
