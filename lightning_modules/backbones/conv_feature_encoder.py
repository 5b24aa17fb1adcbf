"""data2vec / wav2vec 2.0 convolutional feature encoder on raw 16 kHz audio (emotion2vec's front end).

Seven 1-D convolutions of 512 channels, kernels (10, 3, 3, 3, 3, 2, 2), strides (5, 2, 2, 2, 2, 2, 2):
a total stride of 320 samples, i.e. 50 frames per second at 16 kHz with a 400-sample (25 ms)
receptive field. As in data2vec 2.0's audio encoder (`extractor_mode: layer_norm`, the setting in
emotion2vec's released config) every convolution has no bias and is followed by a LayerNorm over
channels (computed in float32) and GELU. The waveform of each row is first normalised to zero mean
and unit variance (emotion2vec's `normalize: true`). Frames are `T = floor((S - 400) / 320) + 1`
(clips shorter than 400 samples are zero-padded to one frame).

On its own the encoder is a `Backbone` like the others (`embed` = L2-normalised mean of its frames),
so that `backbone=data2vec_cnn` can be chosen as the front end of the distillation objective,
which wraps it in a transformer context encoder (`context_encoder.py`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.backbones.base import Backbone

# (out_channels, kernel, stride) of data2vec 2.0 / emotion2vec's `feature_encoder_spec`.
DATA2VEC_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, T), in float32 (fairseq's Fp32LayerNorm + TransposeLast)."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            y = F.layer_norm(x.transpose(1, 2).float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.transpose(1, 2).to(x.dtype)


class ConvFeatureEncoderBackbone(Backbone):
    def __init__(self, sample_rate: int = 16000, conv_layers: list | tuple | None = None, dropout: float = 0.0,
                 normalize_waveform: bool = True, window_seconds: float = 2.0, window_hop_seconds: float = 1.0):
        super().__init__()
        layers = tuple(tuple(int(v) for v in layer) for layer in (conv_layers or DATA2VEC_CONV_LAYERS))
        if not layers or any(len(layer) != 3 or min(layer) < 1 for layer in layers):
            raise ValueError(f"backbone.conv_layers={conv_layers!r}: expected a list of (channels, kernel, stride) "
                             "with positive integers")
        self.sample_rate = int(sample_rate)
        self.window_seconds, self.window_hop_seconds = float(window_seconds), float(window_hop_seconds)
        self.normalize_waveform = normalize_waveform
        blocks, c_in = [], 1
        for c_out, kernel, stride in layers:
            blocks.append(nn.Sequential(nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=False), nn.Dropout(dropout),
                                        _ChannelLayerNorm(c_out), nn.GELU()))
            c_in = c_out
        self.conv_layers = nn.ModuleList(blocks)
        for block in self.conv_layers:
            nn.init.kaiming_normal_(block[0].weight)
        self.frame_dim = self.embedding_dim = c_in
        self.layer_spec = layers
        # receptive field and hop in samples
        self.receptive_field, self.hop = 1, 1
        for _, kernel, stride in reversed(layers):
            self.receptive_field = (self.receptive_field - 1) * stride + kernel
        for _, _, stride in layers:
            self.hop *= stride

    def num_frames(self, n_samples: int) -> int:
        return (max(n_samples, self.receptive_field) - self.receptive_field) // self.hop + 1

    def layers(self, wav: Tensor) -> list[Tensor]:
        """(B, S) -> every convolution block's output (B, T_l, C_l), T_l halving (first: fifth) per block."""
        if wav.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wav.shape)}")
        x = wav.float()
        if self.normalize_waveform:
            x = F.layer_norm(x, x.shape[-1:])
        if x.shape[1] < self.receptive_field:
            x = F.pad(x, (0, self.receptive_field - x.shape[1]))
        x, outs = x.unsqueeze(1), []
        for block in self.conv_layers:
            x = block(x)
            outs.append(x.transpose(1, 2))
        return outs

    def layer_names(self) -> list[str]:
        return [f"conv{i + 1}" for i in range(len(self.conv_layers))]

    def frames(self, wav: Tensor) -> Tensor:
        """(B, S) -> (B, T, 512) at sample_rate / 320 frames per second."""
        return self.layers(wav)[-1]

    def embed(self, wav: Tensor) -> Tensor:
        return F.normalize(self.frames(wav).mean(1).float(), dim=1)

    def flops_per_second(self) -> float:
        """Analytic FLOPs (2 x multiply-adds of the convolutions) per second of audio, long-clip limit."""
        rate, c_in, flops = float(self.sample_rate), 1, 0.0
        for c_out, kernel, stride in self.layer_spec:
            rate /= stride
            flops += 2 * rate * c_out * c_in * kernel
            c_in = c_out
        return flops
