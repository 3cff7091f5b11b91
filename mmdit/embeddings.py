"""Embedders: latent patches, the position table, the timestep and the pooled text vector.

Mirrors huggingface/candle@f8e2b36 candle-transformers/src/models/mmdit/embedding.rs and
Stability-AI/sd3.5@8df03ab mmditx.py (`PatchEmbed`, `TimestepEmbedder`, `VectorEmbedder`,
`MMDiTX.cropped_pos_embed`). Paper: arXiv 2403.03206, §4 and Fig. 2a (c = t_emb + y_emb).

Legend: b batch, c channels, h w latent grid in tokens, p patch side, d hidden size.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from sd3.errors import ConfigurationError


class PatchEmbed(nn.Module):
    """Latents (b, c, H, W) -> tokens (b, h*w, d) with a p x p convolution of stride p."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: the rearranged view is strided, and every op downstream would inherit its layout.
        return rearrange(self.proj(x), "b d h w -> b (h w) d").contiguous()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t (b,) -> (b, dim), [cos | sin] halves, computed in float32.

    The frequencies are max_period^(-i / (dim/2)), as in DiT and Stability's `TimestepEmbedder`.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (b, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t (b,) = sigma * 1000 -> (b, d): sinusoidal features through Linear, SiLU, Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class VectorEmbedder(nn.Module):
    """Pooled text vector y (b, adm) -> (b, d) through Linear, SiLU, Linear."""

    def __init__(self, input_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(y)


def cropped_pos_embed(
    pos_embed: torch.Tensor, h: int, w: int, *, patch_size: int, max_size: int
) -> torch.Tensor:
    """Center crop of the stored (1, max*max, d) sin-cos table to an h x w token grid -> (1, h*w, d).

    SD3 was trained on a table larger than any grid it sees, and the crop keeps the center so the
    positions of a square image match across resolutions.

    Raises:
        ConfigurationError: the grid is larger than the table; names the largest image size.
    """
    if h > max_size or w > max_size:
        largest = max_size * patch_size * 8
        raise ConfigurationError(
            f"a latent grid of {h}x{w} tokens ({h * patch_size * 8}x{w * patch_size * 8} pixels) "
            f"exceeds the checkpoint's {max_size}x{max_size} position table; the largest image "
            f"this model supports is {largest}x{largest} pixels"
        )
    top, left = (max_size - h) // 2, (max_size - w) // 2
    grid = rearrange(pos_embed, "1 (h w) d -> 1 h w d", h=max_size, w=max_size)
    return rearrange(grid[:, top : top + h, left : left + w], "1 h w d -> 1 (h w) d")
