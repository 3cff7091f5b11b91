"""Initial noise: one seeded float32 draw per image on the CPU, then moved to the device.

Drawing on the CPU in float32 makes one seed give the same start on any device and in any model
dtype (bfloat16 randn on the CPU would clip the tails). Image k of a batch uses its own seed, so
any single image can be reproduced alone (Candle draws on the device; Stability as here).
"""

from __future__ import annotations

import torch

from sd3.errors import ConfigurationError


def initial_noise(seeds: list[int], channels: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(len(seeds), channels, height, width) float32 standard normal noise, one generator per seed."""
    draws = [
        torch.randn(channels, height, width, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        for seed in seeds
    ]
    return torch.stack(draws).to(device)


def start_latents(latents: torch.Tensor | None, seeds: list[int], height: int, width: int) -> torch.Tensor:
    """The denoising start: the seeds' noise, or the caller's `latents` (1 or len(seeds), 16, h/8, w/8)."""
    shape = (16, height // 8, width // 8)
    if latents is None:
        return initial_noise(seeds, *shape)
    if tuple(latents.shape[1:]) != shape or latents.shape[0] not in (1, len(seeds)):
        raise ConfigurationError(
            f"initial `latents` must be (1 or {len(seeds)}, {shape[0]}, {shape[1]}, {shape[2]}) for a "
            f"{width}x{height} image, got {tuple(latents.shape)}"
        )
    return latents.float().expand(len(seeds), *shape)
