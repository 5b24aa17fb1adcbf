"""A transformer context encoder over any backbone's frames: the student (and teacher) of distillation.

`ContextEncoderBackbone` wraps a front end (any `Backbone`: GE2E's LSTM frames, DeepTalk's DeepVOX
filterbank, the data2vec CNN) into a data2vec 2.0 / emotion2vec-style encoder:

    front_end.frames(wav)      (B, T, F)   computed once per clip (frozen: without gradient)
    avg-pool by frame_pooling  GE2E / DeepTalk give 100 Hz, pooling 2 gives emotion2vec's 50 Hz
    LayerNorm + Linear         (B, T, D)   data2vec 2.0's `project_features`     } `features(wav)`
    [masked frames := mask embedding]     (students only)                        } `context(x, mask)`:
    + convolutional positional encoding   data2vec 2.0: 5 grouped convs, width 95 }  `ContextTransformer`
    prepend n_extra_tokens learned tokens emotion2vec: 10 utterance tokens         }
    depth transformer blocks              ALiBi attention bias (emotion2vec's choice, optional)

Backbone API: `frames(wav)` = the last block's frame outputs (extra tokens removed), `layers(wav)` =
every block's frame outputs (layer-wise features), `embed(wav)` = the L2-normalised utterance
representation chosen by `embedding`: "chunk" (mean of the extra tokens' outputs, emotion2vec's
utterance loss), "token" (the first extra token) or "frames" (mean of the last block's frames,
what emotion2vec's released feature extractor returns).

The teacher of the distillation objective is an EMA copy of `context` (or of the whole backbone),
which is why the part after the front end lives in its own module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.prefix import Prefix
from lightning_modules.backbones.base import Backbone

EMBEDDINGS = ("chunk", "token", "frames")


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi's per-head slopes (Press et al. 2022), the geometric sequence data2vec 2.0 uses."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_two(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_heads - closest])


def alibi_bias(n_heads: int, n_frames: int, n_extra: int, device=None) -> Tensor:
    """(H, E + T, E + T) symmetric distance penalty -slope_h * |i - j| between frames; 0 for extra tokens."""
    pos = torch.arange(n_frames, device=device)
    distance = (pos[None, :] - pos[:, None]).abs().float()
    bias = -alibi_slopes(n_heads).to(device)[:, None, None] * distance
    return F.pad(bias, (n_extra, 0, n_extra, 0))


class ConvPositionalEncoder(nn.Module):
    """data2vec 2.0's relative positional encoder: `depth` grouped 'same' convolutions of kernel
    width // depth, each followed by LayerNorm (no affine) and GELU; its output is added to the input."""

    def __init__(self, dim: int, width: int = 95, depth: int = 5, groups: int = 16):
        super().__init__()
        if dim % groups:
            raise ValueError(f"encoder.dim={dim} must be divisible by encoder.conv_pos_groups={groups}")
        self.kernel = max(3, width // depth)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, self.kernel, padding=self.kernel // 2, groups=groups)
                                   for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        y = x.transpose(1, 2)
        for conv in self.convs:
            y = conv(y)
            if self.kernel % 2 == 0:  # 'same' length for even kernels (fairseq's SamePad)
                y = y[..., :-1]
            y = F.gelu(F.layer_norm(y.transpose(1, 2), y.shape[1:2]).transpose(1, 2))
        return y.transpose(1, 2)


class ContextBlock(nn.Module):
    """One transformer block. Post-LN (`norm_first=False`) as data2vec 2.0 base / emotion2vec
    (`layer_norm_first: false`), pre-LN as an option. Returns (block output, FFN output before the
    last residual connection): data2vec's two kinds of teacher targets."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 attention_dropout: float = 0.1, norm_first: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"encoder.dim={dim} must be divisible by encoder.heads={heads}")
        self.heads, self.norm_first, self.attention_dropout = heads, norm_first, attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def attention(self, x: Tensor, bias: Tensor | None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = bias.to(q.dtype) if bias is not None else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attention_dropout if self.training else 0.0)
        return self.drop(self.out(y.transpose(1, 2).reshape(b, n, d)))

    def forward(self, x: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.norm_first:
            x = x + self.attention(self.norm1(x), bias)
            ffn = self.mlp(self.norm2(x))
            return x + self.drop(ffn), ffn
        x = self.norm1(x + self.attention(x, bias))
        ffn = self.mlp(x)
        return self.norm2(x + self.drop(ffn)), ffn


@dataclass
class ContextOutput:
    tokens: Tensor  # (B, E, D) outputs of the extra (utterance) tokens
    frames: Tensor  # (B, T, D) last block, frame positions
    block_outputs: list[Tensor]  # depth x (B, T, D), frame positions
    ffn_outputs: list[Tensor]  # depth x (B, T, D), FFN outputs before the last residual


class ContextTransformer(nn.Module):
    """Mask embedding, positional convolution, extra tokens and the transformer blocks."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 attention_dropout: float = 0.1, n_extra_tokens: int = 10, norm_first: bool = False,
                 conv_pos_width: int = 95, conv_pos_depth: int = 5, conv_pos_groups: int = 16, alibi: bool = True):
        super().__init__()
        if depth < 1 or n_extra_tokens < 0:
            raise ValueError(f"encoder.depth={depth} must be >= 1 and encoder.n_extra_tokens={n_extra_tokens} >= 0")
        self.dim, self.heads, self.n_extra = dim, heads, n_extra_tokens
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())  # wav2vec 2.0 / data2vec 1.0 init
        self.positional = ConvPositionalEncoder(dim, conv_pos_width, conv_pos_depth, conv_pos_groups) if conv_pos_depth else None
        # emotion2vec (`init_extra_token_zero`): the first token starts at zero, the others random normal.
        extra = torch.zeros(1, n_extra_tokens, dim)
        if n_extra_tokens > 1:
            nn.init.normal_(extra[:, 1:])
        self.extra_tokens = nn.Parameter(extra)
        self.input_norm = nn.LayerNorm(dim) if not norm_first else None
        self.input_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(ContextBlock(dim, heads, mlp_ratio, dropout, attention_dropout, norm_first)
                                    for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim) if norm_first else None
        # data2vec 2.0's learned per-head ALiBi scale (clamped at 0), shared by all blocks.
        self.alibi_scale = nn.Parameter(torch.ones(heads, 1, 1)) if alibi else None

    def forward(self, x: Tensor, mask: Tensor | None = None) -> ContextOutput:
        """x: (B, T, D) projected features; mask: (B, T) bool, True = replace by the mask embedding."""
        b, t, _ = x.shape
        if mask is not None:
            if mask.shape != (b, t):
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match the features {(b, t)}")
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        if self.positional is not None:
            x = x + self.positional(x)
        if self.n_extra:
            x = torch.cat([self.extra_tokens.expand(b, -1, -1).to(x.dtype), x], dim=1)
        if self.input_norm is not None:
            x = self.input_norm(x)
        x = self.input_drop(x)
        bias = None
        if self.alibi_scale is not None:
            bias = (alibi_bias(self.heads, t, self.n_extra, x.device) * self.alibi_scale.clamp_min(0)).unsqueeze(0)
        blocks, ffns = [], []
        for i, block in enumerate(self.blocks):
            x, ffn = block(x, bias)
            if self.final_norm is not None and i == len(self.blocks) - 1:
                x = self.final_norm(x)
            blocks.append(x[:, self.n_extra:])
            ffns.append(ffn[:, self.n_extra:])
        return ContextOutput(x[:, : self.n_extra], x[:, self.n_extra:], blocks, ffns)


class ContextEncoderBackbone(Backbone):
    """front_end: a Backbone or its config ({_target_: ...}). See the module docstring."""

    def __init__(self, front_end: Backbone | Mapping[str, Any], dim: int = 256, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.1, attention_dropout: float = 0.1,
                 n_extra_tokens: int = 10, norm_first: bool = False, conv_pos_width: int = 95,
                 conv_pos_depth: int = 5, conv_pos_groups: int = 16, alibi: bool = True, frame_pooling: int = 1,
                 embedding: str = "chunk", freeze_front_end: bool = False, sample_rate: int | None = None,
                 window_seconds: float = 1.6, window_hop_seconds: float = 0.8):
        super().__init__()
        from lightning_modules.backbone_factory import build_backbone

        if embedding not in EMBEDDINGS:
            raise ValueError(f"encoder.embedding={embedding!r}: expected one of {EMBEDDINGS}")
        if embedding in ("chunk", "token") and n_extra_tokens < 1:
            raise ValueError(f"encoder.embedding={embedding!r} needs encoder.n_extra_tokens >= 1")
        if frame_pooling < 1:
            raise ValueError(f"encoder.frame_pooling={frame_pooling}: expected an integer >= 1")
        self.front_end = build_backbone(front_end)
        if sample_rate is not None and int(sample_rate) != self.front_end.sample_rate:
            raise ValueError(f"backbone.sample_rate={sample_rate} differs from the front end's "
                             f"{self.front_end.sample_rate} Hz")
        self.sample_rate = self.front_end.sample_rate
        self.embedding_dim = self.frame_dim = dim
        self.window_seconds, self.window_hop_seconds = float(window_seconds), float(window_hop_seconds)
        self.embedding, self.frame_pooling, self.freeze_front_end = embedding, int(frame_pooling), freeze_front_end
        if freeze_front_end:
            self.front_end.requires_grad_(False)
        self.feature_norm = nn.LayerNorm(self.front_end.frame_dim)
        self.feature_proj = nn.Linear(self.front_end.frame_dim, dim)
        self.context = ContextTransformer(dim, depth, heads, mlp_ratio, dropout, attention_dropout, n_extra_tokens,
                                          norm_first, conv_pos_width, conv_pos_depth, conv_pos_groups, alibi)

    # ----- pieces used by the distillation objective -----
    # ----- the frozen prefix: the front end's frames over the whole clip -----
    def cuts(self) -> list[str]:
        return ["front_end"]

    def cut_parameters(self, cut: str) -> list[str]:
        if cut != "front_end":
            raise ValueError(f"the context encoder has no cut {cut!r} (cuts: ['front_end'])")
        return [f"front_end.{n}" for n, _ in self.front_end.named_parameters()]

    def prefix_config(self) -> dict:
        front = self.front_end
        return {"front_end": f"{type(front).__module__}.{type(front).__qualname__}", **front.prefix_config()}

    def prefix_widths(self, cut: str) -> list[int]:
        return [self.front_end.frame_dim]

    def prefix_frames(self, n_samples: int, cut: str) -> int:
        return int(self.front_end.num_frames(int(n_samples)))

    def prefix_hop(self, cut: str) -> int:
        return int(self.front_end.hop)

    @torch.no_grad()
    def clip_prefix(self, wav: Tensor, cut: str) -> Prefix:
        self.cut_parameters(cut)
        w = wav.reshape(1, -1)
        return Prefix(self.front_end.frames(w)[0].float(), cut, int(w.shape[1]))

    def front_end_frames(self, wav: Tensor | Prefix) -> Tensor:
        if isinstance(wav, Prefix):
            if not wav.batched:
                raise ValueError("context encoder: expected a batch Prefix (B, T, D); embed whole clips with "
                                 "embed_utterances")
            return wav.values
        if self.freeze_front_end:
            with torch.no_grad():
                return self.front_end.frames(wav).detach()
        return self.front_end.frames(wav)

    def features(self, wav: Tensor) -> Tensor:
        """(B, S) -> (B, T, dim) projected front-end frames, the context transformer's input."""
        f = self.front_end_frames(wav)
        if self.frame_pooling > 1:
            f = F.avg_pool1d(f.transpose(1, 2), self.frame_pooling, ceil_mode=True).transpose(1, 2)
        return self.feature_proj(self.feature_norm(f))

    def encode(self, wav: Tensor, mask: Tensor | None = None) -> ContextOutput:
        return self.context(self.features(wav), mask)

    def pool(self, out: ContextOutput) -> Tensor:
        if self.embedding == "chunk":
            return out.tokens.mean(1)
        if self.embedding == "token":
            return out.tokens[:, 0]
        return out.frames.mean(1)

    # ----- Backbone API -----
    def frames(self, wav: Tensor) -> Tensor:
        return self.encode(wav).frames

    def layers(self, wav: Tensor) -> list[Tensor]:
        """Every block's (B, T, dim) frame outputs, bottom to top (the last one is `frames`); the extra
        tokens are left out (they are the utterance embedding's, not time steps)."""
        return self.encode(wav).block_outputs

    def layer_names(self) -> list[str]:
        return [f"block{i + 1}" for i in range(len(self.context.blocks))]

    def embed(self, wav: Tensor) -> Tensor:
        return F.normalize(self.pool(self.encode(wav)).float(), dim=1)
