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


def check_latents(latents: torch.Tensor, count: int, height: int, width: int) -> None:
    """Refuse initial `latents` that are not (1 or `count`, 16, height/8, width/8)."""
    shape = (16, height // 8, width // 8)
    if latents.ndim != 4 or tuple(latents.shape[1:]) != shape or latents.shape[0] not in (1, count):
        raise ConfigurationError(
            f"initial `latents` must be (1 or {count}, {shape[0]}, {shape[1]}, {shape[2]}) for a "
            f"{width}x{height} image, got {tuple(latents.shape)}"
        )
