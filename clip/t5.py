"""The T5 v1.1 encoder (T5-XXL in SD3): RMSNorm, shared relative position bias, gated GELU.

Mirrors transformers' `T5EncoderModel` (transformers/models/t5/modeling_t5.py), whose parameter
names the SD3 checkpoints use, and Candle's candle-transformers/src/models/t5.rs. Raffel et al.,
arXiv 1910.10683, §2.1: no attention scaling (it is folded into the initialisation) and a learned
bias per (bucketed) relative position, computed in block 0 and shared by every block.

Precision: the residual stream is kept in float32 whatever the weights' dtype, and in float16 the
`wo` projections stay float32 too (as transformers' `_keep_in_fp32_modules` does). T5-XXL's
activations exceed float16's range; without this its output turns to inf/NaN and images go black.

Legend: b batch, n tokens, h heads, e head dim (d_kv), d model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sd3.clip.config import T5Config


class T5LayerNorm(nn.Module):
    """RMSNorm without mean subtraction or bias, computed in float32: x / rms(x) * weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) float32 -> (..., d) in the weight's dtype."""
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(self.weight.dtype)


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional buckets: half for keys after the query; within each half, exact buckets for
    distances below num_buckets/4 and logarithmically wider ones up to `max_distance`."""
    half = num_buckets // 2
    bucket = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    log_bucket = exact + (
        torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    log_bucket = log_bucket.clamp(max=half - 1)
    return bucket + torch.where(distance < exact, distance, log_bucket)


class T5Attention(nn.Module):
    """Self-attention without biases or scaling; block 0 also owns `relative_attention_bias`."""

    def __init__(self, config: T5Config, has_relative_bias: bool) -> None:
        super().__init__()
        self.config = config
        inner = config.num_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.relative_attention_bias = (
            nn.Embedding(config.relative_attention_num_buckets, config.num_heads) if has_relative_bias else None
        )

    def position_bias(self, n: int, device: torch.device) -> torch.Tensor:
        """(1, h, n, n) float32 bias added to the attention logits of every block."""
        cfg = self.config
        positions = torch.arange(n, device=device)
        relative = positions[None, :] - positions[:, None]  # key position - query position
        buckets = relative_position_bucket(relative, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        return rearrange(self.relative_attention_bias(buckets).float(), "q k h -> 1 h q k")

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (b, n, d) in the weights' dtype, bias (1, h, n, n) -> (b, n, d)."""
        q, k, v = (rearrange(p(x), "b n (h e) -> b h n e", h=self.config.num_heads) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.o(rearrange(out, "b h n e -> b n (h e)"))


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, has_relative_bias: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_bias)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias).float()


class T5DenseGatedActDense(nn.Module):
    """wo(gelu_tanh(wi_0 x) * wi_1 x): the gated-GELU feed-forward of T5 v1.1."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        weight = self.wo.weight  # read once: a quantised weight is dequantised on each read
        return F.linear(hidden.to(weight.dtype), weight)


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(config)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x)).float()


class T5Block(nn.Module):
    def __init__(self, config: T5Config, has_relative_bias: bool) -> None:
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, has_relative_bias), T5LayerFF(config)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.layer[1](self.layer[0](x, bias))


class T5Encoder(nn.Module):
    """Token ids (b, n) -> last hidden state (b, n, d) after the final RMSNorm."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = nn.Module()
        self.encoder.block = nn.ModuleList(T5Block(config, has_relative_bias=i == 0) for i in range(config.num_layers))
        self.encoder.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.final_layer_norm.weight.dtype  # not `shared`, which may be a quantised 32k x 4096

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        blocks = self.encoder.block
        x = self.shared(input_ids).float()  # (b, n, d): the residual stream stays float32
        bias = blocks[0].layer[0].SelfAttention.position_bias(input_ids.shape[1], input_ids.device)
        for block in blocks:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)
