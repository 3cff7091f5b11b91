"""The VAE's building blocks: ResNet block, down/up sampling, and the mid block's attention.

Mirrors diffusers' `ResnetBlock2D`, `Downsample2D`, `Upsample2D` and the VAE mid-block attention
(diffusers/models/resnet.py, attention_processor.py), which Candle's
candle-transformers/src/models/stable_diffusion/{resnet.rs, attention.rs, unet_2d_blocks.rs}
follow. Legend: b batch, c channels, h w spatial size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

EPS = 1e-6  # GroupNorm epsilon of the SD3 VAE


class ResnetBlock(nn.Module):
    """(GroupNorm, SiLU, 3x3 conv) twice, plus the input (through a 1x1 `conv_shortcut` if c changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, c_in, h, w) -> (b, c_out, h, w)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class Downsample(nn.Module):
    """Halves h and w: pad one pixel right and bottom, then a 3x3 conv of stride 2 (LDM's asymmetric pad)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Doubles h and w: nearest-neighbour upsampling, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class AttentionBlock(nn.Module):
    """Single-head self-attention over all h*w positions, with a residual connection.

    q, k, v and the output projection are 1x1 convolutions, as the checkpoint stores them.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.proj_attn = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, c, h, w) -> (b, c, h, w)."""
        _, _, height, _ = x.shape
        normed = self.group_norm(x)
        q, k, v = (rearrange(f(normed), "b c h w -> b 1 (h w) c") for f in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, h*w, c)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height)
        return x + self.proj_attn(out)


class MidBlock(nn.Module):
    """ResNet block, attention, ResNet block, at the lowest resolution."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([AttentionBlock(channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


def resnet_stack(in_channels: int, out_channels: int, layers: int, groups: int) -> nn.ModuleList:
    """`layers` ResNet blocks; the first changes the channel count."""
    return nn.ModuleList(
        ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers)
    )


class DownBlock(nn.Module):
    """An encoder level: ResNet blocks, then a `Downsample` unless it is the last level."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, downsample: bool) -> None:
        super().__init__()
        self.resnets = resnet_stack(in_channels, out_channels, layers, groups)
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpBlock(nn.Module):
    """A decoder level: ResNet blocks, then an `Upsample` unless it is the last level."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = resnet_stack(in_channels, out_channels, layers, groups)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)
