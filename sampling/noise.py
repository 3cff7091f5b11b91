"""Initial noise: seeded float32 draws on the CPU, then moved to the device.

Drawing on the CPU in float32 makes one seed give the same start on any device and in any model
dtype (bfloat16 randn on the CPU would clip the tails). By default image k of a batch uses its own
seed, so any single image can be reproduced alone (Candle draws on the device; Stability as here).
ComfyUI (comfy/sample.py `prepare_noise`) draws a whole batch, `randn((N, c, h, w))`, from one
seeded generator instead: image k is row k of that stream (`NoiseStreams`), and its KSampler starts
from σ0·noise + (1 − σ0)·(the empty latent) (`scale_noise`).
"""

from __future__ import annotations

import torch

from sd3.errors import ConfigurationError
from sd3.vae.config import VAEConfig


def initial_noise(seeds: list[int], channels: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(len(seeds), channels, height, width) float32 standard normal noise, one generator per seed."""
    draws = [
        torch.randn(channels, height, width, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        for seed in seeds
    ]
    return torch.stack(draws).to(device)


# ComfyUI's EmptySD3LatentImage (zeros) in model space, (0 − shift) · scale, in float32 as it computes it.
EMPTY_LATENT = (torch.zeros((), dtype=torch.float32) - VAEConfig.shift_factor) * VAEConfig.scaling_factor


class NoiseStreams:
    """ComfyUI's batch noise: row r of `randn((N, c, h, w))` drawn from a generator seeded with s.

    The rows are drawn one image at a time, which gives the same values (the generator fills rows in
    order), and each stream is kept where it stopped: a list made in index order draws every row once,
    and any row can still be made alone."""

    def __init__(self) -> None:
        self._streams: dict[tuple[int, tuple[int, ...]], tuple[int, torch.Generator]] = {}

    def rows(self, draws: list[tuple[int, int]], channels: int, height: int, width: int,
             device: torch.device | str = "cpu") -> torch.Tensor:
        """(seed, row) for each image -> (len(draws), channels, height, width) float32 noise."""
        shape, out = (channels, height, width), []
        for seed, row in draws:
            at, generator = self._streams.get((seed, shape), (0, None))
            if generator is None or row < at:  # a new stream, or one already past this row
                at, generator = 0, torch.Generator("cpu").manual_seed(seed)
            for _ in range(row - at):
                torch.randn(shape, generator=generator, dtype=torch.float32)
            out.append(torch.randn(shape, generator=generator, dtype=torch.float32))
            self._streams[(seed, shape)] = (row + 1, generator)
        return torch.stack(out).to(device)


def scale_noise(noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ComfyUI's start for text to image: σ0·noise + (1 − σ0)·x_empty (comfy/model_sampling.py
    `CONST.noise_scaling`), x_empty being its empty latent in model space, (0 − shift)·scale (comfy/
    latent_formats.py `SD3.process_in`). Equal to the noise itself when σ0 = 1."""
    return sigma * noise + (1.0 - sigma) * EMPTY_LATENT


def check_latents(latents: torch.Tensor, count: int, height: int, width: int) -> None:
    """Refuse initial `latents` that are not (1 or `count`, 16, height/8, width/8)."""
    shape = (16, height // 8, width // 8)
    if latents.ndim != 4 or tuple(latents.shape[1:]) != shape or latents.shape[0] not in (1, count):
        raise ConfigurationError(
            f"initial `latents` must be (1 or {count}, {shape[0]}, {shape[1]}, {shape[2]}) for a "
            f"{width}x{height} image, got {tuple(latents.shape)}"
        )
