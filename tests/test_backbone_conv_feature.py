"""The data2vec CNN front end and the emotion2vec-base preset's size."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.backbones import BACKBONES
from lightning_modules.backbones.conv_feature_encoder import ConvFeatureEncoderBackbone


@pytest.mark.parametrize("n_samples", [400, 719, 720, 16000, 48000, 100])
def test_frames_follow_the_stride_320_receptive_field_400_arithmetic(n_samples):
    enc = ConvFeatureEncoderBackbone()
    assert (enc.receptive_field, enc.hop) == (400, 320)
    expected = max(n_samples - 400, 0) // 320 + 1  # shorter clips are padded to one frame
    f = enc.frames(torch.randn(2, n_samples))
    assert f.shape == (2, expected, 512) and enc.num_frames(n_samples) == expected
    assert enc.sample_rate / enc.hop == 50.0


def test_waveform_normalisation_removes_gain_and_dc_offset():
    enc = ConvFeatureEncoderBackbone().eval()
    wav = torch.randn(1, 16000)
    assert torch.allclose(enc.frames(wav), enc.frames(wav * 37.0 + 0.5), atol=1e-4)
    raw = ConvFeatureEncoderBackbone(normalize_waveform=False).eval()
    raw.load_state_dict(enc.state_dict())
    assert not torch.allclose(raw.frames(wav), raw.frames(wav + 0.5), atol=1e-2)


def test_analytic_flops_match_the_flop_counter():
    enc = ConvFeatureEncoderBackbone()
    wav = torch.randn(1, 16000 * 4 + 80)  # 4 s plus the receptive-field overhang: 200 frames
    with FlopCounterMode(display=False) as counter:
        enc.frames(wav)
    assert counter.get_total_flops() == pytest.approx(4 * enc.flops_per_second(), rel=0.01)


def test_registered_and_bad_layers_are_named():
    assert BACKBONES["data2vec_cnn"] is ConvFeatureEncoderBackbone
    with pytest.raises(ValueError, match="backbone.conv_layers"):
        ConvFeatureEncoderBackbone(conv_layers=[(512, 10)])


def test_base_preset_is_emotion2vec_base_sized(tmp_path):
    """12 blocks x 768, 12 heads, 10 utterance tokens over the data2vec CNN: ~94 M parameters (emotion2vec base)."""
    from tests.conftest import make_cfg
    from tasks.train import build_model

    model = build_model(make_cfg("train.yaml", tmp_path, ["experiment=distill_base"]))
    ctx = model.backbone.context
    assert (len(ctx.blocks), ctx.dim, ctx.heads, ctx.n_extra) == (12, 768, 12, 10)
    assert isinstance(model.backbone.front_end, ConvFeatureEncoderBackbone)
    student = sum(p.numel() for p in model.backbone.parameters()) + sum(p.numel() for p in model.decoder.parameters())
    assert 92e6 < student < 96e6, student
    assert model.hparams.top_k == 8 and model.hparams.clone_batch == 8
