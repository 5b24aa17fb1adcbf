"""Layer features: every backbone's `layers(wav)`, their per-clip statistics (features=layer_stats),
layer selection, the softmax-weighted layer probe and evaluate.py on them."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.backbones import (ContextEncoderBackbone, ConvFeatureEncoderBackbone, DeepTalkBackbone,
                                         GE2EBackbone)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _speechlike(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    f0 = 100 + 80 * torch.rand(batch, 1, generator=g)
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)
    return 0.1 * env * torch.sin(2 * math.pi * f0 * t) + 0.01 * torch.randn(batch, n, generator=g)


@pytest.fixture(scope="module")
def ge2e() -> GE2EBackbone:
    torch.manual_seed(0)
    return GE2EBackbone(pretrained=False).eval()


@pytest.fixture(scope="module")
def deeptalk() -> DeepTalkBackbone:
    torch.manual_seed(0)
    return DeepTalkBackbone().eval()


# ----- layers() of every backbone -----
def test_ge2e_layers_are_mel_and_the_three_lstm_layers(ge2e):
    wav = _speechlike(16000, batch=2)
    layers = ge2e.layers(wav)
    assert ge2e.layer_names() == ["mel", "lstm1", "lstm2", "lstm3"]
    assert [tuple(y.shape) for y in layers] == [(2, 101, 40)] + [(2, 101, 256)] * 3
    assert ge2e.layer_dims() == [40, 256, 256, 256]
    # run layer by layer with the stacked LSTM's weights: the top layer is what frames/embed use
    assert torch.allclose(layers[0], ge2e.mel(ge2e._prepare(wav)))
    assert torch.allclose(layers[-1], ge2e.frames(wav), atol=1e-6)
    assert torch.allclose(ge2e._head(layers[-1][:, -1]), ge2e.embed(wav), atol=1e-6)
    # the middle layers are really the intermediate ones: lstm2 is the second layer of nn.LSTM(num_layers=2)
    two = torch.nn.LSTM(40, 256, 2, batch_first=True)
    two.load_state_dict({k: v for k, v in ge2e.lstm.state_dict().items() if k[-1] in "01"})
    assert torch.allclose(layers[2], two(layers[0])[0], atol=1e-6)


def test_ge2e_layers_carry_gradients(ge2e):
    wav = _speechlike(8000)
    ge2e.lstm.zero_grad()
    sum(y.mean() for y in ge2e.layers(wav)[1:]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ge2e.lstm.parameters())
    ge2e.lstm.zero_grad()


def test_deeptalk_layers_are_filterbank_reference_stages_gru_and_style(deeptalk):
    wav = _speechlike(32000, batch=2)  # 2 s: 199 filterbank frames
    layers = deeptalk.layers(wav)
    names = deeptalk.layer_names()
    assert names == ["filterbank", *(f"ref_conv{i}" for i in range(1, 7)), "gru", "style"]
    assert len(layers) == len(names) == 9
    t, shapes = 199, []
    for channels, freq in zip((32, 32, 64, 64, 128, 128), (20, 10, 5, 3, 2, 1)):
        t = (t - 1) // 2 + 1
        shapes.append((2, t, channels * freq))
    assert [tuple(y.shape) for y in layers] == [(2, 199, 40), *shapes, (2, 4, 128), (2, 1, 256)]
    assert torch.allclose(layers[0], deeptalk.frames(wav))
    assert torch.allclose(layers[-1][:, 0], deeptalk.embed(wav), atol=1e-6)
    assert torch.allclose(layers[-2][:, -1], deeptalk.reference_encoder(layers[0]), atol=1e-6)
    assert deeptalk.layer_dims() == [y.shape[-1] for y in layers]


def test_data2vec_cnn_and_context_encoder_layers():
    torch.manual_seed(0)
    cnn = ConvFeatureEncoderBackbone().eval()
    wav = _speechlike(16000)
    layers = cnn.layers(wav)
    assert cnn.layer_names() == [f"conv{i}" for i in range(1, 8)]
    assert [y.shape[1] for y in layers] == [3199, 1599, 799, 399, 199, 99, 49] and all(y.shape[2] == 512 for y in layers)
    assert torch.allclose(layers[-1], cnn.frames(wav))
    enc = ContextEncoderBackbone({"_target_": "tests.helpers.TinyBackbone"}, dim=32, depth=3, heads=2,
                                 n_extra_tokens=2, conv_pos_depth=2, conv_pos_width=10, conv_pos_groups=4,
                                 dropout=0.0, attention_dropout=0.0).eval()
    layers = enc.layers(wav)
    assert enc.layer_names() == ["block1", "block2", "block3"]
    assert [tuple(y.shape) for y in layers] == [(1, 101, 32)] * 3
    assert torch.allclose(layers[-1], enc.frames(wav))


def test_default_layers_of_a_minimal_backbone_are_its_frames():
    from tests.helpers import TinyBackbone

    b = TinyBackbone().eval()
    wav = _speechlike(16000)
    assert b.layer_names() == ["frames"] and torch.allclose(b.layers(wav)[0], b.frames(wav))


# ----- per-clip statistics of the layers -----
def _hand_stats(layers: list[torch.Tensor]) -> torch.Tensor:
    parts = []
    for y in layers:
        frames = y.reshape(-1, y.shape[-1]).double()
        parts += [frames.mean(0), frames.std(0, unbiased=False)]
    return torch.cat(parts).float()


def test_ge2e_layer_stats_of_a_short_clip_are_the_stats_of_its_layers(ge2e):
    clip = _speechlike(12000)[0]  # shorter than one 1.6 s partial: no padding enters the statistics
    stats, n_short = ge2e.layer_stats_utterances([clip])
    assert n_short == 1 and stats.shape == (1, 2 * (40 + 3 * 256))
    assert torch.allclose(stats[0], _hand_stats(ge2e.layers(clip[None])), rtol=1e-4, atol=1e-5)


def test_ge2e_layer_stats_of_a_long_clip_pool_the_partials_of_embed_utterances(ge2e):
    clip = _speechlike(40000, seed=3)[0]  # 2.5 s: partials at frames 0 and 77 (the second one padded)
    starts = ge2e.partial_slices(len(clip))
    assert starts == [0, 77]
    mel, _, n_valid = ge2e._utterance_partials(clip)
    per_partial = [ge2e._layers_from_mel(mel[None, s : s + 160]) for s in starts]
    pooled = [torch.cat([p[k][0, : min(160, n_valid - s)] for p, s in zip(per_partial, starts)]) for k in range(4)]
    stats, n_short = ge2e.layer_stats_utterances([clip, clip[:8000]])
    assert n_short == 1 and torch.allclose(stats[0], _hand_stats(pooled), rtol=1e-4, atol=1e-5)
    assert torch.allclose(stats[1], _hand_stats(ge2e.layers(clip[None, :8000])), rtol=1e-4, atol=1e-5)


def test_base_layer_stats_use_the_embedding_windows(deeptalk):
    clip = _speechlike(56000, seed=1)[0]  # 3.5 s: windows of 2 s every 1 s, the last flush with the end
    windows, padded = deeptalk.split_windows(clip)
    assert windows.shape[0] == 3 and not padded
    per_window = [deeptalk.layers(w[None]) for w in windows]
    pooled = [torch.cat([p[k] for p in per_window], dim=1) for k in range(9)]
    short = _speechlike(8000, seed=2)[0]
    stats, n_short = deeptalk.layer_stats_utterances([clip, short])
    assert n_short == 1 and stats.shape[1] == 2 * sum(deeptalk.layer_dims())
    assert torch.allclose(stats[0], _hand_stats(pooled), rtol=1e-4, atol=1e-5)
    assert torch.allclose(stats[1], _hand_stats(deeptalk.layers(short[None])), rtol=1e-4, atol=1e-5)
