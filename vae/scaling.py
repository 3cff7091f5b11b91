"""SD3's latent scaling around the VAE, with optional tiling (docs/reference.md §4).

The MMDiT works on scaled latents: z_model = (z_vae - shift) * scale, with scale 1.5305 and shift
0.0609, so decoding computes decode(z / scale + shift). These helpers are the only place that
applies the scaling; `AutoEncoderKL.decode`/`encode` stay in the VAE's own space.
"""

from __future__ import annotations

import torch

from sd3.vae.model import AutoEncoderKL
from sd3.vae.tiling import tiled

DECODE_TILE_OVERLAP = 16  # latent pixels shared by neighbouring decoding tiles


def decode_latents(
    vae: AutoEncoderKL,
    latents: torch.Tensor,
    *,
    tile_size: int | None = None,
    tile_overlap: int = DECODE_TILE_OVERLAP,
    shift: bool = True,
) -> torch.Tensor:
    """Model-space latents (b, 16, h, w) -> images (b, 3, 8h, 8w) in [-1, 1] (not yet clamped).

    Args:
        tile_size: decode in tiles of this many latent pixels (e.g. 64 for 512-pixel tiles) to bound
            memory; None decodes in one go.
        tile_overlap: latent pixels shared by neighbouring tiles.
        shift: False leaves out the shift, as diffusers' SD3 inpaint pipeline does (a quirk kept
            only to reproduce it).
    """
    cfg = vae.config
    z = latents.to(vae.dtype) / cfg.scaling_factor + (cfg.shift_factor if shift else 0.0)
    if tile_size is None:
        return vae.decode(z)
    return tiled(vae.decode, z, tile=tile_size, overlap=tile_overlap, scale=cfg.downscale)


def encode_images(
    vae: AutoEncoderKL,
    images: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    tile_size: int | None = None,
    tile_overlap: int = 128,
) -> torch.Tensor:
    """Images (b, 3, H, W) in [-1, 1] -> model-space latents (b, 16, H/8, W/8).

    Args:
        generator: sample the latent distribution with this generator; None takes its mean.
        tile_size: encode in tiles of this many image pixels (a multiple of 8, at least twice
            `tile_overlap`: 256 with the default); None in one go.
        tile_overlap: image pixels shared by neighbouring tiles (a multiple of 8).

    Raises:
        VAEDecodingError: tile sizes that cannot blend or do not align (vae/tiling.py).
    """
    cfg = vae.config
    if tile_size is None:
        mean, logvar = vae.encode_distribution(images)
    else:
        both = tiled(lambda x: torch.cat(vae.encode_distribution(x), dim=1), images,
                     tile=tile_size, overlap=tile_overlap, scale=1 / cfg.downscale)
        mean, logvar = both.to(vae.dtype).chunk(2, dim=1)
    z = mean
    if generator is not None:
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device, mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
    return (z - cfg.shift_factor) * cfg.scaling_factor
