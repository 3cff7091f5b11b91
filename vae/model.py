"""The SD3 AutoencoderKL: an encoder to a 16-channel latent distribution and a decoder back.

Mirrors diffusers' `AutoencoderKL` with `Encoder`/`Decoder` (diffusers/models/autoencoders/vae.py)
and Candle's candle-transformers/src/models/stable_diffusion/vae.rs, configured as in
huggingface/candle@f7ed457 candle-examples/examples/stable-diffusion-3/vae.rs (no quant convs).
Module names are diffusers-style; vae/rename.py maps them onto the checkpoint's names.

`decode` and `encode` work in the VAE's own latent space; the SD3 scaling of latents lives in
vae/scaling.py. Legend: b batch, c channels, H W image size, h w latent size (H = 8h).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sd3.errors import VAEDecodingError
from sd3.vae.blocks import EPS, DownBlock, MidBlock, UpBlock
from sd3.vae.config import VAEConfig


class Encoder(nn.Module):
    """Image (b, 3, H, W) -> mean and log-variance stacked, (b, 2 * latent, h, w)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        channels, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(
                channels[max(i - 1, 0)], channels[i], config.layers_per_block, groups, downsample=i < len(channels) - 1
            )
            for i in range(len(channels))
        )
        self.mid_block = MidBlock(channels[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=EPS)
        self.conv_out = nn.Conv2d(channels[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents (b, latent, h, w) -> image (b, 3, H, W), roughly in [-1, 1]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        channels, groups = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], 3, padding=1)
        self.mid_block = MidBlock(channels[0], groups)
        self.up_blocks = nn.ModuleList(
            UpBlock(
                channels[max(i - 1, 0)], channels[i], config.layers_per_block + 1, groups, upsample=i < len(channels) - 1
            )
            for i in range(len(channels))
        )
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=EPS)
        self.conv_out = nn.Conv2d(channels[-1], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoEncoderKL(nn.Module):
    """The SD3 VAE. Images are (b, 3, H, W) in [-1, 1]; latents (b, 16, H/8, W/8) in VAE space."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.weight.dtype

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """VAE-space latents (b, latent, h, w) -> images (b, 3, 8h, 8w), before any clamping."""
        self._check(z, self.config.latent_channels, 1, "latents")
        return self.decoder(z.to(self.dtype))

    def encode_distribution(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (b, 3, H, W) -> (mean, log-variance), each (b, latent, H/8, W/8)."""
        self._check(image, self.config.in_channels, self.config.downscale, "images")
        mean, logvar = self.encoder(image.to(self.dtype)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamp

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Images (b, 3, H, W) in [-1, 1] -> the latent distribution's mean (b, latent, H/8, W/8)."""
        return self.encode_distribution(image)[0]

    @staticmethod
    def _check(x: torch.Tensor, channels: int, multiple: int, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise VAEDecodingError(f"{what} must be (b, {channels}, height, width), got {tuple(x.shape)}")
        if x.shape[2] % multiple or x.shape[3] % multiple:
            raise VAEDecodingError(f"{what} height and width must be multiples of {multiple}, got {tuple(x.shape[2:])}")
