"""TAESD3, the tiny autoencoder for SD3's 16-channel latents (Ollin Boer Bohan, github.com/madebyollin/taesd).

A distilled stand-in for the VAE: about 1.2 M parameters a side, plain 3x3 convolutions and ReLUs,
no attention and no normalisation. It decodes in a fraction of the VAE's time, which is what step
previews and draft sweeps want, at a visible cost in detail. Legend: b batch, h w latent size.

    decoder: tanh(z / 3) * 3, conv 16->64, ReLU, 3 x [blocks, 2x nearest upsampling, conv], block, conv 64->3
    encoder: conv 3->64, block, 3 x [stride-2 conv, 3 blocks], conv 64->16
    block:   ReLU(conv(ReLU(conv(ReLU(conv(x))))) + x)

It works on the MMDiT's latents as they are (model space, the VAE's latents already shifted and
scaled): ComfyUI's previews feed it those, and diffusers' SD3 pipeline does too, since
`AutoencoderTiny`'s scaling factor is 1 and its shift 0. Images are in [-1, 1] (the original maps
[0, 1]; diffusers' `EncoderTiny`/`DecoderTiny` add the conversion, as here).

Module names follow diffusers' `AutoencoderTiny` (`decoder.layers.N`, `encoder.layers.N`), the
layout of `madebyollin/taesd3`'s `diffusion_pytorch_model.safetensors`; vae/taesd_loading.py reads
the original's sequential layout too.
"""

from __future__ import annotations

import torch
from torch import nn

LATENT_CHANNELS = 16
WIDTH = 64  # every block's channels
DECODER_BLOCKS = (3, 3, 3, 1)  # blocks per resolution, lowest first; an upsampling between each
ENCODER_BLOCKS = (1, 3, 3, 3)  # blocks per resolution, highest first; a stride-2 conv before each but the first


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size=3, padding=1, **kwargs)


class Block(nn.Module):
    """A residual unit: three 3x3 convolutions with ReLUs between, plus the input, then a ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(),
                                  _conv(channels, channels))
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + x)


class TinyDecoder(nn.Module):
    """Model-space latents (b, 16, h, w) -> images (b, 3, 8h, 8w) in [-1, 1]."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, width: int = WIDTH) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(latent_channels, width), nn.ReLU()]
        for i, count in enumerate(DECODER_BLOCKS):
            layers += [Block(width) for _ in range(count)]
            last = i == len(DECODER_BLOCKS) - 1
            if not last:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers.append(_conv(width, 3 if last else width, bias=last))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(z / 3) * 3  # a soft clamp to [-3, 3], as the decoder was trained
        return self.layers(z) * 2 - 1  # [0, 1] -> [-1, 1]


class TinyEncoder(nn.Module):
    """Images (b, 3, H, W) in [-1, 1] -> model-space latents (b, 16, H/8, W/8)."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, width: int = WIDTH) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, count in enumerate(ENCODER_BLOCKS):
            layers.append(_conv(3, width) if i == 0 else _conv(width, width, stride=2, bias=False))
            layers += [Block(width) for _ in range(count)]
        layers.append(_conv(width, latent_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers((images + 1) / 2)  # [-1, 1] -> [0, 1]


class TinyAutoencoder(nn.Module):
    """TAESD3's decoder and its encoder; `encoder` is None for a file that holds the decoder alone."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, width: int = WIDTH, encoder: bool = True) -> None:
        super().__init__()
        self.decoder = TinyDecoder(latent_channels, width)
        self.encoder = TinyEncoder(latent_channels, width) if encoder else None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model-space latents (b, 16, h, w) -> images (b, 3, 8h, 8w) in [-1, 1], in the model's dtype."""
        return self.decoder(z.to(self.dtype))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (b, 3, H, W) in [-1, 1] -> model-space latents (b, 16, H/8, W/8)."""
        return self.encoder(images.to(self.dtype))
