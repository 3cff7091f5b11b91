"""Image to image and inpainting (SDEdit, Meng et al., arXiv 2108.01073): start part-way down the schedule.

Image to image encodes the image x0 with the VAE, picks where to start on the schedule from the
strength, and noises x0 there by the flow-matching forward process (arXiv 2403.03206, eq. 1):

    x_sigma = (1 - sigma) * x0 + sigma * noise

Strength 1 starts from pure noise; strength 0.3 runs the last 30 % of the steps. With the default
reference, strength 1 gives exactly the text-to-image result of the same seed.

Inpainting (as diffusers' SD3 inpaint pipeline does it, with an ordinary 16-channel MMDiT): after
every step, the latents outside the mask (black) are replaced by x0 re-noised with the same noise to
the next sigma, so only the white area is repainted. The decoded image is not composited over the
original.

Where the references differ (`Reference`, docs/reference.md §6):
- start: diffusers skips the first int(N - N * strength) steps (`get_timesteps`); Stability's
  sd3_infer.py keeps sigmas[int(N * (1 - strength)):] (it calls strength `denoise`). Float rounding
  makes them differ at some (N, strength): at N = 10, strength 0.8, diffusers skips 2 steps and
  Stability 1 (10 · 0.2 is 1.9999999999999996).
- x0: diffusers samples the VAE posterior with the call's generator and then draws the noise from
  the same generator; we take the posterior mean by default (deterministic, and the noise is then
  the seed's text-to-image noise). Stability samples the posterior from the global RNG, which the
  seed does not fix, so its preset takes the mean too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from sd3.errors import ConfigurationError
from sd3.sampling.noise import initial_noise
from sd3.vae import encode_images

ImageLike = Image.Image | torch.Tensor | str | os.PathLike


def open_image(image: ImageLike, name: str = "init_image") -> Image.Image | torch.Tensor:
    """A PIL image from a path (read fully now, so a bad file fails before any model loads), or as given."""
    if isinstance(image, (Image.Image, torch.Tensor)):
        return image
    path = Path(image)
    if not path.is_file():
        raise ConfigurationError(f"`{name}` {path}: file not found")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigurationError(f"`{name}` {path} is not a readable image ({error})") from None


def image_size(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    """(width, height)."""
    return image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])


def preprocess_image(image: Image.Image | torch.Tensor, height: int, width: int, name: str = "init_image") -> torch.Tensor:
    """An image -> (1, 3, height, width) float32 in [-1, 1], resized as diffusers' `VaeImageProcessor`
    resizes (PIL's Lanczos to the requested size). Greyscale, RGBA and palette images become RGB.
    A tensor must already be (3, H, W) or (1, 3, H, W) in [0, 1] at the requested size."""
    if isinstance(image, torch.Tensor):
        pixels = image[None] if image.ndim == 3 else image
        if pixels.shape != (1, 3, height, width):
            raise ConfigurationError(
                f"`{name}` as a tensor must be (1, 3, {height}, {width}) in [0, 1], got {tuple(image.shape)}"
            )
        return pixels.float() * 2 - 1
    rgb = image.convert("RGB").resize((width, height), resample=Image.LANCZOS)
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2 - 1


def preprocess_mask(mask: Image.Image | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A mask (white = repaint) -> (1, 1, height/8, width/8) of 0 and 1 on the latent grid: `binary_mask`,
    then nearest-neighbour down to the latent grid (as diffusers' pipelines do)."""
    return F.interpolate(binary_mask(mask, height, width), size=(height // 8, width // 8))


def binary_mask(mask: Image.Image | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A mask (white = repaint) -> (1, 1, height, width) of 0 and 1. As diffusers' mask processor:
    greyscale, Lanczos to the image size, values >= 0.5 become 1, the rest 0."""
    if isinstance(mask, torch.Tensor):
        values = mask.float().reshape(1, 1, *mask.shape[-2:])
        if values.shape[-2:] != (height, width):
            raise ConfigurationError(f"`mask` as a tensor must be {height}x{width} in [0, 1], got {tuple(mask.shape)}")
    else:
        grey = mask.convert("L").resize((width, height), resample=Image.LANCZOS)
        values = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)[None, None]
    return (values >= 0.5).float()


def start_index(steps: int, strength: float, convention: str) -> int:
    """How many of the schedule's `steps` steps image to image skips."""
    if convention == "stability":
        return int(steps * (1 - strength))
    return int(max(steps - min(steps * strength, steps), 0))  # diffusers' get_timesteps


def check_inputs(
    init_image: ImageLike | None, strength: float | None, mask: ImageLike | None
) -> tuple[Image.Image | torch.Tensor | None, Image.Image | torch.Tensor | None]:
    """(image, mask) opened and checked before any model loads; raises ConfigurationError."""
    if strength is not None and init_image is None:
        raise ConfigurationError("`strength` needs an `init_image` to start from")
    if mask is not None and init_image is None:
        raise ConfigurationError("a `mask` needs an `init_image`: it says which part of that image to repaint")
    if strength is not None and not 0 < strength <= 1:
        raise ConfigurationError(f"`strength` must be in (0, 1], got {strength}")
    image = open_image(init_image) if init_image is not None else None
    mask_image = open_image(mask, "mask") if mask is not None else None
    if mask_image is not None and image_size(mask_image) != image_size(image):
        raise ConfigurationError(
            f"the `mask` is {image_size(mask_image)} pixels but the `init_image` is {image_size(image)}: "
            "give a mask of the image's size"
        )
    return image, mask_image


def encode_start(vae, pixels: torch.Tensor, seeds: list[int], posterior: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, noise), each (len(seeds), 16, h, w) float32, from the image (1, 3, H, W) in [-1, 1].

    x0 is the posterior's mean with each seed's text-to-image noise ("mean"), or, as diffusers'
    img2img and inpaint pipelines draw them ("sample"), a posterior sample from a generator seeded
    with the image's seed, whose next draw is the noise."""
    pixels = pixels.to(next(vae.parameters()).device, vae.dtype)
    shape = (len(seeds), 16, pixels.shape[2] // 8, pixels.shape[3] // 8)
    with torch.no_grad():
        if posterior == "mean":
            return encode_images(vae, pixels).float().cpu().expand(shape).contiguous(), initial_noise(seeds, *shape[1:])
        x0, noise = [], []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            x0.append(encode_images(vae, pixels, generator=generator).float().cpu())
            noise.append(torch.randn(1, *shape[1:], generator=generator, dtype=torch.float32))
    return torch.cat(x0), torch.cat(noise)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The flow-matching forward process: (1 - sigma) x0 + sigma noise (as diffusers' `scale_noise`)."""
    return sigma * noise + (1.0 - sigma) * x0

class Blend:
    """Inpainting's step: outside the mask, the latents become x0 re-noised to the next sigma."""

    def __init__(self, x0: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor, schedule: torch.Tensor) -> None:
        self.x0, self.noise, self.mask, self.schedule = x0, noise, mask, schedule  # mask (1, 1, h, w): 1 repaints

    def part(self, rows: slice, device: torch.device):
        x0, noise = self.x0[rows].to(device), self.noise[rows].to(device)
        mask, last = self.mask.to(device), len(self.schedule) - 2

        def after_step(i: int, x: torch.Tensor) -> torch.Tensor:
            kept = x0 if i == last else noised(x0, noise, self.schedule[i + 1].to(device))
            return (1 - mask) * kept + mask * x

        return after_step
