from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.audio import load_audio
from datamodules.corpora.esd import parse_esd
from datamodules.manifest import probe_records
from datamodules.shards import INDEX_NAME, ShardDataset, read_index, write_shards
from tests.fixtures_corpora import build_esd, write_wav


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = build_esd(tmp_path_factory.mktemp("esd") / "ESD", ["0001", "0011"], per_emotion=1)
    recs, skipped = probe_records(parse_esd(root).records, num_workers=1, progress=False)
    assert len(recs) == 10 and skipped == []
    return recs


def _epoch(shard_dir, epoch: int, world_size: int = 2, num_workers: int = 2, **kw) -> list[list]:
    """Per-rank lists of (record, wav) for one epoch, each rank read through a real DataLoader."""
    per_rank = []
    for rank in range(world_size):
        ds = ShardDataset(shard_dir, sample_rate=16000, rank=rank, world_size=world_size, **kw)
        ds.set_epoch(epoch)
        per_rank.append(list(DataLoader(ds, batch_size=None, num_workers=num_workers)))
    return per_rank


@pytest.mark.parametrize("clips_per_shard", [3, 2], ids=["4-shards", "5-shards-uneven"])
def test_each_clip_once_per_epoch_and_round_trip(records, tmp_path, clips_per_shard):
    paths = write_shards(records, tmp_path / "shards", clips_per_shard=clips_per_shard, progress=False)
    index = read_index(tmp_path / "shards")
    assert [p.name for p in paths] == [s["name"] for s in index["shards"]]
    assert index["num_clips"] == 10 and index["audio_format"] == "original"
    originals = {r.utt_id: r for r in records}
    for epoch in (0, 1):
        per_rank = _epoch(tmp_path / "shards", epoch, shuffle=True, shuffle_buffer=4, seed=3)
        seen = Counter(rec.utt_id for rank in per_rank for rec, _ in rank)
        assert seen == Counter(list(originals))  # every clip exactly once over 2 ranks x 2 workers
        for rec, wav in (item for rank in per_rank for item in rank):
            assert rec == originals[rec.utt_id]
            assert torch.equal(wav, load_audio(rec.path, 16000))


def test_shuffle_is_seeded_and_changes_with_epoch(records, tmp_path):
    write_shards(records, tmp_path / "s", clips_per_shard=2, progress=False)

    def order(epoch, seed=0):
        ds = ShardDataset(tmp_path / "s", shuffle=True, shuffle_buffer=8, seed=seed, rank=0, world_size=1)
        ds.set_epoch(epoch)
        return [rec.utt_id for rec, _ in ds]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(0)) == sorted(order(1)) == sorted(r.utt_id for r in records)
    unshuffled = [rec.utt_id for rec, _ in ShardDataset(tmp_path / "s", rank=0, world_size=1)]
    assert unshuffled == [r.utt_id for r in records]


def test_clip_partition_is_balanced(records, tmp_path):
    write_shards(records, tmp_path / "s", clips_per_shard=10, progress=False)  # one shard, 4 consumers
    per_rank = _epoch(tmp_path / "s", 0, partition="clip")
    assert Counter(rec.utt_id for rank in per_rank for rec, _ in rank) == Counter(r.utt_id for r in records)
    assert [len(r) for r in per_rank] == [5, 5]
    # shard partition with fewer shards than consumers: still exactly once, just unbalanced
    per_rank = _epoch(tmp_path / "s", 0, partition="shard")
    assert sorted(len(r) for r in per_rank) == [0, 10]


def test_reencoded_shards_and_transform(records, tmp_path):
    write_shards(records, tmp_path / "s", clips_per_shard=4, sample_rate=8000, audio_format="flac", progress=False)
    assert read_index(tmp_path / "s")["audio_format"] == "flac"
    ds = ShardDataset(tmp_path / "s" / INDEX_NAME, sample_rate=8000, rank=0, world_size=1,
                      transform=lambda rec, wav: (rec.utt_id, wav.shape[0]))
    got = dict(ds)
    assert got == {r.utt_id: load_audio(r.path, 8000).shape[0] for r in records}
    rec, wav = next(iter(ShardDataset(tmp_path / "s", sample_rate=8000, rank=0, world_size=1)))
    assert torch.allclose(wav, load_audio(rec.path, 8000), atol=2 / 32768)


def test_bad_clips_reported_overwrite_and_reproducible_bytes(records, tmp_path):
    bad = records[0].__class__(**{**records[0].to_dict(), "utt_id": "broken", "path": str(tmp_path / "x.m4a")})
    with pytest.warns(UserWarning, match="1 clip"):
        write_shards([*records[:3], bad], tmp_path / "s", clips_per_shard=2, progress=False)
    index = json.loads((tmp_path / "s" / INDEX_NAME).read_text())
    assert index["num_clips"] == 3 and index["skipped"][0][0].endswith("x.m4a")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_shards(records, tmp_path / "s", progress=False)
    first = write_shards(records, tmp_path / "s", clips_per_shard=4, progress=False, overwrite=True)
    assert len(list((tmp_path / "s").glob("shard-*.tar"))) == 3
    blobs = [p.read_bytes() for p in first]
    second = write_shards(records, tmp_path / "s", clips_per_shard=4, progress=False, overwrite=True)
    assert [p.read_bytes() for p in second] == blobs


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard index"):
        ShardDataset(tmp_path)
    write_wav(tmp_path / "a.wav")
    with pytest.raises(ValueError, match="both rank and world_size"):
        ShardDataset([tmp_path / "a.wav"], rank=0)
    with pytest.raises(ValueError, match="clips_per_shard"):
        write_shards([], tmp_path / "s", clips_per_shard=0)
