"""The frozen prefix computed once per clip: cached and computed prefixes give the same numbers, the store
notices changed files and other weights, and the cut is what does not train."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import open_dict

from datamodules.datasets import CropDataset, UtteranceDataset, collate_crops
from datamodules.frozen_prefix import CachedPrefixes, ComputedPrefixes, PrefixStore, compute_prefixes
from datamodules.prefix import Prefix
from datamodules.records import ClipRecord
from lightning_modules.backbones.context_encoder import ContextEncoderBackbone
from lightning_modules.backbones.deeptalk import DeepTalkBackbone
from lightning_modules.backbones.ge2e import GE2EBackbone

pytestmark = pytest.mark.usefixtures("one_thread")
AUDIO = {"sample_rate": 16000, "trim_silence": False, "normalize_loudness": False}
QUIET = ["callbacks.model_summary=null", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false"]


def _speech(n: int, seed: int, sr: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 8))
    return (0.1 * x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.003 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture
def clips(tmp_path):
    """Five clips of 0.7 .. 3.9 s (one shorter than a training crop) as WAV files."""
    records = []
    for i, n in enumerate([11000, 26000, 40000, 52000, 62000]):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, _speech(n, i), 16000)
        records.append(ClipRecord(str(path), f"syn:{i % 2}", "syn", f"u{i}", emotion4="neutral"))
    return records


def _load(record):
    return torch.from_numpy(sf.read(record.path, dtype="float32")[0])


def _compute(backbone, cut):
    """What PrefixStore.add calls: records -> (record, prefix), here decoding the files directly."""
    run = compute_prefixes(backbone, cut)
    return lambda records: run((r, _load(r)) for r in records)


def _ge2e(frozen_layers: int = 0) -> GE2EBackbone:
    b = GE2EBackbone().eval()
    for k in range(frozen_layers):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(b.lstm, f"{name}_l{k}").requires_grad_(False)
    return b


def _deeptalk_frozen_filterbank() -> DeepTalkBackbone:
    torch.manual_seed(0)
    b = DeepTalkBackbone(sample_rate=16000).eval()
    b.filterbank.requires_grad_(False)
    return b


def _context_frozen_front_end() -> ContextEncoderBackbone:
    torch.manual_seed(0)
    return ContextEncoderBackbone(GE2EBackbone(), dim=32, depth=2, heads=2, n_extra_tokens=2, conv_pos_depth=2,
                                  conv_pos_width=10, conv_pos_groups=4, frame_pooling=2, freeze_front_end=True,
                                  dropout=0.0, attention_dropout=0.0).eval()


# ----- what the cut is -----
def test_the_cut_is_the_deepest_prefix_that_does_not_train():
    assert _ge2e(0).frozen_cut() == "mel"  # weightless: always a prefix
    assert _ge2e(1).frozen_cut() == "lstm1" and _ge2e(3).frozen_cut() == "lstm3"
    b = _ge2e(0)
    b.lstm.weight_ih_l1.requires_grad_(False)  # layer 2 frozen but layer 1 trains: the prefix stops at the mel
    assert b.frozen_cut() == "mel"
    assert DeepTalkBackbone(sample_rate=8000).frozen_cut() is None
    assert _deeptalk_frozen_filterbank().frozen_cut() == "filterbank"
    assert _context_frozen_front_end().frozen_cut() == "front_end"
    assert ContextEncoderBackbone(GE2EBackbone(), dim=32, depth=1, heads=2, conv_pos_groups=4).frozen_cut() is None


def test_ser_finetune_freezing_sets_the_cut():
    from lightning_modules.ser_finetune import SERFinetuneModule

    spec = {"_target_": "lightning_modules.backbones.ge2e.GE2EBackbone"}
    cuts = {mode: SERFinetuneModule(spec, class_names=["a", "b"], freeze=mode, freeze_stages=2).backbone.frozen_cut()
            for mode in ("none", "partial", "all")}
    assert cuts == {"none": "mel", "partial": "lstm1", "all": "lstm3"}


# ----- the store -----
@pytest.mark.parametrize("make, cut", [(lambda: _ge2e(1), "lstm1"), (_deeptalk_frozen_filterbank, "filterbank"),
                                       (_context_frozen_front_end, "front_end")])
def test_store_reads_back_exactly_what_the_prefix_computes(clips, tmp_path, make, cut):
    backbone = make()
    store = PrefixStore.for_backbone(tmp_path / "store", backbone, cut, AUDIO)
    assert store.add(clips[:2], _compute(backbone, cut), progress=False) == 2
    assert store.add(clips, _compute(backbone, cut), progress=False) == 3  # only the clips it lacked
    assert store.add(clips, _compute(backbone, cut), progress=False) == 0
    for r in clips:
        got, want = store.read(r), backbone.clip_prefix(_load(r), cut)
        assert got.cut == want.cut == cut and got.n_samples == want.n_samples
        assert torch.equal(got.values, want.values.float())


def test_a_changed_file_is_computed_again_and_other_weights_get_another_store(clips, tmp_path):
    backbone = _ge2e(1)
    store = PrefixStore.for_backbone(tmp_path / "s", backbone, "lstm1", AUDIO)
    store.add(clips, _compute(backbone, "lstm1"), progress=False)
    sf.write(clips[0].path, _speech(30000, 99), 16000)  # the file changes (size and mtime)
    assert store.missing(clips) == [clips[0]]
    assert store.add(clips, _compute(backbone, "lstm1"), progress=False) == 1
    assert torch.equal(store.read(clips[0]).values, backbone.clip_prefix(_load(clips[0]), "lstm1").values)

    other = _ge2e(1)
    with torch.no_grad():
        other.lstm.weight_ih_l0.mul_(1.01)  # a prefix weight: another store
    assert PrefixStore.for_backbone(tmp_path / "s", other, "lstm1", AUDIO).dir != store.dir
    above = _ge2e(1)
    with torch.no_grad():
        above.lstm.weight_ih_l2.mul_(1.01)  # a weight after the cut: the same prefix, the same store
    assert PrefixStore.for_backbone(tmp_path / "s", above, "lstm1", AUDIO).dir == store.dir
    assert PrefixStore.for_backbone(tmp_path / "s", backbone, "lstm1", {**AUDIO, "trim_silence": True}).dir != store.dir


# ----- cached == computed, for crops, whole clips and the model on top -----
@pytest.mark.parametrize("make, cut", [(lambda: _ge2e(0), "mel"), (lambda: _ge2e(1), "lstm1"),
                                       (_deeptalk_frozen_filterbank, "filterbank"), (_context_frozen_front_end, "front_end")])
def test_cached_and_computed_crops_and_whole_clips_are_identical(clips, tmp_path, make, cut):
    backbone = make()
    store = PrefixStore.for_backbone(tmp_path / "store", backbone, cut, AUDIO)
    store.add(clips, _compute(backbone, cut), progress=False)
    cached, computed = CachedPrefixes(backbone, cut, store), ComputedPrefixes(backbone, cut)
    items = [(i, 1000 + i) for i in range(len(clips))]  # (index, item seed): what the P x K sampler yields

    def crops(source):
        ds = CropDataset(clips, [0, 1, 0, 1, 0], 16000, 1.6, trim=False, prefix_source=source)
        return collate_crops([ds[it] for it in items])["wav"]

    a, b = crops(cached), crops(computed)
    assert isinstance(a, Prefix) and a.cut == cut and torch.equal(a.values, b.values)
    assert a.values.shape[1] == backbone.prefix_frames(25600, cut)  # 1.6 s crops, the short clip padded
    with torch.no_grad():
        assert torch.allclose(backbone.embed(a), backbone.embed(b), atol=1e-6)

    def whole(source):
        return [UtteranceDataset(clips, 16000, trim=False, prefix_source=source)[i]["wav"] for i in range(len(clips))]

    wa, wb = whole(cached), whole(computed)
    assert all(torch.equal(x.values, y.values) for x, y in zip(wa, wb))
    emb_a, _ = backbone.embed_utterances(wa)
    emb_b, _ = backbone.embed_utterances([_load(r) for r in clips])  # a waveform is turned into the prefix itself
    assert torch.allclose(emb_a, emb_b, atol=1e-5)
    stats_a, _ = backbone.layer_stats_utterances(wa)
    stats_b, _ = backbone.layer_stats_utterances([_load(r) for r in clips])
    assert torch.allclose(stats_a, stats_b, rtol=1e-4, atol=1e-5)


def test_deeptalk_filterbank_prefix_crops_are_the_filterbank_of_the_audio_crop(clips):
    """The filterbank sees each 20 ms frame on its own: a crop of the whole-clip prefix at a hop-aligned
    start is exactly the filterbank of that audio crop (the cut changes nothing for DeepTalk)."""
    b = _deeptalk_frozen_filterbank()
    wav = _load(clips[3])
    prefix = b.clip_prefix(wav, "filterbank")
    start, n = 37, 25600
    crop = prefix.crop(start, b.prefix_frames(n, "filterbank"), n)
    with torch.no_grad():
        direct = b.frames(wav[None, start * b.hop: start * b.hop + n])[0]
    assert torch.allclose(crop.values, direct, atol=1e-5)


def test_ge2e_mel_prefix_windows_are_the_resemblyzer_partials(clips):
    b = _ge2e(0)
    wav = _load(clips[4])
    prefix = b.clip_prefix(wav, "mel")
    starts, win, valid = b.prefix_windows(prefix)
    assert starts == b.partial_slices(len(wav)) and win == 160 and valid == 1 + len(wav) // 160
    from lightning_modules.backbones.ge2e import normalize_volume

    w = normalize_volume(wav[None], -30.0)[0]  # the whole clip's volume, as Resemblyzer normalises it
    w = torch.nn.functional.pad(w, (0, (starts[-1] + 160) * 160 - len(wav)))  # padded to cover the last partial
    assert torch.allclose(prefix.values, b.mel(w[None])[0], rtol=1e-5, atol=1e-6)


# ----- end to end: a training run with the store and without it -----
def _run(train_cfg_factory, enabled: bool, out: str, *overrides):
    from tasks.train import train

    cfg = train_cfg_factory(*overrides, *QUIET, f"callbacks.frozen_prefix.enabled={str(enabled).lower()}",
                            "trainer.max_epochs=2", "callbacks.model_checkpoint.monitor=null",
                            "++callbacks.early_stopping=null", out=out)
    metrics, objs = train(cfg)
    report = next(cb for cb in objs["trainer"].callbacks if type(cb).__name__ == "FrozenPrefixCache").report
    return metrics, objs["model"].state_dict(), report


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ("experiment=ser_finetune", "model.freeze=partial", "model.freeze_stages=2"),
    ("experiment=ser_finetune", "model.freeze=all"),
    ("experiment=distill", "model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.heads=2",
     "model.encoder.n_extra_tokens=2", "model.encoder.conv_pos_depth=2", "model.encoder.conv_pos_width=10",
     "model.encoder.conv_pos_groups=4", "model.top_k=1", "model.clone_batch=1", "model.probe_every_n_epochs=0"),
], ids=["ser_finetune_partial", "ser_finetune_all", "distill"])
def test_training_with_the_store_equals_training_without_it(train_cfg_factory, overrides):
    m_on, w_on, r_on = _run(train_cfg_factory, True, "on", *overrides)
    m_off, w_off, r_off = _run(train_cfg_factory, False, "off", *overrides)
    assert r_on["store"] and r_on["clips"] > 0 and r_off["store"] is None and r_on["cut"] == r_off["cut"]
    assert r_on["cut"] in ("lstm1", "lstm3", "front_end")
    assert np.isclose(m_on["train/loss"], m_off["train/loss"], rtol=1e-5, atol=1e-6)
    for k in w_on:
        assert torch.allclose(w_on[k].float(), w_off[k].float(), rtol=1e-4, atol=1e-6), k


def test_a_waveform_augmentation_computes_the_prefix_from_the_augmented_audio(train_cfg_factory):
    from tasks.train import train

    cfg = train_cfg_factory("experiment=contrastive_mtl", "augment=speaker", *QUIET, "debug=fdr")
    _, objs = train(cfg)
    report = next(cb for cb in objs["trainer"].callbacks if type(cb).__name__ == "FrozenPrefixCache").report
    assert report["cut"] == "mel" and report["store"] is None and "augmentation" in report["why"]
