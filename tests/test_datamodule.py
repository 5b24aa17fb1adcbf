"""SpeakerDataModule on the synthetic corpus: splits, batches, augmentation, shards."""
from __future__ import annotations

from collections import Counter

import torch
from hydra.utils import instantiate

from datamodules.augment import Compose, SpeedPerturb


def _dm(train_cfg_factory, *overrides):
    cfg = train_cfg_factory(*overrides)
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_held_out_speakers_never_train(train_cfg_factory):
    dm = _dm(train_cfg_factory)
    train_spk = {r.speaker for r in dm.train_records}
    val_spk = {r.speaker for r in dm.val_records}
    assert len(val_spk) == 2 and not train_spk & val_spk
    assert dm.num_speakers == len(train_spk) == 6


def test_train_batches_are_p_speakers_by_k_crops(train_cfg_factory):
    dm = _dm(train_cfg_factory)
    batch = next(iter(dm.train_dataloader()))
    assert batch["wav"].shape == (8, 16000)  # P=4 x K=2 crops of 1.0 s at 16 kHz
    assert sorted(Counter(batch["label"].tolist()).values()) == [2, 2, 2, 2]
    val = next(iter(dm.val_dataloader()))
    assert isinstance(val["wavs"], list) and len({w.shape[0] for w in val["wavs"]}) > 1  # whole utterances


def test_speed_perturbed_copies_are_new_speakers(train_cfg_factory):
    dm = _dm(train_cfg_factory)
    dm.augment = Compose([SpeedPerturb(factors=(0.9, 1.0, 1.1), p=1.0)])
    assert dm.num_speakers == 3 * 6
    ds = dm.train_dataset()
    torch.manual_seed(0)
    items = [ds[i] for i in range(20)]
    assert any(it["label"] >= 6 for it in items)  # some clips got a sped-up speaker id
    assert all(it["label"] % 6 == ds.labels[it["index"]] for it in items)  # ... of their own speaker


def test_shards_format_streams_the_training_clips(train_cfg_factory, tmp_path):
    dm = _dm(train_cfg_factory, "data.format=shards", f"data.shards_dir={tmp_path}/shards", "data.clips_per_shard=16")
    assert (tmp_path / "shards" / "shards.json").exists()
    loader = dm.train_dataloader()
    seen = [int(i) for b in loader for i in b["index"]]
    assert len(seen) == (len(dm.train_records) // 8) * 8  # full batches of P*K, each clip at most once
    assert len(set(seen)) == len(seen)
    batch = next(iter(loader))
    assert batch["wav"].shape == (8, 16000)
