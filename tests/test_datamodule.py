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
    assert dm.hparams.crop_seconds == 1.0
    assert batch["wav"].shape == (8, dm.hparams.sample_rate)  # P=4 x K=2 crops of 1.0 s at the backbone's rate
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
    assert all(it["speaker"] == ds.labels[it["index"]] for it in items)  # the original speaker travels along


def test_shards_format_streams_the_training_clips(train_cfg_factory, tmp_path):
    dm = _dm(train_cfg_factory, "data.format=shards", f"data.shards_dir={tmp_path}/shards", "data.clips_per_shard=16")
    assert (tmp_path / "shards" / "shards.json").exists()
    loader = dm.train_dataloader()
    seen = [int(i) for b in loader for i in b["index"]]
    assert len(seen) == (len(dm.train_records) // 8) * 8  # full batches of P*K, each clip at most once
    assert len(set(seen)) == len(seen)
    batch = next(iter(loader))
    assert batch["wav"].shape == (8, dm.hparams.sample_rate)  # 1.0 s crops


def test_validation_batches_carry_speaker_and_emotion_ids_of_validation_speakers_only(train_cfg_factory):
    dm = _dm(train_cfg_factory)
    batches = list(dm.val_dataloader())
    index = torch.cat([b["index"] for b in batches])
    speaker, emotion = torch.cat([b["speaker"] for b in batches]), torch.cat([b["emotion"] for b in batches])
    records = [dm.val_records[i] for i in index.tolist()]
    assert [dm.val_speakers[s] for s in speaker.tolist()] == [r.speaker for r in records]
    assert [dm.val_label_names[e] for e in emotion.tolist()] == [r.emotion4 for r in records]
    assert not set(dm.val_speakers) & {r.speaker for r in dm.train_records}


def test_val_label_field_is_checked_and_missing_labels_are_minus_one(train_cfg_factory):
    import pytest

    with pytest.raises(Exception, match=r"data\.val_label_field=.emotion5. is not a record field"):
        _dm(train_cfg_factory, "data.val_label_field=emotion5")
    dm = _dm(train_cfg_factory, "data.val_label_field=null")
    assert set(torch.cat([b["emotion"] for b in dm.val_dataloader()]).tolist()) == {-1}


def test_shard_order_changes_every_epoch_and_is_reproducible_with_workers(train_cfg_factory, tmp_path):
    """Persistent workers copy the dataset once; the epoch still reaches them (shared memory), so every
    epoch streams a new order, and the same epoch gives the same clips and crops in every run."""
    from types import SimpleNamespace

    shards = ["data.format=shards", f"data.shards_dir={tmp_path}/shards", "data.clips_per_shard=4", "data.num_workers=2",
              "data.shuffle_buffer=8"]
    dm = _dm(train_cfg_factory, *shards)
    dm.trainer = SimpleNamespace(current_epoch=0)  # what the loader reads the epoch from
    loader = dm.train_dataloader()
    assert loader.persistent_workers

    def one_epoch(epoch):
        dm.trainer.current_epoch = epoch
        batches = list(loader)
        return [b["index"].tolist() for b in batches], batches[0]["wav"]

    (order0, wav0), (order1, _), (again0, wav_again) = one_epoch(0), one_epoch(1), one_epoch(0)
    assert order0 != order1 and sorted(sum(order0, [])) == sorted(sum(order1, []))
    assert again0 == order0 and torch.equal(wav_again, wav0)
    other_run = _dm(train_cfg_factory, *shards)
    other_run.trainer = SimpleNamespace(current_epoch=1)
    assert [b["index"].tolist() for b in other_run.train_dataloader()] == order1


def test_a_fraction_of_validation_speakers_keeps_at_least_one():
    """A fraction rounds to a count, but never to none: round(0.25 * 2 speakers) is 0, which would leave a
    fold with no validation speaker and an epoch choice made on nothing."""
    from datamodules.speaker_datamodule import split_speakers

    fit, val = split_speakers(["a", "b", "c"], 0.1, seed=0)
    assert len(val) == 1 and len(fit) == 2 and not fit & val
    assert [len(split_speakers([str(i) for i in range(8)], 0.25, 0)[1]), len(split_speakers(
        [str(i) for i in range(52)], 0.25, 0)[1])] == [2, 13]
    assert split_speakers(["a", "b", "c"], 0, seed=0)[1] == set()  # 0: no validation, as asked


def test_batches_read_from_the_frozen_prefix_store_load_in_process_by_default(train_cfg_factory):
    """A stored prefix crop is a memory-map slice: handing it over from loader workers cost more than reading it
    (a freeze=all epoch 2.3x slower with 2 workers, BENCHMARKS.md). Audio and computed prefixes keep num_workers."""
    from types import SimpleNamespace

    dm = _dm(train_cfg_factory, "data.num_workers=2")
    assert dm.hparams.prefix_store_workers == 0
    loaders = lambda: [dm.train_dataloader(), dm.val_dataloader(), dm.utterance_loader(dm.val_records)]  # noqa: E731
    assert [dl.num_workers for dl in loaders()] == [2, 2, 2]  # audio
    dm.use_prefixes(SimpleNamespace(cached=False))  # the frozen part computed from decoded audio in the workers
    assert [dl.num_workers for dl in loaders()] == [2, 2, 2]
    dm.use_prefixes(SimpleNamespace(cached=True))
    assert [dl.num_workers for dl in loaders()] == [0, 0, 0]
    dm.hparams.prefix_store_workers = 1
    assert [dl.num_workers for dl in loaders()] == [1, 1, 1]
