"""DeepTalk speaker encoder: DeepVOX learnable filterbank on raw audio + GST style-token layer.

Follows the DeepTalk code the seed paper used (iPRoBe-lab/DeepTalk, `encoder/models/model_GST.py`,
`GST.py`, `utils/sigproc.py`):

* framing: 20 ms Hamming-windowed frames every 10 ms, each z-scored on its own (ddof=1);
  T = floor((S - frame) / hop) + 1 frames; a clip shorter than one frame is zero-padded to one.
  Unlike DeepTalk we keep silent (all-zero) frames, as zeros, so frames stay aligned with time.
* DeepVOX filterbank: six dilated 1-D convolutions along each frame's samples (channels
  1-2-4-8-16-32-40, kernels 5,5,7,9,11,11, dilations 2,2,3,4,5,5, SELU, 'valid', with DeepTalk's
  (3, 4) zero padding before the last one). At DeepTalk's 8 kHz a 160-sample frame shrinks to
  exactly one position, i.e. 40 features per frame. At higher rates positions remain (161 at
  16 kHz); we average them (`pool="mean"`, the filterbank's energy over the frame; "max" is an
  option). At 8 kHz both are DeepTalk's filterbank exactly.
* GST (Wang et al. 2018, as in DeepTalk's GST.py): reference encoder of six 3x3 stride-2 conv +
  BatchNorm + ReLU layers (32, 32, 64, 64, 128, 128 filters) over the (T, 40) feature map, a GRU
  of embedding_dim // 2 = 128 units over time, then a style-token layer: 10 tokens of
  embedding_dim // heads = 32 dimensions (tanh), 8-head attention with the GRU state as query,
  output embedding_dim = 256, L2-normalised.

`frames(wav)` returns the (B, T, 40) filterbank features (time-aligned, 10 ms steps); the
reference encoder's GRU runs 64x coarser in time, so its outputs are not used as frames.
`layers(wav)` returns every stage: filterbank, the six reference-encoder convolutions (as
(B, T_i, C_i * F_i) frames), the GRU outputs and the style embedding as a (B, 1, 256) layer.

Speed. The filterbank costs ~0.77 GFLOP per second of 16 kHz audio (0.09 at 8 kHz), almost all of
it in per-frame convolutions with tiny channel counts. Training (gradients needed) runs the plain
`reference` formulation. Inference runs a fast path that the tests check against it: activations
stay channels-last in pre-padded buffers reused across cache-sized chunks of frames; dilated
convolutions run as undilated (k, 1) conv2d over a (length / d, d) polyphase view (oneDNN brgconv,
AMX under bf16 autocast); the three narrow first layers run as block-Toeplitz matmuls; SELU's scale
is folded into the next layer's weights and the activation (ATen's elu) writes straight into the
next layer's input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.prefix import Prefix
from lightning_modules.backbones.base import Backbone

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# (out_channels, kernel, dilation) of DeepVOX's six filterbank convolutions; the last one's width is n_filters.
FILTERBANK_LAYERS = ((2, 5, 2), (4, 5, 2), (8, 7, 3), (16, 9, 4), (32, 11, 5), (None, 11, 5))
LAST_LAYER_PAD = (3, 4)  # DeepTalk's ZeroPad2d((0, 0, 3, 4)) before the last convolution
# How the fast path runs each layer: block-Toeplitz matmul (narrow layers) or polyphase conv2d.
FAST_METHODS = ("toeplitz", "toeplitz", "toeplitz", "poly", "poly", "poly")
TOEPLITZ_BLOCK = 16
REFERENCE_ENCODER_FILTERS = (32, 32, 64, 64, 128, 128)


def _selu_unscaled_into(z: Tensor, out: Tensor) -> Tensor:
    """out = selu(z) / scale = elu(z, alpha), written straight into the next layer's padded input.

    One pass, rounded once in bf16. (Cheaper-looking exp-based multi-pass versions lose in the
    pipeline: the extra memory passes cost more than expm1 does.)
    """
    return torch.ops.aten.elu.out(z, SELU_ALPHA, 1.0, 1.0, out=out)


@dataclass(frozen=True)
class _LayerPlan:
    method: str  # "toeplitz" or "poly"
    dilation: int
    kernel: int
    left: int  # zero positions before the data (DeepTalk's pad before the last layer)
    valid: int  # data positions
    storage: int  # positions the fast kernel reads (data + pads + round-up slack, all zero)
    out_len: int  # valid output positions


def _toeplitz_index(channels: int, out_channels: int, kernel: int, dilation: int, block: int) -> Tensor:
    """Index into [w.flatten(), 0] building the (C * window, block * O) matrix of a dilated conv over `block` outputs."""
    window = block + dilation * (kernel - 1)
    zero = out_channels * channels * kernel
    idx = torch.full((channels, window, block, out_channels), zero, dtype=torch.long)
    o = torch.arange(out_channels)
    for c in range(channels):
        for p in range(block):
            for j in range(kernel):
                idx[c, p + dilation * j, p] = (o * channels + c) * kernel + j
    return idx.reshape(channels * window, block * out_channels)


class DeepVOXFilterbank(nn.Module):
    """(M, frame_len) raw frames -> (M, n_filters): Hamming window, per-frame z-score, six dilated convs, pool."""

    def __init__(self, frame_len: int, n_filters: int = 40, pool: str = "mean", chunk_frames: int = 512):
        super().__init__()
        if pool not in ("mean", "max"):
            raise ValueError(f"filterbank pool must be 'mean' or 'max', got {pool!r}")
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.frame_len, self.n_filters, self.pool, self.chunk_frames = frame_len, n_filters, pool, chunk_frames
        self.register_buffer("window", torch.hamming_window(frame_len, periodic=False), persistent=False)
        convs, c_in = [], 1
        for c_out, k, d in FILTERBANK_LAYERS:
            convs.append(nn.Conv1d(c_in, c_out or n_filters, k, dilation=d))
            c_in = c_out or n_filters
        self.convs = nn.ModuleList(convs)
        self.reset_parameters()

        self.plan: list[_LayerPlan] = []
        valid = frame_len
        for i, (conv, method) in enumerate(zip(self.convs, FAST_METHODS)):
            o, c, k = conv.weight.shape
            d = conv.dilation[0]
            left, right = LAST_LAYER_PAD if i == len(self.convs) - 1 else (0, 0)
            out_len = valid + left + right - d * (k - 1)
            if out_len < 1:
                raise ValueError(f"frames of {frame_len} samples are shorter than the filterbank's receptive field: "
                                 "raise frame_ms or sample_rate")
            if method == "toeplitz":
                storage = -(-out_len // TOEPLITZ_BLOCK) * TOEPLITZ_BLOCK + d * (k - 1)
                self.register_buffer(f"toeplitz_idx{i}", _toeplitz_index(c, o, k, d, TOEPLITZ_BLOCK), persistent=False)
            else:
                storage = -(-(valid + left + right) // d) * d
            self.plan.append(_LayerPlan(method, d, k, left, valid, storage, out_len))
            valid = out_len
        self.positions = valid

    def reset_parameters(self) -> None:
        """LeCun-normal weights (std 1 / sqrt(fan_in)) and zero biases: SELU's self-normalising init.

        SELU keeps activations at zero mean and unit variance only from this init (Klambauer et al.
        2017). PyTorch's conv default (std 1 / sqrt(3 fan_in)) shrinks them layer by layer: on speech
        at 8 kHz the six layers' output std went 0.57 -> 0.20, the biases dominated and the features
        barely changed over time (std 0.15); with this init it stays ~1 through all six layers.
        """
        for conv in self.convs:
            fan_in = conv.in_channels * conv.kernel_size[0]
            nn.init.normal_(conv.weight, 0.0, 1.0 / math.sqrt(fan_in))
            nn.init.zeros_(conv.bias)

    def flops_per_frame(self) -> int:
        """2 x multiply-adds of the six convolutions over one frame (the useful work, no padding slack)."""
        return sum(2 * p.out_len * conv.weight.numel() for p, conv in zip(self.plan, self.convs))

    def normalize(self, frames: Tensor) -> Tensor:
        """Hamming window, then z-score each frame (ddof=1), as DeepTalk's get_frame_from_file; silence stays 0."""
        x = frames.float() * self.window
        x = x - x.mean(dim=-1, keepdim=True)
        return x / self._frame_std(x)

    def _frame_std(self, centred: Tensor) -> Tensor:
        # Faster than torch.std_mean's Welford loop on CPU (~5x); same value to float rounding.
        return (torch.linalg.vector_norm(centred, dim=-1, keepdim=True) / math.sqrt(self.frame_len - 1)).clamp_min(1e-8)

    # ----- the specification (also the training path) -----
    def reference(self, frames: Tensor) -> Tensor:
        """Plain DeepTalk formulation: conv1d over each frame, SELU, pad, pool."""
        x = self.normalize(frames).unsqueeze(1)
        for i, conv in enumerate(self.convs):
            if i == len(self.convs) - 1:
                x = F.pad(x, LAST_LAYER_PAD)
            x = F.selu(conv(x))
        return x.mean(-1) if self.pool == "mean" else x.amax(-1)

    def forward(self, frames: Tensor) -> Tensor:
        if frames.dim() != 2 or frames.shape[1] != self.frame_len:
            raise ValueError(f"expected (frames, {self.frame_len}) samples, got {tuple(frames.shape)}")
        if torch.is_grad_enabled() and (frames.requires_grad or any(p.requires_grad for p in self.parameters())):
            return self.reference(frames)  # autograd-friendly, memory-lean (F.selu saves one tensor per layer)
        weights, workspace = self._inference_weights(frames.device.type), {}
        return torch.cat([self._infer_chunk(c, weights, workspace) for c in frames.split(self.chunk_frames)])

    # ----- the fast inference path -----
    def _inference_weights(self, device_type: str) -> list[tuple[Tensor, Tensor]]:
        """Layers after the first read selu(z) / scale, so their weights absorb the scale; narrow ones become Toeplitz.

        Cast once to the autocast dtype here rather than by autocast in every chunk.
        """
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        out = []
        for i, (conv, plan) in enumerate(zip(self.convs, self.plan)):
            w = conv.weight * SELU_SCALE if i > 0 else conv.weight
            if plan.method == "toeplitz":
                w = torch.cat([w.reshape(-1), w.new_zeros(1)])[getattr(self, f"toeplitz_idx{i}")]
                b = conv.bias.repeat(TOEPLITZ_BLOCK)
            else:
                w, b = w.unsqueeze(-1), conv.bias
            out.append((w.to(dtype), b.to(dtype)) if dtype is not None else (w, b))
        return out

    def _buffer(self, workspace: dict, i: int, n: int, channels: int, dtype: torch.dtype,
                device: torch.device) -> tuple[Tensor, Tensor]:
        """Layer i's (F, storage, C) input, reused across chunks (pads zeroed once), and the view data goes in."""
        plan = self.plan[i]
        buf = workspace.get((i, dtype))
        if buf is None or buf.shape[0] < n:
            buf = torch.empty(max(n, self.chunk_frames), plan.storage, channels, dtype=dtype, device=device)
            buf[:, : plan.left].zero_()
            buf[:, plan.left + plan.valid :].zero_()
            workspace[(i, dtype)] = buf
        buf = buf[:n]
        return buf, buf[:, plan.left : plan.left + plan.valid]

    def _infer_chunk(self, frames: Tensor, weights: list[tuple[Tensor, Tensor]], workspace: dict) -> Tensor:
        n = frames.shape[0]
        buf, data = self._buffer(workspace, 0, n, 1, torch.float32, frames.device)
        x = torch.mul(frames, self.window, out=data.squeeze(-1))
        x.sub_(x.mean(dim=1, keepdim=True)).div_(self._frame_std(x))
        last = len(self.plan) - 1
        for i, (plan, (w, b)) in enumerate(zip(self.plan, weights)):
            if plan.method == "toeplitz":
                window = TOEPLITZ_BLOCK + plan.dilation * (plan.kernel - 1)
                cols = buf.unfold(1, window, TOEPLITZ_BLOCK)  # (F, blocks, C, window)
                y = torch.addmm(b, cols.reshape(-1, cols.shape[2] * window), w)
                z = y.view(n, -1, b.shape[0] // TOEPLITZ_BLOCK)[:, : plan.out_len]
            else:
                x4 = buf.view(n, -1, plan.dilation, buf.shape[2]).permute(0, 3, 1, 2)  # channels-last (F, C, L/d, d)
                y = F.conv2d(x4, w, b)
                z = y.permute(0, 2, 3, 1).reshape(n, -1, w.shape[0])[:, : plan.out_len]
            if i < last:
                buf, data = self._buffer(workspace, i + 1, n, z.shape[2], z.dtype, z.device)
                _selu_unscaled_into(z, data)
            else:
                h = _selu_unscaled_into(z, z)
        if self.pool == "max":
            return h.amax(1).float() * SELU_SCALE
        # sum, not mean: ATen's bf16 mean detours through a float32 copy (~5x slower); both accumulate in float32.
        return h.sum(1).float() * (SELU_SCALE / h.shape[1])


class ReferenceEncoder(nn.Module):
    """GST reference encoder: (B, T, n_mels) -> (B, gru_size) final GRU state."""

    def __init__(self, n_mels: int, gru_size: int, filters: tuple[int, ...] = REFERENCE_ENCODER_FILTERS):
        super().__init__()
        chans = (1, *filters)
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1) for i in range(len(filters)))
        self.bns = nn.ModuleList(nn.BatchNorm2d(f) for f in filters)
        freq = n_mels
        for _ in filters:
            freq = (freq - 1) // 2 + 1
        self.gru = nn.GRU(filters[-1] * freq, gru_size, batch_first=True)

    def stages(self, feats: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """(every conv stage's output as (B, T_i, C_i * F_i), GRU outputs (B, T', gru_size), final state (B, gru_size))."""
        x = feats.float().unsqueeze(1)  # (B, 1, T, n_mels)
        convs = []
        # float32 throughout, also under a bf16 autocast: on CPU, oneDNN's bf16 conv2d intermittently gave
        # non-finite outputs for the small last stage (same input, NaN in 3 of 4 calls; torch 2.11, Xeon with
        # AMX), and GRUs are not autocast ops on CPU anyway. The encoder is a small share of DeepTalk's cost.
        with torch.autocast(x.device.type, enabled=False):
            for conv, bn in zip(self.convs, self.bns):
                x = F.relu(bn(conv(x)))
                convs.append(x.transpose(1, 2).flatten(2))  # (B, T_i, C_i * F_i): the layout the GRU reads
            out, state = self.gru(convs[-1])
        return convs, out, state[0]

    def forward(self, feats: Tensor) -> Tensor:
        return self.stages(feats)[2]


class StyleTokenLayer(nn.Module):
    """DeepTalk's STL: multi-head attention of the reference embedding over tanh(style tokens).

    Init matters here. With the usual GST init (tokens ~ N(0, 0.5^2), PyTorch's default Linear init)
    and a GRU state of std ~0.2, the attention scores have std ~0.03: the attention is uniform, every
    clip gets the mean of the values (pairwise cosine 0.999 between different clips at init), and a
    metric loss has nothing to separate. That is harmless for Tacotron's reconstruction loss, fatal for
    speaker training from scratch. `normalize_query` standardises the reference embedding (layer norm
    without parameters), the projections start at LeCun-normal (std 1/sqrt(fan_in)) and the tokens at
    N(0, token_init_std^2): scores of std ~0.7, clips at cosine ~0.85 at init (BENCHMARKS.md, "DeepTalk
    from scratch"). `normalize_query=False, token_init_std=0.5` with `paper_init` gives the old behaviour.
    """

    def __init__(self, query_dim: int, n_tokens: int = 10, n_heads: int = 8, embedding_dim: int = 256,
                 normalize_query: bool = True, token_init_std: float = 1.0, paper_init: bool = False):
        super().__init__()
        if embedding_dim % n_heads:
            raise ValueError(f"embedding_dim={embedding_dim} must be divisible by gst_heads={n_heads}")
        self.n_heads, self.token_dim = n_heads, embedding_dim // n_heads
        self.normalize_query = normalize_query
        self.tokens = nn.Parameter(torch.randn(n_tokens, self.token_dim) * token_init_std)
        self.w_query = nn.Linear(query_dim, embedding_dim, bias=False)
        self.w_key = nn.Linear(self.token_dim, embedding_dim, bias=False)
        self.w_value = nn.Linear(self.token_dim, embedding_dim, bias=False)
        if not paper_init:
            for lin in (self.w_query, self.w_key, self.w_value):
                nn.init.normal_(lin.weight, 0.0, 1.0 / math.sqrt(lin.in_features))

    def attention(self, query: Tensor) -> Tensor:
        """(B, query_dim) -> (B, heads, tokens) attention weights."""
        if self.normalize_query:
            query = F.layer_norm(query, query.shape[-1:])
        keys = torch.tanh(self.tokens)
        q = self.w_query(query).unflatten(-1, (self.n_heads, -1))  # (B, H, d)
        k = self.w_key(keys).unflatten(-1, (self.n_heads, -1))  # (N, H, d)
        return (torch.einsum("bhd,nhd->bhn", q, k) / math.sqrt(self.token_dim)).softmax(-1)

    def forward(self, query: Tensor) -> Tensor:
        v = self.w_value(torch.tanh(self.tokens)).unflatten(-1, (self.n_heads, -1))
        return torch.einsum("bhn,nhd->bhd", self.attention(query), v).flatten(1)


class DeepTalkBackbone(Backbone):
    def __init__(
        self,
        sample_rate: int = 16000,
        frame_ms: float = 20.0,
        hop_ms: float = 10.0,
        n_filters: int = 40,
        gst_tokens: int = 10,
        gst_heads: int = 8,
        embedding_dim: int = 256,
        window_seconds: float = 2.0,
        window_hop_seconds: float = 1.0,
        filterbank_pool: str = "mean",
        chunk_frames: int = 512,
        gst_normalize_query: bool = True,
        gst_token_init_std: float = 1.0,
        gst_paper_init: bool = False,
    ):
        super().__init__()
        self.sample_rate, self.embedding_dim, self.frame_dim = sample_rate, embedding_dim, n_filters
        self.window_seconds, self.window_hop_seconds = window_seconds, window_hop_seconds
        self.frame_len = round(sample_rate * frame_ms / 1000)
        self.hop = round(sample_rate * hop_ms / 1000)
        if self.hop < 1:
            raise ValueError(f"hop_ms={hop_ms} at sample_rate={sample_rate} is less than one sample")
        self.filterbank = DeepVOXFilterbank(self.frame_len, n_filters, filterbank_pool, chunk_frames)
        self.reference_encoder = ReferenceEncoder(n_filters, embedding_dim // 2)
        self.style_tokens = StyleTokenLayer(embedding_dim // 2, gst_tokens, gst_heads, embedding_dim,
                                            gst_normalize_query, gst_token_init_std, gst_paper_init)

    def num_frames(self, n_samples: int) -> int:
        return max(0, n_samples - self.frame_len) // self.hop + 1

    def frame_signal(self, wav: Tensor) -> Tensor:
        """(B, S) -> (B * T, frame_len) raw frames (a view when B = 1); clips shorter than a frame are zero-padded."""
        if wav.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wav.shape)}")
        wav = wav.float()
        if wav.shape[1] < self.frame_len:
            wav = F.pad(wav, (0, self.frame_len - wav.shape[1]))
        return wav.unfold(1, self.frame_len, self.hop).reshape(-1, self.frame_len)

    def frames(self, wav: Tensor | Prefix) -> Tensor:
        """(B, S) -> (B, T, n_filters) filterbank features, one per hop (10 ms); a batch Prefix's are its values."""
        if isinstance(wav, Prefix):
            if not wav.batched:
                raise ValueError("DeepTalk: expected a batch Prefix (B, T, D); embed whole clips with embed_utterances")
            return wav.values
        return self.filterbank(self.frame_signal(wav)).view(wav.shape[0], -1, self.frame_dim)

    # ----- the frozen prefix: the DeepVOX filterbank (each 20 ms frame on its own) over the whole clip -----
    def cuts(self) -> list[str]:
        return ["filterbank"]

    def cut_parameters(self, cut: str) -> list[str]:
        if cut != "filterbank":
            raise ValueError(f"DeepTalk has no cut {cut!r} (cuts: ['filterbank'])")
        return [f"filterbank.{n}" for n, _ in self.filterbank.named_parameters()]

    def prefix_config(self) -> dict:
        return {"sample_rate": self.sample_rate, "frame_len": self.frame_len, "hop": self.hop,
                "n_filters": self.frame_dim, "pool": self.filterbank.pool}

    def prefix_widths(self, cut: str) -> list[int]:
        return [self.frame_dim]

    def prefix_frames(self, n_samples: int, cut: str) -> int:
        return self.num_frames(int(n_samples))

    def prefix_hop(self, cut: str) -> int:
        return self.hop

    @torch.no_grad()
    def clip_prefix(self, wav: Tensor, cut: str) -> Prefix:
        self.cut_parameters(cut)
        w = wav.reshape(1, -1)
        return Prefix(self.frames(w)[0], cut, int(w.shape[1]))

    def embed_frames(self, feats: Tensor) -> Tensor:
        """(B, T, n_filters) filterbank features -> (B, embedding_dim) L2-normalised style embedding."""
        return F.normalize(self.style_tokens(self.reference_encoder(feats)).float(), dim=1)

    def embed(self, wav: Tensor | Prefix) -> Tensor:
        return self.embed_frames(self.frames(wav))

    def layers(self, wav: Tensor | Prefix) -> list[Tensor]:
        """[filterbank (B, T, 40), ref_conv1..6 (B, T_i, C_i * F_i), gru (B, T_6, 128), style (B, 1, 256)].

        T_i = ceil(T / 2^i) (the reference encoder halves time at every stage); `style` is the L2-normalised
        embedding `embed(wav)` as a one-frame layer."""
        feats = self.frames(wav)
        convs, gru_out, state = self.reference_encoder.stages(feats)
        style = F.normalize(self.style_tokens(state).float(), dim=1)
        return [feats, *convs, gru_out, style.unsqueeze(1)]

    def layer_names(self) -> list[str]:
        n_convs = len(self.reference_encoder.convs)
        return ["filterbank", *(f"ref_conv{i + 1}" for i in range(n_convs)), "gru", "style"]

    def flops_per_second(self) -> float:
        """Analytic FLOPs (2 x multiply-adds) to embed one second of audio: long-clip limit, no window overlap."""
        fps = self.sample_rate / self.hop
        macs, rate, freq = 0.0, fps, self.frame_dim
        for conv in self.reference_encoder.convs:
            rate, freq = rate / 2, (freq - 1) // 2 + 1
            macs += rate * freq * conv.out_channels * conv.in_channels * 9
        gru = self.reference_encoder.gru
        macs += rate * 3 * gru.hidden_size * (gru.input_size + gru.hidden_size)
        return fps * self.filterbank.flops_per_frame() + 2 * macs
